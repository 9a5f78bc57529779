"""The Hessian's eigenvalue density, Hutch++ and per-layer (diagonal-block) curvature.

* **Eigenvalue density** by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao, "An
  Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019; the
  ``density`` of PyHessian, Yao et al. 2020 §III-C): each run of ``m`` Lanczos steps from a
  start vector uniform on the sphere gives the Gauss quadrature of the spectral measure
  ``v₁ᵀ δ(λ − H) v₁``: nodes = the Ritz values θ_i (eigenvalues of the tridiagonal T), weights
  = ``s_{1,i}²`` (squared first components of T's eigenvectors; they sum to 1). Its moments
  ``Σ w_i θ_iᵖ = v₁ᵀ Hᵖ v₁`` are exact for ``p ≤ 2m − 1`` and unbiased for ``tr(Hᵖ)/n``
  (:func:`slq_nodes_weights`). The density is the run-average of Gaussians at the nodes,
  PyHessian's convention (``density_generate``): variance ``σ² = sigma_squared · max(1, λ_hi −
  λ_lo)`` with ``[λ_lo, λ_hi]`` the nodes' range widened by ``overhead`` (defaults 1e-5, 0.01);
  it is integrated over each bin of the grid rather than sampled at the bin centre, so the mass
  is right however narrow the Gaussians are against the bins (:func:`broadened_density`).
* **Hutch++** (Meyer, Musco, Musco, Woodruff, SOSA 2021, Alg. 1): a third of the products
  find the top of the range of H (``Q = qr(H S)``), whose trace is taken exactly, and the rest
  go to Hutchinson's estimator on the deflated ``(I − QQᵀ) H (I − QQᵀ)``: unbiased, with an
  error of ``O(1/m)`` instead of ``O(1/√m)`` for a decaying spectrum (:func:`hutchpp_trace`).
* **Diagonal blocks** ``H_bb`` for the parameters of one module (weight and bias of a
  conv/linear layer, :func:`layer_blocks`): Lanczos run on every block at once, batched
  over blocks (one call of the block operator per step, :func:`block_lanczos`), and the
  per-block Hutchinson trace (:func:`block_hutchinson`).

Pure functions on tensors; the operators are callables (``HessianOperator.matvec``,
``.matmat``, ``.block_matvec`` of :mod:`ckpt_analyzer.functional.hessian`, or a dense matrix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .hessian import Krylov, MatMat, tridiagonal_eigh

__all__ = [
    "BlockMatVec",
    "block_hutchinson",
    "block_lanczos",
    "broadened_density",
    "hutchpp_trace",
    "layer_blocks",
    "slq_nodes_weights",
]

#: ``[v_b or None per block] -> [H_bb v_b or None]`` (flat block vectors).
BlockMatVec = Callable[[Sequence[torch.Tensor | None]], Sequence[torch.Tensor | None]]

LAYER_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def layer_blocks(model: nn.Module) -> list[tuple[str, list[int]]]:
    """``(module name, parameter indices)`` of every conv/linear module with a weight, in
    ``named_modules()`` order (the layers of ``weights_spectrum``). The indices point into the
    trainable ``named_parameters()`` (the order of :class:`HessianOperator`): the module's
    weight and bias, where trainable. Modules with no trainable parameter are left out."""
    index = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    out: list[tuple[str, list[int]]] = []
    for name, m in model.named_modules():
        if not isinstance(m, LAYER_KINDS) or getattr(m, "weight", None) is None:
            continue
        idx = [index[id(p)] for p in (m.weight, getattr(m, "bias", None))
               if p is not None and id(p) in index]
        if idx:
            out.append((name, idx))
    return out


def slq_nodes_weights(krylov: Krylov) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature nodes (Ritz values, descending) and weights (``s_{1,i}²``, summing to
    1) of one Lanczos run, float64 on the CPU."""
    theta, s = tridiagonal_eigh(krylov.alpha, krylov.beta)
    return theta, s[0] ** 2


