"""Measured residuals, the SLQ eigenvalue density, Hutch++ and per-layer curvature against the
dense Hessian of a tiny model (torch.autograd.functional.hessian) and slow loop references."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_hessian import dense_hessian, digits_ctx, problem

from ckpt_analyzer.functional.hessian import (
    HessianOperator,
    hutchinson_trace,
    lanczos_decomposition,
    power_eigenpairs,
    ritz_pairs,
    true_residuals,
)
from ckpt_analyzer.functional.hessian_spectrum import (
    block_hutchinson,
    block_lanczos,
    block_residuals,
    broadened_density,
    hutchpp_trace,
    layer_blocks,
    slq_nodes_weights,
)
from ckpt_analyzer.probes.hessian import HessianProbe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dense() -> tuple:
    model, x, y = problem()
    return model, x, y, dense_hessian(model, x, y)


def float32_op(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> HessianOperator:
    return HessianOperator(copy.deepcopy(model).float(), x.float(), y, batch_size=16)


# ------------------------------------------------------------------ residuals

def test_residual_is_the_dense_norm_and_flags_a_starved_power_run(dense: tuple) -> None:
    model, x, y, h = dense
    op = float32_op(model, x, y)
    h32 = h.float().double()  # the float32 operator's matrix, up to its rounding
    starved, vecs = power_eigenpairs(op.matvec, op.dim, k=3, iterations=3,
                                     generator=torch.Generator().manual_seed(0), tol=1e-12)
    res = true_residuals(op.matmat, starved, vecs)
    dense_res = torch.linalg.vector_norm(vecs @ h32 - starved[:, None] * vecs, dim=1)
    assert torch.allclose(res, dense_res, rtol=1e-4, atol=1e-6), (res, dense_res)
    top = float(torch.linalg.eigvalsh(h).abs().max())
    # three products per eigenvalue: far from converged, and the residual says so
    assert bool((res > 1e-2 * starved.abs()).all())
    assert bool((res > 1e-3 * top).all())
    # and it bounds the distance to some eigenvalue of H (Parlett Thm 4.5.1)
    ev = torch.linalg.eigvalsh(h)
    assert all(float((ev - lam).abs().min()) <= r + 1e-6 for lam, r in zip(starved, res))
    # a converged run: small residual, converged
    good, gv = power_eigenpairs(lambda v: h @ v, op.dim, k=2, iterations=3000, tol=1e-14,
                                generator=torch.Generator().manual_seed(0))
    gres = true_residuals(lambda vs: vs @ h, good, gv)
    assert bool((gres <= 1e-3 * good.abs()).all()), gres


def test_lanczos_ritz_residual_measured_with_the_operator(dense: tuple) -> None:
    model, x, y, h = dense
    op = float32_op(model, x, y)
    kr = lanczos_decomposition(op.matvec, op.dim, 60, torch.Generator().manual_seed(1))
    vals, bound, vecs = ritz_pairs(kr, 3)
    calls = op.calls
    res = true_residuals(op.matmat, vals, vecs)
    assert op.calls == calls + 3  # one product per eigenvalue, in one batched call
    dense_res = torch.linalg.vector_norm(vecs @ h - vals[:, None] * vecs, dim=1)
    # float32 products: the residual floor is the operator's rounding, ~1e-6 of ||H||
    top = float(torch.linalg.eigvalsh(h).max())
    assert torch.allclose(res, dense_res, atol=2e-5 * top), (res, dense_res)
    assert bool((res <= 1e-3 * vals.abs()).all())
    short = lanczos_decomposition(op.matvec, op.dim, 4, torch.Generator().manual_seed(1))
    sv, _, svec = ritz_pairs(short, 3)
    assert bool((true_residuals(op.matmat, sv, svec) > 1e-3 * sv.abs()).any())


def test_matmat_equals_matvec_per_vector(dense: tuple) -> None:
    model, x, y, h = dense
    op = HessianOperator(copy.deepcopy(model), x, y, batch_size=7)
    vs = torch.randn(4, op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(op.matmat(vs), torch.stack([op.matvec(v) for v in vs]),
                          rtol=1e-12, atol=1e-14)
    assert torch.allclose(op.matmat(vs), vs @ h, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ density

def slow_slq(h: np.ndarray, starts: list[np.ndarray], steps: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The obvious reference: textbook Lanczos loops on the dense matrix (numpy)."""
    nodes, weights = [], []
    for v0 in starts:
        q = [v0 / np.linalg.norm(v0)]
        a, b = [], []
        for j in range(steps):
            w = h @ q[j]
            a.append(float(w @ q[j]))
            for _ in range(2):
                for u in q:
                    w = w - (w @ u) * u
            b.append(float(np.linalg.norm(w)))
            if j < steps - 1:
                q.append(w / b[-1])
        t = np.diag(a) + np.diag(b[:-1], 1) + np.diag(b[:-1], -1)
        th, s = np.linalg.eigh(t)
        nodes.append(th[::-1])
        weights.append(s[0, ::-1] ** 2)
    return np.array(nodes), np.array(weights)


