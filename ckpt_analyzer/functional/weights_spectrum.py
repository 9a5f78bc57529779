"""Empirical spectral densities of weight matrices and their power-law tails.

Martin & Mahoney, "Implicit Self-Regularization in Deep Neural Networks" (JMLR 2021) and
"Predicting trends in the quality of state-of-the-art neural networks without access to
training or testing data" (Nat. Commun. 2021), as implemented by WeightWatcher 0.7.7:

* the eigenvalues of a layer (:func:`layer_esd`). A linear weight ``W`` gives the
  ``min(out, in)`` eigenvalues of ``WᵀW`` (squared singular values). A conv weight
  ``(out, in, kh, kw)`` has two conventions:

  - ``conv="slices"`` (WeightWatcher's ``analyze()`` default, ``pool=True, conv2d_norm=True``):
    the eigenvalues of every kernel-position slice ``W[:, :, i, j]`` (:func:`layer_slices`),
    pooled, ``kh·kw·min(out, in)`` of them, each multiplied by ``1/2`` (WeightWatcher scales
    every conv slice by ``sqrt(conv2d_count / 2)`` with ``conv2d_count = 1`` when pooling);
  - ``conv="stacked"``: the slices (each turned so that rows ≥ columns) stacked vertically
    into one ``(kh·kw·max, min)`` matrix (:func:`layer_matrix`), ``min(out, in)``
    eigenvalues, unscaled;

* the scale metrics ``spectral_norm = λ_max`` (WeightWatcher's convention: the *squared*
  largest singular value) and ``stable_rank = Σλ / λ_max`` (:func:`scale_metrics`);
* the power-law exponent of the tail ``p(λ) ∝ λ^{−α}``, λ ≥ x_min, by maximum likelihood,
  ``α = 1 + n / Σ_i ln(λ_i / x_min)`` (Clauset, Shalizi & Newman, SIAM Review 2009, eq. 3.1),
  with x_min minimizing a Kolmogorov–Smirnov distance to the fitted
  ``P(λ) = 1 − (λ / x_min)^{1−α}``. Two rules:

  - :func:`fit_power_law_ww`, WeightWatcher 0.7.7's own fit (``pl_package='ww'``,
    ``WW_powerlaw.WWFit``), whose distance is the ``powerlaw`` package's (2.0): eigenvalues
    ``≤ 1e-5`` dropped; every value but the largest a candidate (duplicates included), so the
    smallest tail has 2 values; the distance one-sided, ``max_j |P(λ_j) − j/n|`` against the
    empirical CDF just *below* each step (``0, 1/n, …, (n−1)/n``: ``powerlaw.cdf``); below 20
    values the small-N rule (tails ≥ 8, ``α = 1 + (n−1)/Σ ln``);
  - :func:`fit_power_law`, the strict rule: distinct candidates with tails ≥ ``min_tail``,
    the two-sided distance (both sides of each step), eq. 3.9 by the book.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["CONV_SLICE_SCALE", "WW_EVALS_THRESH", "esd", "fit_power_law", "fit_power_law_ww",
           "layer_esd", "layer_matrix", "layer_slices", "log_histogram", "num_evals",
           "scale_metrics"]

#: WeightWatcher's ``conv2d_norm``: each pooled conv slice is scaled by ``sqrt(1/2)``, so its
#: eigenvalues by 1/2.
CONV_SLICE_SCALE = 0.5
#: WeightWatcher's ``EVALS_THRESH`` (on the CPU): eigenvalues at or below it are left out of
#: its power-law fit.
WW_EVALS_THRESH = 1e-5
_WW_SMALL_N = 20  # WW_powerlaw.SMALL_N_CUTOFF
_WW_SMALL_N_MIN_TAIL = 8  # fit_powerlaw_smallN(k_min=8)


def _check_weight(weight: torch.Tensor, who: str) -> None:
    if weight.dim() not in (2, 3, 4):
        raise ValueError(f"{who}: weight of shape {tuple(weight.shape)} is not a linear or "
                         "conv weight")


def layer_slices(weight: torch.Tensor) -> torch.Tensor:
    """The ``(kh·kw, rows, cols)`` kernel-position slices ``W[:, :, i, j]`` of a conv weight
    (row-major over ``i, j``; a conv1d weight gives its ``k`` slices ``W[:, :, k]``), each
    turned so that rows ≥ columns, as WeightWatcher's ``conv2D_Wmats``; a linear weight is
    one slice. Other shapes raise ``ValueError``."""
    _check_weight(weight, "layer_slices")
    slices = weight.unsqueeze(0) if weight.dim() == 2 else weight.flatten(2).permute(2, 0, 1)
    return slices.transpose(1, 2) if slices.shape[1] < slices.shape[2] else slices


def layer_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The stacked layer matrix (``conv="stacked"``, see the module docstring).

    2-D weights are returned as they are; 3-D (conv1d) and 4-D (conv2d) weights are split
    along their kernel positions, each slice turned so that rows ≥ columns, and the slices
    stacked vertically. Other shapes raise ``ValueError``."""
    if weight.dim() == 2:
        return weight
    _check_weight(weight, "layer_matrix")
    slices = layer_slices(weight)
    return slices.reshape(-1, slices.shape[-1])