def broadened_density(nodes: torch.Tensor, weights: torch.Tensor, bins: int,
                      sigma_squared: float = 1e-5, overhead: float = 0.01
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The SLQ density on a grid: ``(centres, density, sigma)``.

    ``nodes`` and ``weights`` are ``(runs, steps)`` (NaN nodes with zero weight pad runs that
    stopped early). The Gaussians have PyHessian's variance ``sigma_squared · max(1, λ_hi −
    λ_lo)``, ``λ_lo, λ_hi`` = the smallest and largest node ∓ ``overhead``; the grid of ``bins``
    equal bins spans ``[λ_lo − 5σ, λ_hi + 5σ]`` (so less than 1e-6 of the mass falls outside),
    and ``density[b]`` is the run-mean of ``Σ_i w_i · P(bin b | N(θ_i, σ²)) / Δλ``: it sums to
    one times ``1/Δλ`` up to that tail; it is not renormalized. NaN when no node is finite."""
    nodes = nodes.to(torch.float64).reshape(-1, nodes.shape[-1])
    weights = weights.to(torch.float64).reshape(nodes.shape)
    ok = torch.isfinite(nodes)
    if not bool(ok.any()) or bins < 1:
        nan = torch.full((max(bins, 0),), math.nan, dtype=torch.float64)
        return nan, nan.clone(), math.nan
    lo = float(nodes[ok].min()) - overhead
    hi = float(nodes[ok].max()) + overhead
    sigma = math.sqrt(sigma_squared * max(1.0, hi - lo))
    edges = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, bins + 1, dtype=torch.float64)
    th = torch.where(ok, nodes, torch.zeros_like(nodes))[..., None]  # (runs, steps, 1)
    cdf = 0.5 * torch.special.erfc(-(edges - th) / (sigma * math.sqrt(2.0)))
    mass = (cdf[..., 1:] - cdf[..., :-1]) * torch.where(ok, weights, 0.0)[..., None]
    width = (edges[1] - edges[0]).item()
    density = mass.sum(dim=1).mean(dim=0) / width
    return (edges[1:] + edges[:-1]) / 2, density, sigma


def _signs(dim: int, count: int, generator: torch.Generator | None, dtype: torch.dtype,
           device: torch.device | str) -> torch.Tensor:
    """``count`` Rademacher rows (±1) drawn on the CPU, then moved."""
    z = torch.randint(0, 2, (count, dim), generator=generator)
    return (z.to(device, dtype) * 2 - 1)


def hutchpp_trace(matmat: MatMat, dim: int, products: int,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
                  ) -> tuple[float, float, torch.Tensor]:
    """Hutch++ estimate of ``tr(H)`` from ``products`` matrix-vector products (Meyer et al.
    2021, Alg. 1): ``s = products // 3`` Rademacher vectors S, ``Q = qr(H S)``; ``tr(QᵀHQ)``
    exactly (``s`` products) plus Hutchinson's mean of ``g_iᵀ(I−QQᵀ)H(I−QQᵀ)g_i`` over the
    other ``products − 2s`` Rademacher vectors. Returns ``(estimate, standard error, q)`` with
    the standard error that of the Hutchinson part given Q (``std(q)/√len(q)``; NaN with one
    sample). With fewer than 3 products it is Hutchinson's estimator."""
    if products < 1 or dim < 1:
        raise ValueError(f"hutchpp_trace needs products, dim >= 1 (got {products}, {dim})")
    s = min(products // 3, dim)
    exact = 0.0
    q_basis = torch.zeros((0, dim), dtype=dtype, device=device)
    if s:
        sketch = _signs(dim, s, generator, dtype, device)
        y = matmat(sketch).to(dtype)
        q_basis = torch.linalg.qr(y.T.to(torch.float64)).Q.T.to(dtype)  # (s, dim) orthonormal
        hq = matmat(q_basis).to(dtype)
        exact = float((hq * q_basis).sum())
    g = _signs(dim, products - 2 * s, generator, dtype, device)
    if s:
        g = g - (g @ q_basis.T) @ q_basis
    q = (matmat(g).to(dtype) * g).sum(dim=1).to(torch.float64).cpu()
    stderr = float(q.std(unbiased=True) / math.sqrt(len(q))) if len(q) > 1 else math.nan
    return exact + float(q.mean()), stderr, q


def _pad(vectors: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(vectors), width), dtype=vectors[0].dtype, device=vectors[0].device)
    for b, v in enumerate(vectors):
        out[b, :len(v)] = v
    return out


