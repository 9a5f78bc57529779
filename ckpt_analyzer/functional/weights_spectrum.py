"""Empirical spectral densities of weight matrices and their power-law tails.

Martin & Mahoney, "Implicit Self-Regularization in Deep Neural Networks" (JMLR 2021) and
"Predicting trends in the quality of state-of-the-art neural networks without access to
training or testing data" (Nat. Commun. 2021), as implemented by WeightWatcher:

* the layer matrix (:func:`layer_matrix`): a linear weight as is; a conv weight
  ``(out, in, kh, kw)`` split into its ``kh·kw`` slices ``W[:, :, i, j]`` (each turned so that
  rows ≥ columns) stacked vertically into one ``(kh·kw·max, min)`` matrix, WeightWatcher's
  default for Conv2D layers;
* the eigenvalues ``λ`` of ``X = WᵀW`` (squared singular values, :func:`esd`) and the
  scale metrics ``spectral_norm = λ_max`` (WeightWatcher's convention: the *squared* largest
  singular value) and ``stable_rank = Σλ / λ_max = ‖W‖_F² / ‖W‖_2²`` (:func:`scale_metrics`);
* the power-law exponent of the tail ``p(λ) ∝ λ^{−α}``, λ ≥ x_min, fitted as Clauset, Shalizi
  & Newman, "Power-law distributions in empirical data" (SIAM Review 2009): for each candidate
  x_min the maximum-likelihood ``α = 1 + n / Σ_i ln(λ_i / x_min)`` (their eq. 3.1) and the
  Kolmogorov–Smirnov distance ``D = max |S(λ) − P(λ)|`` between the empirical CDF of the tail
  and the fitted ``P(λ) = 1 − (λ / x_min)^{1−α}`` (their eq. 3.9); x_min minimizes D
  (:func:`fit_power_law`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["esd", "fit_power_law", "layer_matrix", "log_histogram", "scale_metrics"]


def layer_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The matrix whose ESD WeightWatcher analyses (see the module docstring).

    2-D weights are returned as they are; 3-D (conv1d) and 4-D (conv2d) weights are split
    along their kernel positions, each slice turned so that rows ≥ columns, and the slices
    stacked vertically. Other shapes raise ``ValueError``."""
    if weight.dim() == 2:
        return weight
    if weight.dim() not in (3, 4):
        raise ValueError(f"layer_matrix: weight of shape {tuple(weight.shape)} is not a "
                         "linear or conv weight")
    out_c, in_c = weight.shape[:2]
    slices = weight.flatten(2).permute(2, 0, 1)  # (kh*kw, out, in)
    if out_c < in_c:
        slices = slices.transpose(1, 2)
    return slices.reshape(-1, slices.shape[-1])


def esd(matrix: torch.Tensor) -> torch.Tensor:
    """The ``min(n, m)`` eigenvalues of ``WᵀW`` (or ``WWᵀ``), i.e. the squared singular values,
    ascending, in float64."""
    sv = torch.linalg.svdvals(matrix.detach().double())
    return torch.sort(sv * sv).values


def scale_metrics(evals: torch.Tensor) -> tuple[float, float]:
    """``(spectral_norm = λ_max, stable_rank = Σλ / λ_max)``; NaN for an all-zero spectrum."""
    if len(evals) == 0:
        return math.nan, math.nan
    top = float(evals.max())
    if not top > 0:
        return math.nan, math.nan
    return top, float(evals.sum()) / top


def fit_power_law(evals: torch.Tensor, min_tail: int = 10
                  ) -> tuple[float, float, float, int, str]:
    """Clauset–Shalizi–Newman fit of a continuous power law to the tail of ``evals``.

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