def esd(matrix: torch.Tensor) -> torch.Tensor:
    """The squared singular values of a matrix (``min(n, m)`` of them), or of every matrix of a
    ``(k, n, m)`` batch pooled (``k·min(n, m)``), ascending, in float64."""
    sv = torch.linalg.svdvals(matrix.detach().double())
    return torch.sort((sv * sv).flatten()).values


def num_evals(weight: torch.Tensor, conv: Literal["slices", "stacked"] = "slices") -> int:
    """How many eigenvalues :func:`layer_esd` gives for ``weight`` (without computing them)."""
    _check_weight(weight, "num_evals")
    side = min(weight.shape[0], weight.shape[1])
    return side * (math.prod(weight.shape[2:]) if conv == "slices" else 1)


def layer_esd(weight: torch.Tensor, conv: Literal["slices", "stacked"] = "slices"
              ) -> torch.Tensor:
    """The layer's eigenvalues, ascending, float64, on the weight's device: ``esd`` of the
    pooled slices times :data:`CONV_SLICE_SCALE` for a conv weight with ``conv="slices"``
    (WeightWatcher's default), of the stacked matrix with ``conv="stacked"``; a linear
    weight's eigenvalues either way."""
    if conv not in ("slices", "stacked"):
        raise ValueError(f"layer_esd: conv must be 'slices' or 'stacked' (got {conv!r})")
    _check_weight(weight, "layer_esd")
    if weight.dim() == 2:
        return esd(weight)
    if conv == "stacked":
        return esd(layer_matrix(weight))
    return esd(layer_slices(weight)) * CONV_SLICE_SCALE


def scale_metrics(evals: torch.Tensor) -> tuple[float, float]:
    """``(spectral_norm = λ_max, stable_rank = Σλ / λ_max)``; NaN for an all-zero spectrum."""
    if len(evals) == 0:
        return math.nan, math.nan
    top = float(evals.max())
    if not top > 0:
        return math.nan, math.nan
    return top, float(evals.sum()) / top