def block_lanczos(matvec: BlockMatVec, sizes: Sequence[int], iterations: int,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                  tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top eigenvalue of every diagonal block ``H_bb`` (``sizes[b]`` entries each) by
    Lanczos with full reorthogonalization, all blocks advanced together: each step is one call
    of ``matvec`` on all active blocks, and the orthogonalization is batched over blocks
    (vectors zero-padded to the largest block). Block b runs ``min(iterations, sizes[b])``
    steps from its own Gaussian start (drawn in block order from ``generator``) and stops
    early when its Krylov space is invariant. Returns ``(top, bound, vectors)``: float64
    ``(L,)`` Ritz values and bounds ``|β_m s_m|``, and the Ritz vectors as a padded
    ``(L, max size)`` tensor."""
    if iterations < 1 or not sizes or min(sizes) < 1:
        raise ValueError("block_lanczos needs iterations >= 1 and non-empty blocks")
    n_blocks, width = len(sizes), max(sizes)
    steps = [min(iterations, n) for n in sizes]
    m = max(steps)
    starts = [torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype)
              for n in sizes]
    v = _pad([s / torch.linalg.vector_norm(s) for s in starts], width)
    basis = torch.zeros((m, n_blocks, width), dtype=dtype, device=device)
    alpha = torch.zeros((m, n_blocks), dtype=torch.float64)
    beta = torch.zeros((m, n_blocks), dtype=torch.float64)
    used = torch.zeros(n_blocks, dtype=torch.long)
    active = torch.ones(n_blocks, dtype=torch.bool)
    scale = torch.zeros(n_blocks, dtype=torch.float64)
    for j in range(m):
        basis[j] = v
        hv = matvec([v[b, :sizes[b]] if active[b] else None for b in range(n_blocks)])
        w = _pad([h if h is not None else torch.zeros(sizes[b], dtype=dtype, device=device)
                  for b, h in enumerate(hv)], width).to(dtype)
        a = (w * v).sum(dim=1)
        w = w - a[:, None] * v
        if j > 0:
            w = w - beta[j - 1].to(w)[:, None] * basis[j - 1]
        for _ in range(2):  # full reorthogonalization, twice, every block at once
            coef = torch.einsum("jbn,bn->jb", basis[:j + 1], w)
            w = w - torch.einsum("jb,jbn->bn", coef, basis[:j + 1])
        b_norm = torch.linalg.vector_norm(w, dim=1).to(torch.float64).cpu()
        a64 = a.to(torch.float64).cpu()
        alpha[j] = torch.where(active, a64, 0.0)
        beta[j] = torch.where(active, b_norm, 0.0)
        used += active.long()
        scale = torch.maximum(scale, torch.maximum(a64.abs(), b_norm))
        done = (b_norm <= tol * scale.clamp_min(1e-300)) | (used >= torch.tensor(steps))
        active = active & ~done
        if not bool(active.any()):
            break
        keep = active.to(w.device)[:, None]
        v = torch.where(keep, w / b_norm.clamp_min(1e-300).to(w)[:, None], torch.zeros_like(w))
    top = torch.full((n_blocks,), math.nan, dtype=torch.float64)
    bound = torch.full((n_blocks,), math.nan, dtype=torch.float64)
    vecs = torch.zeros((n_blocks, width), dtype=dtype, device=device)
    for b in range(n_blocks):  # tiny tridiagonal eigenproblems, one per block
        u = int(used[b])
        theta, s = tridiagonal_eigh(alpha[:u, b], beta[:u, b])
        top[b] = theta[0]
        bound[b] = abs(float(beta[u - 1, b]) * float(s[-1, 0]))
        vecs[b] = s[:, 0].to(basis) @ basis[:u, b]
    return top, bound, vecs


def block_residuals(matvec: BlockMatVec, sizes: Sequence[int], values: torch.Tensor,
                    vectors: torch.Tensor) -> torch.Tensor:
    """``‖H_bb v_b − λ_b v_b‖ / ‖v_b‖`` of each block's pair, one call of ``matvec``."""
    hv = matvec([vectors[b, :n] for b, n in enumerate(sizes)])
    out = torch.full((len(sizes),), math.nan, dtype=torch.float64)
    for b, n in enumerate(sizes):
        h = hv[b]
        assert h is not None
        v = vectors[b, :n].to(torch.float64)
        out[b] = float(torch.linalg.vector_norm(h.to(torch.float64) - float(values[b]) * v)
                       / torch.linalg.vector_norm(v))
    return out


def block_hutchinson(matvec: BlockMatVec, sizes: Sequence[int], samples: int,
                     generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson's estimate of ``tr(H_bb)`` for every block (``samples`` Rademacher vectors
    per block, one ``matvec`` call per sample for all blocks). Returns float64 ``(L,)``
    estimates and standard errors ``std(q, ddof=1)/√samples`` (NaN with one sample)."""
    if samples < 1 or not sizes:
        raise ValueError("block_hutchinson needs samples >= 1 and non-empty blocks")
    q = torch.empty((samples, len(sizes)), dtype=torch.float64)
    for i in range(samples):
        zs = [_signs(n, 1, generator, dtype, device)[0] for n in sizes]
        hz = matvec(zs)
        for b, (z, h) in enumerate(zip(zs, hz)):
            assert h is not None
            q[i, b] = float(torch.dot(h.to(dtype), z))
    stderr = q.std(dim=0, unbiased=True) / math.sqrt(samples) if samples > 1 \
        else torch.full((len(sizes),), math.nan, dtype=torch.float64)
    return q.mean(dim=0), stderr