def slow_density(nodes: np.ndarray, weights: np.ndarray, edges: np.ndarray, sigma: float
                 ) -> np.ndarray:
    out = np.zeros(len(edges) - 1)
    for r in range(len(nodes)):
        for th, w in zip(nodes[r], weights[r]):
            for b in range(len(edges) - 1):
                cdf = [0.5 * math.erfc(-(e - th) / (sigma * math.sqrt(2))) for e in edges[b:b + 2]]
                out[b] += w * (cdf[1] - cdf[0])
    return out / len(nodes) / (edges[1] - edges[0])


def slq(h: torch.Tensor, runs: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = [slq_nodes_weights(lanczos_decomposition(lambda v: h @ v, h.shape[0], steps, g))
           for _ in range(runs)]
    return torch.stack([n for n, _ in out]), torch.stack([w for _, w in out])


def test_slq_matches_a_slow_loop_on_the_dense_matrix(dense: tuple) -> None:
    *_, h = dense
    nodes, weights = slq(h, runs=3, steps=12, seed=4)
    g = torch.Generator().manual_seed(4)
    starts = [torch.randn(h.shape[0], generator=g, dtype=torch.float64).numpy() for _ in range(3)]
    ref_n, ref_w = slow_slq(h.numpy(), starts, 12)
    assert np.allclose(nodes.numpy(), ref_n, rtol=1e-8, atol=1e-10)
    assert np.allclose(weights.numpy(), ref_w, rtol=1e-6, atol=1e-10)
    grid, dens, sigma = broadened_density(nodes, weights, bins=40)
    step = float(grid[1] - grid[0])
    edges = np.concatenate([grid.numpy() - step / 2, [float(grid[-1]) + step / 2]])
    assert np.allclose(dens.numpy(), slow_density(ref_n, ref_w, edges, sigma), rtol=1e-7,
                       atol=1e-9)
    # PyHessian's variance: 1e-5 x max(1, range of the nodes + 2 x 0.01)
    span = float(nodes.max() - nodes.min()) + 0.02
    assert sigma == pytest.approx(math.sqrt(1e-5 * max(1.0, span)))


def test_density_mass_and_moments_against_the_exact_spectrum(dense: tuple) -> None:
    *_, h = dense
    n = h.shape[0]
    ev = torch.linalg.eigvalsh(h)
    runs = 8
    nodes, weights = slq(h, runs=runs, steps=30, seed=7)
    assert torch.allclose(weights.sum(dim=1), torch.ones(runs, dtype=torch.float64))
    grid, dens, sigma = broadened_density(nodes, weights, bins=2000)
    dx = float(grid[1] - grid[0])
    assert float(dens.sum()) * dx == pytest.approx(1.0, abs=1e-6)  # mass on the grid
    # moments of the quadrature: v'Hv and v'H^2v per run (exact for p <= 2m-1), whose
    # run-mean is unbiased for tr(H^p)/n; for v uniform on the sphere
    # Var(v'Av) = 2 (tr(A^2)/n - (tr A/n)^2) / (n + 2), so 5 standard errors of the mean
    for p in (1, 2):
        m_p = float((ev ** p).mean())
        var = 2 * (float((ev ** (2 * p)).mean()) - m_p ** 2) / (n + 2)
        est = float((weights * nodes ** p).sum(dim=1).mean())
        assert abs(est - m_p) <= 5 * math.sqrt(var / runs), (p, est, m_p)
        # the grid's moments: the quadrature's, up to half a bin per unit of mass (p=1) or
        # that times 2 max|lambda| plus the Gaussians' variance (p=2)
        grid_m = float((dens * grid ** p).sum()) * dx
        lam = float(grid.abs().max())
        slack = dx / 2 if p == 1 else dx * lam + sigma ** 2 + dx ** 2
        assert abs(grid_m - est) <= slack + 1e-9, (p, grid_m, est)
    # all the eigenvalues of H lie inside the grid
    assert float(grid[0]) < float(ev.min()) and float(grid[-1]) > float(ev.max())
    assert math.isnan(float(broadened_density(torch.full((1, 3), math.nan),
                                              torch.zeros(1, 3), 5)[1][0]))


# ------------------------------------------------------------------ Hutch++

def decaying(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * (1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 2)) @ q.T


def test_hutchpp_unbiased_and_beats_hutchinson_at_equal_products(dense: tuple) -> None:
    *_, h = dense
    exact = float(torch.trace(h))
    ests = [hutchpp_trace(lambda vs: vs @ h, h.shape[0], 30,
                          torch.Generator().manual_seed(s))[0] for s in range(40)]
    est = float(np.mean(ests))
    assert abs(est - exact) <= 5 * float(np.std(ests, ddof=1)) / math.sqrt(40) + 1e-12
    a = decaying()
    exact = float(torch.trace(a))
    err_pp, err_h = [], []
    for s in range(50):  # fixed seeds: the same numbers every run
        pp, _, _ = hutchpp_trace(lambda vs: vs @ a, 200, 30, torch.Generator().manual_seed(s))
        hh, _, _ = hutchinson_trace(lambda v: a @ v, 200, 30, torch.Generator().manual_seed(s))
        err_pp.append((pp - exact) ** 2)
        err_h.append((hh - exact) ** 2)
    # a spectrum 1/i^2: deflating its top 10 directions removes most of the variance
    assert math.sqrt(np.mean(err_pp)) < 0.3 * math.sqrt(np.mean(err_h))
    # with all of the range sketched (products >= 3 dim) the estimate is exact
    small = a[:5, :5]
    full, _, _ = hutchpp_trace(lambda vs: vs @ small, 5, 15, torch.Generator().manual_seed(0))
    assert full == pytest.approx(float(torch.trace(small)), rel=1e-10)


# ------------------------------------------------------------------ per layer

def test_block_curvature_matches_the_dense_diagonal_blocks(dense: tuple) -> None:
    model, x, y, h = dense
    op = HessianOperator(copy.deepcopy(model), x, y, batch_size=16)
    blocks = layer_blocks(model)
    assert [n for n, _ in blocks] == ["0", "5", "7"]  # conv, linear, linear: not the BN
    offsets = np.cumsum([0, *op.sizes])
    idx = [torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in ix]) for _, ix in blocks]
    sizes = [len(i) for i in idx]

    def matvec(vs: list) -> list:
        return op.block_matvec([ix for _, ix in blocks], vs)

    v = [torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
         for n in sizes]
    for ix, got, vb in zip(idx, matvec(v), v):
        assert torch.allclose(got, h[ix][:, ix] @ vb, rtol=1e-9, atol=1e-11)
    top, _, vecs = block_lanczos(matvec, sizes, 60, torch.Generator().manual_seed(0))
    ref = torch.stack([torch.linalg.eigvalsh(h[ix][:, ix])[-1] for ix in idx])
    assert torch.allclose(top, ref, rtol=1e-6), (top, ref)
    res = block_residuals(matvec, sizes, top, vecs)
    assert bool((res <= 1e-4 * top.abs()).all())
    tr, se = block_hutchinson(matvec, sizes, 64, torch.Generator().manual_seed(1))
    exact = torch.stack([torch.trace(h[ix][:, ix]) for ix in idx])
    assert bool(((tr - exact).abs() <= 4 * se).all()), (tr, exact, se)
    # a block smaller than the steps is exact (invariant Krylov space)
    tiny, _, _ = block_lanczos(lambda vs: [h[idx[0][:5]][:, idx[0][:5]] @ vs[0]], [5], 40)
    assert float(tiny[0]) == pytest.approx(float(torch.linalg.eigvalsh(
        h[idx[0][:5]][:, idx[0][:5]])[-1]), rel=1e-10)


def test_probe_layer_axis_is_the_weights_spectrum_layers() -> None:
    from ckpt_analyzer.probes.weights_spectrum import _layers

    ctx = digits_ctx()
    cfg = HessianProbe.Config(points=24, iterations=6, k=2, trace_samples=3, per_layer=True,
                              density_runs=2, density_steps=6, density_bins=50)
    probe = HessianProbe(cfg)
    probe.prepare(ctx)
    outs = probe.outputs()
    model = ctx.build_model(2)
    assert outs.coords["layer"] == [n for n, _ in _layers(model)]
    res = outs.check(probe(model, ctx), "hessian")
    assert np.isfinite(res["layer_eigenvalue"]).all() and np.isfinite(res["layer_trace"]).all()
    assert set(np.unique(res["layer_converged"])) <= {0.0, 1.0}
    dx = np.diff(res["density_grid"], axis=1)[:, :1]
    assert np.allclose((res["density"] * dx).sum(axis=1), 1.0, atol=1e-6)
    # the first density run is the eigenvalue Lanczos run: its top node is eigenvalue 0
    assert np.allclose(res["density_nodes"][:, 0, 0], res["eigenvalues"][:, 0])