def _ks_lower(x: torch.Tensor, cand: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``max_{j ≥ c} |1 − (x_j / x_c)^{1−α_c} − (j − c) / (n − c)|`` for each candidate index
    ``c`` of the sorted ``x`` (the one-sided distance of WWFit / ``powerlaw``), computed in
    blocks of candidates so that memory stays ``O(n · 2**22 / n)``."""
    n = len(x)
    out = torch.empty(len(cand), dtype=torch.float64)
    j = torch.arange(n).view(1, -1)
    block = max(1, (1 << 22) // max(n, 1))
    for s in range(0, len(cand), block):
        c = cand[s:s + block].view(-1, 1)
        a = alpha[s:s + block].view(-1, 1)
        n_tail = (n - c).double()
        # the power, not exp(log): (x/x_c)^(1-α) with α = inf is 1 at x = x_c, as in WWFit
        model = 1 - torch.pow(x.view(1, -1) / x[c], 1 - a)
        diff = (model - (j - c).double() / n_tail).abs()
        out[s:s + block] = torch.where(j >= c, diff, torch.zeros_like(diff)).max(dim=1).values
    return out


def fit_power_law_ww(evals: torch.Tensor) -> tuple[float, float, float, int, str]:
    """WeightWatcher 0.7.7's power-law fit (``WW_powerlaw.WWFit``, its default
    ``pl_package='ww'``, ``fit='power_law'``, ``xmax=None``), vectorized.

    The eigenvalues ``> 1e-5`` (:data:`WW_EVALS_THRESH`), sorted, ``x_0 ≤ … ≤ x_{N−1}``; every
    ``x_i``, ``i ≤ N − 2``, is a candidate x_min with tail ``n = N − i`` (duplicates are
    separate candidates, as in WWFit). With ``N ≥ 20``: ``α_i = 1 + n / Σ_{j≥i} ln(x_j / x_i)``,
    ``D_i = max_{j≥i} |1 − (x_j / x_i)^{1−α_i} − (j − i)/n|`` (1 when ``α_i ≤ 1``) and the
    first ``i`` minimizing ``D_i`` wins. With ``N < 20``: tails ``n ≥ 8`` with
    ``s = Σ ln(x_j / x_i) > 1e-12``, ``α_i = 1 + (n − 1)/s``, and again the first ``i``
    minimizing ``D_i`` wins (WWFit's small-N rule also scores ``D − 0.868/√n``, but its
    constructor then re-selects by ``D``: 0.7.7 reports that); if none qualifies the whole
    sample is the tail.

    Returns ``(alpha, xmin, ks_distance, n_tail, reason)`` with ``n_tail`` the eigenvalues
    ``≥ x_min`` (WeightWatcher's ``num_pl_spikes``). Where WeightWatcher reports a failed
    fit (fewer than 2 values above the threshold) or an infinite, NaN or ``α = 1`` placeholder
    (a degenerate tail), alpha, xmin and the distance are NaN, ``n_tail`` is 0 and ``reason``
    says why (empty otherwise). On the CPU, float64.
    """
    x_all = torch.sort(evals.detach().cpu().double().flatten()).values
    x = x_all[x_all > WW_EVALS_THRESH]
    n = len(x)
    if n < 2:
        return (math.nan, math.nan, math.nan, 0,
                f"{n} eigenvalues above {WW_EVALS_THRESH:g}, fewer than the 2 a fit needs")
    logx = torch.log(x)
    suffix = torch.flip(torch.cumsum(torch.flip(logx, [0]), 0), [0])  # sum_{j>=i} log x_j
    cand = torch.arange(n - 1)
    n_tail = (n - cand).double()
    s = suffix[:-1] - n_tail * logx[:-1]
    if n >= _WW_SMALL_N:
        alpha = 1 + n_tail / s  # s = 0 (a flat tail) gives inf, as in WWFit
        valid = alpha > 1
        dist = torch.where(valid, _ks_lower(x, cand, alpha), torch.ones_like(alpha))
        best = int(torch.argmin(dist))
    else:
        alpha = 1 + (n_tail - 1) / s
        valid = (n_tail >= _WW_SMALL_N_MIN_TAIL) & (s > 1e-12) & (alpha > 1)
        dist = torch.where(valid, _ks_lower(x, cand, alpha), torch.ones_like(alpha))
        if bool(valid.any()):
            # WWFit.__init__ re-selects by argmin(D) after fit_powerlaw_smallN, overriding
            # the smallN rule's own choice by D - 0.868/sqrt(n): what 0.7.7 reports
            best = int(torch.argmin(dist))
        else:  # WWFit: the whole sample as the tail
            s0 = float(suffix[0] - n * logx[0])
            if not s0 > 1e-12:
                return math.nan, math.nan, math.nan, 0, "degenerate spectrum (all values equal)"
            a0 = 1 + (n - 1) / s0
            d0 = float(_ks_lower(x, cand[:1], torch.tensor([a0], dtype=torch.float64))[0])
            return a0, float(x[0]), d0, int((x_all >= x[0]).sum()), ""
    a = float(alpha[best])
    if not (bool(valid[best]) and math.isfinite(a)):
        return math.nan, math.nan, math.nan, 0, "degenerate spectrum (flat tail)"
    xmin = float(x[best])
    return a, xmin, float(dist[best]), int((x_all >= xmin).sum()), ""


def fit_power_law(evals: torch.Tensor, min_tail: int = 10
                  ) -> tuple[float, float, float, int, str]:
    """The strict Clauset–Shalizi–Newman fit of a continuous power law to the tail of
    ``evals`` (``fit="strict"``).

    Every distinct positive eigenvalue that leaves at least ``min_tail`` values in the tail is
    a candidate x_min; for each, the MLE ``α = 1 + n / Σ ln(λ_i / x_min)`` and the KS distance
    to the fitted CDF (evaluated on both sides of each step of the empirical CDF). The
    candidate with the smallest distance wins (ties: the smallest x_min).

    Returns ``(alpha, xmin, ks_distance, n_tail, reason)``; when no fit is possible alpha, xmin
    and the distance are NaN, ``n_tail`` is 0 and ``reason`` says why (empty otherwise).
    The fit runs on the CPU whatever the device of ``evals`` (a few hundred values).
    """
    x = torch.sort(evals.detach().cpu().double().flatten()).values
    x = x[torch.isfinite(x) & (x > 0)]
    n = len(x)
    if n < max(2, min_tail):
        return (math.nan, math.nan, math.nan, 0,
                f"{n} positive eigenvalues, fewer than the {max(2, min_tail)} a fit needs")
    logx = torch.log(x)
    # candidates: first occurrence of each distinct value with a tail of >= min_tail values
    idx = torch.arange(n)
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = x[1:] != x[:-1]
    cand = idx[first & (n - idx >= max(2, min_tail))]
    if len(cand) == 0:
        return math.nan, math.nan, math.nan, 0, "no x_min candidate leaves a large enough tail"
    suffix = torch.flip(torch.cumsum(torch.flip(logx, [0]), 0), [0])  # sum_{j>=i} log x_j
    n_tail = (n - cand).double()
    denom = suffix[cand] - n_tail * logx[cand]
    ok = denom > 0
    alpha = torch.full_like(n_tail, math.nan)
    alpha[ok] = 1 + n_tail[ok] / denom[ok]
    # KS distance of each candidate's tail, on a (candidates, n) grid masked to the tail
    j = idx.view(1, -1)
    c = cand.view(-1, 1)
    in_tail = j >= c
    rank = (j - c).double()
    ratio = (logx.view(1, -1) - logx[cand].view(-1, 1))
    model = 1 - torch.exp((1 - alpha.view(-1, 1)) * ratio)
    lower = (model - rank / n_tail.view(-1, 1)).abs()
    upper = (model - (rank + 1) / n_tail.view(-1, 1)).abs()
    dist = torch.where(in_tail, torch.maximum(lower, upper), torch.zeros_like(lower)).max(dim=1).values
    dist = torch.where(ok, dist, torch.full_like(dist, math.inf))
    best = int(torch.argmin(dist))
    if not math.isfinite(float(dist[best])):
        return math.nan, math.nan, math.nan, 0, "degenerate spectrum (all tail values equal)"
    return (float(alpha[best]), float(x[cand[best]]), float(dist[best]), int(n_tail[best]), "")


def log_histogram(evals: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Fraction of the eigenvalues in each bin of ``log10 λ`` between consecutive ``edges``;
    values outside are counted in the first or last bin, zero eigenvalues in the first.
    All zeros for an empty spectrum. On the device of ``evals``."""
    nb = len(edges) - 1
    if len(evals) == 0:
        return torch.zeros(nb, dtype=torch.float64, device=evals.device)
    lg = torch.log10(evals.double().clamp_min(1e-300))
    e = edges.to(device=evals.device, dtype=torch.float64)
    pos = torch.bucketize(lg, e[1:-1], right=True)  # 0..nb-1, clipped at the ends
    return torch.bincount(pos, minlength=nb).double() / len(evals)
