"""The parameter-space Hessian of the training loss: Hessian-vector products, its top
eigenvalues (Lanczos, power iteration) and its trace (Hutchinson).

Yao, Gholami, Keutzer, Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian"
(IEEE BigData 2020), §III:

* Hessian-vector products ``Hv = ∂(gᵀv)/∂θ`` with ``g = ∂L/∂θ`` (their eq. 2), by double
  backward (:class:`HessianOperator`). ``L`` is the mean cross-entropy over a fixed set of
  points; the product is the sum of per-batch products, so the points are streamed in large
  batches and never looped over one by one.
* the top eigenvalues by power iteration with deflation (their Alg. 1;
  :func:`power_iteration`) or, preferred, by the Lanczos algorithm with full
  reorthogonalization (:func:`lanczos`; their §III-C uses it for the spectral density): one
  Krylov space of ``m`` products gives all k top eigenvalues, with the classic residual bound
  ``|β_m s_{m,i}|`` of each Ritz value (Parlett, *The Symmetric Eigenvalue Problem*, §13.2).
* the trace by Hutchinson's estimator ``tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i`` with Rademacher
  ``z_i`` (their Alg. 2, eq. 5), and its standard error ``std(z_iᵀHz_i) / sqrt(m)``
  (:func:`hutchinson_trace`).

Pure functions on tensors; the model is evaluated through :func:`torch.func.functional_call`
on detached copies of its parameters, so it is never modified (no weights written, no
``.grad`` set). Put the model in eval mode first (batch norm from its running statistics).

Usage from a notebook::

    op = HessianOperator(model.eval(), x, y, batch_size=512)
    top, residual = lanczos(op.matvec, op.dim, k=3, iterations=50)
    trace, stderr, _ = hutchinson_trace(op.matvec, op.dim, samples=32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .batching import chunks, evaluation

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "HessianOperator",
    "Krylov",
    "MatMat",
    "default_cache_bytes",
    "hutchinson_trace",
    "lanczos",
    "lanczos_decomposition",
    "lanczos_memory_bytes",
    "power_eigenpairs",
    "power_iteration",
    "ritz_pairs",
    "tridiagonal_eigh",
    "true_residuals",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]
#: ``(b, dim) -> (b, dim)``: the operator on a stack of vectors (rows).
MatMat = Callable[[torch.Tensor], torch.Tensor]


DEFAULT_CACHE_BYTES = 2 * 2**30


def default_cache_bytes(device: torch.device | str) -> int:
    """The memory :class:`HessianOperator` may keep for first-order graphs: 2 GiB, and on a
    CUDA device at most a quarter of its free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(DEFAULT_CACHE_BYTES, free // 4)
    return DEFAULT_CACHE_BYTES


class HessianOperator:
    """``v ↦ H v`` for the mean cross-entropy of ``model`` on ``(x, y)`` w.r.t. its parameters.

    Vectors are flat (``dim`` = number of trainable parameter entries, in
    ``model.named_parameters()`` order) and may have any floating dtype and device; products
    are computed in the parameters' dtype on their device and returned in ``v``'s. ``x`` is
    processed in chunks of ``batch_size``; each chunk contributes ``∂(g_bᵀv)/∂θ`` with ``g_b``
    the gradient of its share ``Σ_{i∈b} ℓ_i / N`` of the loss (PyHessian eq. 2).

    The points and parameters are fixed for the operator's life, so the first-order part of a
    product (forward and the ``create_graph`` backward that gives ``g_b``) is the same for
    every ``v``: it is built once per chunk and kept, as long as the tensors its graph saves
    fit in ``cache_bytes`` (counted with saved-tensor hooks; default :func:`default_cache_bytes`),
    so later products run only the double backward. Chunks beyond the budget are rebuilt on
    every product, as without a cache. The kept graph gives bit-identical products. If the
    parameters, buffers or points are changed in place (their version counters move), the kept
    graphs are dropped and rebuilt, so a product is always that of the current values.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 512, cache_bytes: int | None = None) -> None:
        if len(x) == 0:
            raise ValueError("HessianOperator needs at least one point")
        self.model = model
        self.x, self.y = x, y
        self.batch_size = max(1, int(batch_size))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self.dtype = named[0][1].dtype if named else torch.float32
        self.device = named[0][1].device if named else x.device
        # detached leaves sharing the model's storage: autograd never writes to the model
        self._params = {n: p.detach().requires_grad_(True) for n, p in named}
        frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self._fixed = {**frozen, **dict(model.named_buffers())}
        self.cache_bytes = default_cache_bytes(self.device) if cache_bytes is None \
            else max(0, int(cache_bytes))
        self.cached_bytes = 0
        self._graphs: list[tuple[torch.Tensor, ...]] = []  # g_b of the first chunks, kept
        self._full = False  # a chunk did not fit: keep no more
        self._versions: tuple[int, ...] = ()
        self.calls = 0
        self.block_calls = 0

    def _tensors_versions(self) -> tuple[int, ...]:
        tensors = [*self._params.values(), *self._fixed.values(), self.x, self.y]
        return tuple(t._version for t in tensors)

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector as one tensor per parameter, on the parameters' device and dtype."""
        flat = v.to(device=self.device, dtype=self.dtype)
        return [c.view(s) for c, s in zip(flat.split(self.sizes), self.shapes)]

    def _gradient(self, lo: int, hi: int) -> tuple[tuple[torch.Tensor, ...], int]:
        """``g_b`` of chunk ``[lo, hi)`` with its graph, and the bytes that graph saves."""
        from torch.func import functional_call

        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = functional_call(self.model, {**self._params, **self._fixed},
                                  (self.x[lo:hi],))
            loss = F.cross_entropy(out, self.y[lo:hi], reduction="sum") / len(self.x)
            grads = torch.autograd.grad(loss, list(self._params.values()), create_graph=True)
        return grads, saved + sum(g.numel() * g.element_size() for g in grads)

    def _chunk_graphs(self) -> Iterator[tuple[tuple[torch.Tensor, ...], bool]]:
        """``(g_b, keep)`` for every chunk in order: the kept graph, or one built now (and
        kept while the budget allows). The caller's last backward through ``g_b`` must pass
        ``retain_graph=keep``."""
        versions = self._tensors_versions()
        if versions != self._versions:  # changed in place since the graphs were kept
            self.release()
            self._versions = versions
        for i, (lo, hi) in enumerate(chunks(len(self.x), self.batch_size)):
            if i < len(self._graphs):
                yield self._graphs[i], True
                continue
            grads, size = self._gradient(lo, hi)
            keep = not self._full and self.cached_bytes + size <= self.cache_bytes
            if keep:
                self._graphs.append(grads)
                self.cached_bytes += size
            else:
                self._full = True
            yield grads, keep

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` summed over the batches of the fixed points."""
        return self._product(v)

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        leaves = list(self._params.values())
        total = [torch.zeros_like(p) for p in leaves]
        with evaluation(grad=True):
            for grads, keep in self._chunk_graphs():
                # ∂(gᵀv)/∂θ: the vector-Jacobian product of g with v
                hv = torch.autograd.grad(grads, leaves, grad_outputs=vs, retain_graph=keep)
                for t, h in zip(total, hv):
                    t.add_(h)
        self.calls += 1
        return torch.cat([t.flatten() for t in total]).to(device=v.device, dtype=v.dtype)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """``H V`` for a stack ``vs`` of shape ``(b, dim)``: one batched double backward per
        chunk (``is_grads_batched``, vmap over the vectors), or a loop of :meth:`matvec` where
        an operation has no batching rule. Counts ``b`` products in :attr:`calls`."""
        if vs.ndim != 2 or vs.shape[1] != self.dim:
            raise ValueError(f"matmat needs a (b, {self.dim}) stack (got {tuple(vs.shape)})")
        if len(vs) <= 1:
            return torch.stack([self._product(v) for v in vs]) if len(vs) else vs.clone()
        flat = vs.to(device=self.device, dtype=self.dtype)
        outs = [c.view(len(vs), *s) for c, s in zip(flat.split(self.sizes, dim=1), self.shapes)]
        leaves = list(self._params.values())
        total = [torch.zeros_like(o) for o in outs]
        try:
            with evaluation(grad=True):
                for grads, keep in self._chunk_graphs():
                    hv = torch.autograd.grad(grads, leaves, grad_outputs=outs,
                                             retain_graph=keep, is_grads_batched=True)
                    for t, h in zip(total, hv):
                        t.add_(h)
        except RuntimeError:  # no vmap rule for an operation of this model
            self.release()
            return torch.stack([self._product(v) for v in vs])
        self.calls += len(vs)
        return torch.cat([t.reshape(len(vs), -1) for t in total], dim=1).to(
            device=vs.device, dtype=vs.dtype)

    def block_matvec(self, blocks: Sequence[Sequence[int]], vs: Sequence[torch.Tensor | None]
                     ) -> list[torch.Tensor | None]:
        """``H_bb v_b`` for diagonal blocks of H: block ``b`` is the parameters
        ``blocks[b]`` (indices into :attr:`names`), ``vs[b]`` a flat vector over their
        entries (in that order; ``None``: skip the block). Each product back-propagates from
        the block's gradients to the block's parameters only (``∂(g_bᵀv_b)/∂θ_b``), which
        costs a fraction of a whole product (the graph is pruned to what reaches θ_b)."""
        leaves = list(self._params.values())
        out: list[torch.Tensor | None] = [None] * len(blocks)
        acc: list[list[torch.Tensor] | None] = [None] * len(blocks)
        todo = [b for b, v in enumerate(vs) if v is not None]
        with evaluation(grad=True):
            for grads, keep in self._chunk_graphs():
                for n, b in enumerate(todo):
                    v = vs[b]
                    assert v is not None
                    idx = list(blocks[b])
                    flat = v.to(device=self.device, dtype=self.dtype)
                    parts = [c.view(self.shapes[i]) for c, i in
                             zip(flat.split([self.sizes[i] for i in idx]), idx)]
                    hv = torch.autograd.grad([grads[i] for i in idx], [leaves[i] for i in idx],
                                             grad_outputs=parts,
                                             retain_graph=keep or n < len(todo) - 1)
                    cur = acc[b]
                    if cur is None:
                        acc[b] = [h.clone() for h in hv]
                    else:
                        for t, h in zip(cur, hv):
                            t.add_(h)
        for b in todo:
            cur, v = acc[b], vs[b]
            assert cur is not None and v is not None
            out[b] = torch.cat([t.flatten() for t in cur]).to(device=v.device, dtype=v.dtype)
        self.block_calls += 1
        return out

    def release(self) -> None:
        """Drop the kept graphs (their memory); later products rebuild and keep them again."""
        self._graphs.clear()
        self.cached_bytes = 0
        self._full = False

    def loss(self) -> float:
        """The mean cross-entropy at the current parameters (inference mode). The chunk sums
        are accumulated on the device in float64 (the same additions, in the same order, as
        Python floats) and read back once: one host sync whatever the number of chunks."""
        from torch.func import functional_call

        total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        with evaluation():
            for lo, hi in chunks(len(self.x), self.batch_size):
                out = functional_call(self.model, {**self._params, **self._fixed},
                                      (self.x[lo:hi],))
                total = total + F.cross_entropy(out.double(), self.y[lo:hi], reduction="sum")
        return float(total) / len(self.x)


def _normal(dim: int, generator: torch.Generator | None, dtype: torch.dtype,
            device: torch.device | str) -> torch.Tensor:
    """A Gaussian vector drawn on the CPU (the same on every device), then moved."""
    return torch.randn(dim, generator=generator, dtype=torch.float64).to(device, dtype)


def lanczos_memory_bytes(dim: int, iterations: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes of the Krylov basis that :func:`lanczos` keeps for full reorthogonalization."""
    return min(iterations, dim) * dim * torch.empty((), dtype=dtype).element_size()


class Krylov(NamedTuple):
    """A Lanczos decomposition ``H V ≈ V T``: the orthonormal basis ``V`` (``used × dim``), the
    diagonal ``alpha`` and off-diagonal ``beta`` of the tridiagonal ``T`` (float64; ``beta[-1]``
    is the norm of the last step's remainder, the residual of the whole decomposition)."""

    basis: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def lanczos_decomposition(matvec: MatVec, dim: int, iterations: int,
                          generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float64, tol: float = 1e-10) -> Krylov:
    """``m = min(iterations, dim)`` Lanczos steps with full reorthogonalization from a
    Gaussian start (drawn from ``generator``, normalized: uniform on the sphere); stops early
    when the Krylov space becomes invariant (β below ``tol``·‖T‖). See :func:`lanczos`."""
    if iterations < 1 or dim < 1:
        raise ValueError(f"lanczos needs iterations, dim >= 1 (got {iterations}, {dim})")
    m = min(iterations, dim)
    basis = torch.empty((m, dim), dtype=dtype, device=device)
    alpha = torch.zeros(m, dtype=torch.float64)
    beta = torch.zeros(m, dtype=torch.float64)
    v = _normal(dim, generator, dtype, device)
    v = v / torch.linalg.vector_norm(v)
    used = 0
    scale = 0.0
    for j in range(m):
        basis[j] = v
        w = matvec(v).to(dtype)
        a = float(torch.dot(w, v))
        alpha[j] = a
        w = w - a * v
        if j > 0:
            w = w - beta[j - 1].item() * basis[j - 1]
        for _ in range(2):  # full reorthogonalization, twice
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        used = j + 1
        scale = max(scale, abs(a), b)
        if b <= tol * max(scale, 1e-300) or j == m - 1:
            break
        v = w / b
    return Krylov(basis[:used], alpha[:used], beta[:used])


def tridiagonal_eigh(alpha: torch.Tensor, beta: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the symmetric tridiagonal with
    diagonal ``alpha`` and off-diagonal ``beta[:-1]`` (float64)."""
    t = torch.diag(alpha)
    if len(alpha) > 1:
        off = beta[:len(alpha) - 1]
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    order = torch.argsort(theta, descending=True)
    return theta[order], s[:, order]


def ritz_pairs(krylov: Krylov, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest Ritz values of a decomposition, their bounds ``|β_m s_{m,i}|`` and
    Ritz vectors ``V s_i`` (``k × dim``, in the basis' dtype and device). Entries beyond the
    Krylov dimension are NaN (values, bounds) and zero (vectors)."""
    theta, s = tridiagonal_eigh(krylov.alpha, krylov.beta)
    used = len(theta)
    bound = (krylov.beta[used - 1] * s[-1]).abs()
    out = torch.full((k,), math.nan, dtype=torch.float64)
    res = torch.full((k,), math.nan, dtype=torch.float64)
    vecs = torch.zeros((k, krylov.basis.shape[1]), dtype=krylov.basis.dtype,
                       device=krylov.basis.device)
    top = min(k, used)
    out[:top], res[:top] = theta[:top], bound[:top]
    vecs[:top] = s[:, :top].T.to(krylov.basis) @ krylov.basis
    return out, res, vecs


def lanczos(matvec: MatVec, dim: int, k: int, iterations: int,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float64, tol: float = 1e-10
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator, by Lanczos with full
    reorthogonalization.

    ``m = min(iterations, dim)`` products build the orthonormal Krylov basis
    ``V = [v_1 … v_m]`` of ``K_m(H, v_1)`` from a Gaussian ``v_1`` (drawn from ``generator``)
    and the tridiagonal ``T = Vᵀ H V`` (diagonal α, off-diagonal β); each new vector is
    orthogonalized against the whole basis twice ("twice is enough", Giraud et al. 2005), which
    keeps the Ritz values free of spurious copies. The eigenvalues of T (Ritz values) that are
    largest approximate those of H; ``residual[i] = |β_m s_{m,i}|`` (``s_i`` the Ritz vector
    in T's basis) bounds ``min_j |λ_j(H) − θ_i|`` (Parlett §13.2) in exact arithmetic. The
    iteration stops early when the Krylov space becomes invariant (β below ``tol``·‖T‖),
    after which the Ritz values are exact. PyHessian (Yao et al. 2020) §III-C. The measured
    residual of the returned vectors is :func:`ritz_pairs` + :func:`true_residuals`.

    Returns ``(eigenvalues, residuals)``, float64 of length k, eigenvalues in descending
    order; entries beyond the Krylov dimension are NaN. The basis costs
    :func:`lanczos_memory_bytes` on ``device``.
    """
    if k < 1:
        raise ValueError(f"lanczos needs k >= 1 (got {k})")
    if iterations < 1 or dim < 1:
        raise ValueError(f"lanczos needs k, iterations, dim >= 1 (got {k}, {iterations}, {dim})")
    values, bound, _ = ritz_pairs(lanczos_decomposition(matvec, dim, iterations, generator,
                                                        device, dtype, tol), k)
    return values, bound


def true_residuals(matmat: MatMat, values: torch.Tensor, vectors: torch.Tensor
                   ) -> torch.Tensor:
    """``‖H v_i − λ_i v_i‖ / ‖v_i‖`` of each pair (one product per finite eigenvalue, in one
    ``matmat`` call of shape ``(b, dim)``), float64; NaN where ``values`` is NaN.

    For a unit vector this bounds the distance of λ_i to *some* eigenvalue of H:
    ``min_j |λ_i − λ_j(H)| ≤ ‖H v − λ v‖`` (Parlett, Thm 4.5.1), not necessarily the i-th."""
    res = torch.full(values.shape, math.nan, dtype=torch.float64)
    ok = torch.isfinite(values)
    if not bool(ok.any()):
        return res
    idx = torch.nonzero(ok).flatten()
    v = vectors[idx.to(vectors.device)]
    hv = matmat(v).to(torch.float64)
    v64 = v.to(torch.float64)
    lam = values[idx].to(hv)
    r = torch.linalg.vector_norm(hv - lam[:, None] * v64, dim=1)
    res[idx] = (r / torch.linalg.vector_norm(v64, dim=1)).cpu()
    return res


def power_eigenpairs(matvec: MatVec, dim: int, k: int, iterations: int,
                     generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                     tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues, vectors)`` of :func:`power_iteration` (vectors ``k × dim``, unit, the
    ones deflated against; zero rows beyond ``dim``). When the product budget runs out before
    the Rayleigh quotient settles, the eigenvalue is that of the last product and the vector
    the normalized last product, so only a measured residual says how good the pair is."""
    if k < 1 or iterations < 1 or dim < 1:
        raise ValueError(f"power_iteration needs k, iterations, dim >= 1 "
                         f"(got {k}, {iterations}, {dim})")
    found: list[torch.Tensor] = []
    out = torch.full((k,), math.nan, dtype=torch.float64)
    vecs = torch.zeros((k, dim), dtype=dtype, device=device)

    def deflate(u: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            for f in found:
                u = u - torch.dot(u, f) * f
        return u

    for i in range(min(k, dim)):
        v = deflate(_normal(dim, generator, dtype, device))
        v = v / torch.linalg.vector_norm(v)
        lam = math.nan
        for _ in range(iterations):
            hv = matvec(v).to(dtype)
            new = float(torch.dot(hv, v))
            converged = math.isfinite(lam) and abs(new - lam) <= tol * (abs(lam) + 1e-12)
            lam = new
            if converged:
                break
            w = deflate(hv)
            nrm = float(torch.linalg.vector_norm(w))
            if nrm == 0.0:
                break
            v = w / nrm
        out[i] = lam
        vecs[i] = v
        found.append(v)
    return out, vecs


def power_iteration(matvec: MatVec, dim: int, k: int, iterations: int,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float64, tol: float = 1e-6
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` eigenvalues of largest magnitude by power iteration with deflation
    (PyHessian Alg. 1: each new vector is kept orthogonal to the eigenvectors already found).

    Each eigenvalue takes at most ``iterations`` products and stops once the Rayleigh quotient
    changes by less than ``tol`` relatively. Returns ``(eigenvalues, residuals)`` (float64,
    length k, in the order found, i.e. by decreasing magnitude) with ``residual = ‖Hv − λv‖``
    of the returned unit vector and the undeflated H (one more product per eigenvalue,
    :func:`true_residuals`); NaN beyond ``dim``. Only k vectors are stored.
    """
    values, vectors = power_eigenpairs(matvec, dim, k, iterations, generator, device, dtype,
                                       tol)
    return values, true_residuals(lambda vs: torch.stack([matvec(v) for v in vs]), values,
                                  vectors)


def hutchinson_trace(matvec: MatVec, dim: int, samples: int,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float64) -> tuple[float, float, torch.Tensor]:
    """Hutchinson's estimator of ``tr(H)`` (PyHessian Alg. 2, eq. 5).

    ``samples`` Rademacher vectors ``z_i`` (±1 entries, drawn on the CPU from ``generator``)
    give ``q_i = z_iᵀ H z_i``, unbiased for the trace. Returns ``(mean q, standard error
    std(q, ddof=1) / sqrt(samples), q)``; the standard error is NaN with one sample.
    """
    if samples < 1 or dim < 1:
        raise ValueError(f"hutchinson_trace needs samples, dim >= 1 (got {samples}, {dim})")
    q = torch.empty(samples, dtype=torch.float64)
    for i in range(samples):
        z = torch.randint(0, 2, (dim,), generator=generator).to(device, dtype) * 2 - 1
        q[i] = float(torch.dot(matvec(z).to(dtype), z))
    mean = float(q.mean())
    stderr = float(q.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else math.nan
    return mean, stderr, q
