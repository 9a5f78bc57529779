"""The ``hessian`` probe: top eigenvalues and trace of the parameter-space Hessian of the loss.

Yao et al., "PyHessian" (2020); the maths is in :mod:`ckpt_analyzer.functional.hessian`.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import ConfigError, check, check_choices, check_count
from .base import SUBSETS, Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def _keyed_seed(root: int, *keys: object) -> int:
    """A 63-bit seed from the probe's root seed and keys (width, subset, purpose)."""
    rng = np.random.default_rng([root, *(zlib.crc32(str(k).encode()) for k in keys)])
    return int(rng.integers(2**63 - 1))


class HessianProbe(Probe):
    """Top-k eigenvalues and trace of the Hessian of the training loss w.r.t. the parameters.

    For each subset (default ``train`` and ``test``: each subset costs a full set of
    products, ~1.1 s per subset for mcnn width 8 on one CPU core), ``points`` points are drawn
    once per run (``train``, ``clean``, ``noisy``
    from the training split with the labels trained on, so ``noisy`` uses its corrupted
    labels; ``test`` from the test split). The loss is their mean cross-entropy with the model
    in eval mode (batch norm from running statistics); the Hessian is taken w.r.t. every
    trainable parameter (batch-norm affine parameters included), through Hessian-vector
    products summed over batches of ``ctx.batch_size`` points.

    * ``eigenvalues`` (subset, k): the k largest eigenvalues, by Lanczos with full
      reorthogonalization (``method=lanczos``, ``iterations`` products, k largest algebraic
      Ritz values) or by power iteration with deflation (``method=power``, at most
      ``iterations`` products per eigenvalue, k largest in magnitude, as PyHessian);
      ``eigen_residual`` (subset, k): the Ritz residual bound ``|β_m s_{m,i}|`` (Lanczos) or
      ``‖Hv − λv‖`` (power); in exact arithmetic, so below the products' own float32
      rounding it only says "converged".
    * ``trace`` and ``trace_stderr`` (subset): Hutchinson's estimate from ``trace_samples``
      Rademacher vectors and its standard error (``std / sqrt(samples)``).
    * ``loss`` (subset): the mean cross-entropy the Hessian is taken of.

    The random vectors (Lanczos start, power-iteration starts, Rademacher probes) are drawn on
    the CPU from seeds keyed by (run seed, width, subset): the same for every epoch of a width
    and independent of the order of checkpoints. Fixed inputs (``hessian/inputs/``):
    ``<subset>/index`` and ``w<width>/parameters`` (the number of Hessian rows per width).

    An empty subset (``noisy`` without label noise) gives NaN rows; eigenvalues beyond the
    number of parameters are NaN. A Lanczos basis larger than ``max_basis_gb`` is refused
    before any checkpoint is read, naming its cost (use ``method=power``, or fewer
    ``iterations``).
    """

    name = "hessian"
    version = "1"
    description = ("top eigenvalues (Lanczos) and Hutchinson trace of the parameter-space "
                   "Hessian of the loss (PyHessian)")

    @dataclass(frozen=True)
    class Config:
        points: int = field(default=256, metadata={"help": "points per subset"})
        subsets: tuple[str, ...] = field(default=("train", "test"), metadata={
            "help": "subsets: train, clean, noisy, test (each costs as much as train)"})
        k: int = field(default=3, metadata={"help": "number of top eigenvalues"})
        method: Literal["lanczos", "power"] = field(default="lanczos", metadata={
            "help": "lanczos (full reorthogonalization, one Krylov space) or power "
                    "(power iteration with deflation)"})
        iterations: int = field(default=40, metadata={
            "help": "Lanczos steps (Hessian-vector products), or the most power iterations "
                    "per eigenvalue"})
        tol: float = field(default=1e-4, metadata={
            "help": "power method: stop when the eigenvalue changes by less than this, "
                    "relatively"})
        trace_samples: int = field(default=32, metadata={
            "help": "Rademacher vectors of Hutchinson's trace estimator (0: no trace)"})
        max_basis_gb: float = field(default=2.0, metadata={
            "help": "largest Lanczos basis (iterations x parameters x 8 bytes) allowed, GB"})

        def __post_init__(self) -> None:
            object.__setattr__(self, "subsets", tuple(self.subsets))
            check(self.points >= 1, f"hessian.points must be >= 1 (got {self.points})")
            check_choices(self.subsets, SUBSETS, "hessian.subsets")
            check_count(self.k, "hessian.k")
            check(self.method in ("lanczos", "power"),
                  f"hessian.method: '{self.method}' is not one of lanczos, power")
            check_count(self.iterations, "hessian.iterations")
            check(self.method != "lanczos" or self.iterations >= self.k,
                  f"hessian.iterations={self.iterations} must be >= k={self.k} with Lanczos "
                  "(k Ritz values need at least k steps; use ~10k or more)")
            check(math.isfinite(self.tol) and self.tol > 0,
                  f"hessian.tol must be > 0 (got {self.tol})")
            check_count(self.trace_samples, "hessian.trace_samples", low=0)
            check(self.max_basis_gb > 0,
                  f"hessian.max_basis_gb must be > 0 (got {self.max_basis_gb})")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._root = 0

    def _index(self, ctx: Context, subset: str) -> np.ndarray:
        rng = self.rng(ctx, subset)
        pool = ctx.data.index(subset).detach().cpu().numpy().astype(np.int64)
        count = min(self.config.points, len(pool))
        if 0 < count < self.config.points:
            warnings.warn(f"hessian: subset '{subset}' has {len(pool)} points, fewer than "
                          f"points={self.config.points}; using all of them", stacklevel=3)
        return np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)

    def cost(self, parameters: int, batches: int) -> tuple[int, int]:
        """``(basis bytes, Hessian-vector products per checkpoint)`` for a model with
        ``parameters`` entries and ``batches`` batches of points per subset."""
        from ..functional.hessian import lanczos_memory_bytes

        cfg = self.config
        basis = lanczos_memory_bytes(parameters, cfg.iterations) if cfg.method == "lanczos" \
            else cfg.k * parameters * 8
        per_subset = (cfg.iterations if cfg.method == "lanczos" else cfg.iterations * cfg.k) \
            + cfg.trace_samples
        return basis, per_subset * len(cfg.subsets)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        cfg = self.config
        self._root = int(self.rng(ctx).integers(2**32))
        inputs: dict[str, np.ndarray] = {}
        for subset in cfg.subsets:
            inputs[f"{subset}/index"] = self._index(ctx, subset)
        batches = -(-cfg.points // max(1, ctx.batch_size))
        if ctx.build_model is not None:
            for width in ctx.widths:
                model = ctx.build_model(width)
                dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
                inputs[f"w{width}/parameters"] = np.array([dim], dtype=np.int64)
                basis, hvps = self.cost(dim, batches)
                store = "Lanczos basis" if cfg.method == "lanczos" else "set of eigenvectors"
                what = (f"hessian: width {width} has {dim} parameters; each checkpoint costs "
                        f"{hvps} Hessian-vector products (each a double backward over "
                        f"{batches} batch(es) of up to {cfg.points} points) and a "
                        f"{basis / 2**30:.3g} GB {store}")
                if cfg.method == "lanczos" and basis > cfg.max_basis_gb * 2**30:
                    raise ConfigError(f"{what}, more than hessian.max_basis_gb="
                                      f"{cfg.max_basis_gb}: lower hessian.iterations, use "
                                      "hessian.method=power (k vectors only), or raise "
                                      "hessian.max_basis_gb")
                if dim < cfg.k:
                    warnings.warn(f"hessian: width {width} has {dim} parameters, fewer than "
                                  f"k={cfg.k}; the extra eigenvalues are NaN", stacklevel=2)
                log.info(what)
        return inputs

    def outputs(self) -> Outputs:
        cfg = self.config
        return Outputs(
            coords={"subset": list(cfg.subsets), "k": list(range(cfg.k))},
            metrics={
                "eigenvalues": Metric(dims=("subset", "k"), description=(
                    "top Hessian eigenvalues, descending (Lanczos: k largest; power: k largest "
                    "in magnitude; PyHessian Alg. 1 / §III-C); NaN beyond the parameter count")),
                "eigen_residual": Metric(dims=("subset", "k"), description=(
                    "error bound of each eigenvalue: Lanczos |beta_m s_m,i|, power "
                    "||Hv - lambda v||")),
                "trace": Metric(dims=("subset",), description=(
                    "Hutchinson estimate of tr(H) (PyHessian Alg. 2); NaN with "
                    "trace_samples=0")),
                "trace_stderr": Metric(dims=("subset",), description=(
                    "standard error of the trace estimate, std(z'Hz)/sqrt(samples); NaN with "
                    "fewer than 2 samples")),
                "loss": Metric(dims=("subset",), description=(
                    "mean cross-entropy of the fixed points (the loss whose Hessian this is)")),
            },
        )

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.hessian import (
            HessianOperator,
            hutchinson_trace,
            lanczos,
            power_iteration,
        )

        assert self.inputs is not None
        cfg = self.config
        width = ctx.checkpoint.width if ctx.checkpoint is not None else 0
        s, k = len(cfg.subsets), cfg.k
        eig = np.full((s, k), np.nan)
        res = np.full((s, k), np.nan)
        trace = np.full(s, np.nan)
        stderr = np.full(s, np.nan)
        loss = np.full(s, np.nan)
        dev = torch.device(ctx.device)
        model.eval()
        for row, subset in enumerate(cfg.subsets):
            index = torch.as_tensor(self.inputs[f"{subset}/index"], dtype=torch.long)
            if len(index) == 0:
                continue
            if subset == "test":
                x, y = ctx.data.x_test, ctx.data.y_test
            else:
                x, y = ctx.data.x_train, ctx.data.y_train
            x = x[index.to(x.device)].to(dev)
            y = y[index.to(y.device)].to(dev).long()
            op = HessianOperator(model, x, y, ctx.batch_size)
            if op.dim == 0:
                continue
            loss[row] = op.loss()
            if cfg.method == "lanczos":
                basis = op.dim * min(cfg.iterations, op.dim) * 8
                if basis > cfg.max_basis_gb * 2**30:
                    raise ConfigError(f"hessian: the model has {op.dim} parameters: a Lanczos "
                                      f"basis of {basis / 2**30:.3g} GB exceeds "
                                      f"hessian.max_basis_gb={cfg.max_basis_gb}")
                gen = torch.Generator().manual_seed(_keyed_seed(self._root, width, subset, "eig"))
                vals, r = lanczos(op.matvec, op.dim, k, cfg.iterations, gen, device=dev)
            else:
                gen = torch.Generator().manual_seed(_keyed_seed(self._root, width, subset, "eig"))
                vals, r = power_iteration(op.matvec, op.dim, k, cfg.iterations, gen,
                                          device=dev, tol=cfg.tol)
            eig[row], res[row] = vals.numpy(), r.numpy()
            if cfg.trace_samples:
                gen = torch.Generator().manual_seed(_keyed_seed(self._root, width, subset, "tr"))
                trace[row], stderr[row], _ = hutchinson_trace(op.matvec, op.dim,
                                                              cfg.trace_samples, gen, device=dev)
            op.release()  # the kept graphs of this subset, before the next one's
        return {"eigenvalues": eig, "eigen_residual": res, "trace": trace,
                "trace_stderr": stderr, "loss": loss}
