"""One subset's measures for the ``hessian`` probe (its ``__call__`` loops over subsets):
eigenpairs with measured residuals, the trace, the SLQ density and the per-layer blocks."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..functional.hessian import HessianOperator, Krylov


def keyed_seed(root: int, *keys: object) -> int:
    """A 63-bit seed from the probe's root seed and keys (width, subset, purpose)."""
    rng = np.random.default_rng([root, *(zlib.crc32(str(k).encode()) for k in keys)])
    return int(rng.integers(2**63 - 1))


def _converged(values: np.ndarray, residual: np.ndarray, tol: float) -> np.ndarray:
    ok = np.isfinite(values) & np.isfinite(residual)
    flag = np.where(residual <= tol * np.abs(values), 1.0, 0.0)
    return np.where(ok, flag, np.nan)


def measure(op: HessianOperator, model: nn.Module, cfg: Any, root: int, width: int,
            subset: str, dev: torch.device) -> dict[str, Any]:
    """Every metric row of one subset except ``loss`` (``cfg``: ``HessianProbe.Config``)."""
    import torch

    from ..functional.hessian import (
        hutchinson_trace,
        lanczos_decomposition,
        power_eigenpairs,
        ritz_pairs,
        true_residuals,
    )
    from ..functional.hessian_spectrum import (
        broadened_density,
        hutchpp_trace,
        slq_nodes_weights,
    )

    def gen(purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(keyed_seed(root, width, subset, purpose))

    out: dict[str, Any] = {}
    krylov: Krylov | None = None
    if cfg.method == "lanczos" or cfg.density_runs:
        steps = max(cfg.iterations if cfg.method == "lanczos" else 0,
                    cfg.slq_steps if cfg.density_runs else 0)
        basis = op.dim * min(steps, op.dim) * 8
        if basis > cfg.max_basis_gb * 2**30:
            raise ConfigError(f"hessian: the model has {op.dim} parameters: a Lanczos "
                              f"basis of {basis / 2**30:.3g} GB exceeds "
                              f"hessian.max_basis_gb={cfg.max_basis_gb}")
    if cfg.method == "lanczos":
        krylov = lanczos_decomposition(op.matvec, op.dim, cfg.iterations, gen("eig"),
                                       device=dev)
        vals, _, vecs = ritz_pairs(krylov, cfg.k)
    else:
        vals, vecs = power_eigenpairs(op.matvec, op.dim, cfg.k, cfg.iterations, gen("eig"),
                                      device=dev, tol=cfg.tol)
    res = true_residuals(op.matmat, vals, vecs).numpy()
    out["eigenvalues"], out["eigen_residual"] = vals.numpy(), res
    out["converged"] = _converged(vals.numpy(), res, cfg.residual_tol)
    if cfg.trace_samples:
        if cfg.trace_method == "hutchpp":
            out["trace"], out["trace_stderr"], _ = hutchpp_trace(
                op.matmat, op.dim, cfg.trace_samples, gen("tr"), device=dev)
        else:
            out["trace"], out["trace_stderr"], _ = hutchinson_trace(
                op.matvec, op.dim, cfg.trace_samples, gen("tr"), device=dev)
    if cfg.density_runs:
        nodes = torch.full((cfg.density_runs, cfg.slq_steps), float("nan"),
                           dtype=torch.float64)
        weights = torch.zeros_like(nodes)
        g = gen("density")
        for run in range(cfg.density_runs):
            if run == 0 and krylov is not None and cfg.slq_steps == cfg.iterations:
                kr = krylov  # the eigenvalue run: a Gaussian start, as SLQ needs
            else:
                kr = lanczos_decomposition(op.matvec, op.dim, cfg.slq_steps, g, device=dev)
            theta, w = slq_nodes_weights(kr)
            nodes[run, :len(theta)], weights[run, :len(theta)] = theta, w
        grid, density, _ = broadened_density(nodes, weights, cfg.density_bins,
                                             cfg.density_sigma)
        out["density"], out["density_grid"] = density.numpy(), grid.numpy()
        out["density_nodes"], out["density_weights"] = nodes.numpy(), weights.numpy()
    if cfg.per_layer:
        out.update(_per_layer(op, model, cfg, gen, dev))
    return out


def _per_layer(op: HessianOperator, model: nn.Module, cfg: Any, gen: Any,
               dev: torch.device) -> dict[str, Any]:
    from ..functional.hessian_spectrum import (
        block_hutchinson,
        block_lanczos,
        block_residuals,
        layer_blocks,
    )

    blocks = [idx for _, idx in layer_blocks(model)]
    sizes = [sum(op.sizes[i] for i in idx) for idx in blocks]

    def matvec(vs: Any) -> Any:
        return op.block_matvec(blocks, vs)

    top, _, vecs = block_lanczos(matvec, sizes, cfg.iterations, gen("layer-eig"), device=dev)
    res = block_residuals(matvec, sizes, top, vecs).numpy()
    out: dict[str, Any] = {"layer_eigenvalue": top.numpy(), "layer_residual": res,
                           "layer_converged": _converged(top.numpy(), res, cfg.residual_tol)}
    if cfg.trace_samples:
        tr, se = block_hutchinson(matvec, sizes, cfg.trace_samples, gen("layer-tr"),
                                  device=dev)
        out["layer_trace"], out["layer_trace_stderr"] = tr.numpy(), se.numpy()
    return out
