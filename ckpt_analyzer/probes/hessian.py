"""The ``hessian`` probe: top eigenvalues and trace of the parameter-space Hessian of the loss.

Yao et al., "PyHessian" (2020); the maths is in :mod:`ckpt_analyzer.functional.hessian`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import ConfigError, check, check_choices, check_count
from ..errors import CkptError
from ._hessian_measure import measure
from .base import SUBSETS, Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


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
            "help": "Hessian-vector products of the trace estimator (0: no trace)"})
        trace_method: Literal["hutchinson", "hutchpp"] = field(default="hutchinson", metadata={
            "help": "hutchinson (Rademacher mean) or hutchpp (Hutch++, Meyer et al. 2021: "
                    "a third of the products deflate the top of the spectrum; needs >= 3)"})
        residual_tol: float = field(default=1e-3, metadata={
            "help": "an eigenvalue is converged when ||Hv - lambda v|| <= residual_tol*|lambda|"})
        density_runs: int = field(default=1, metadata={
            "help": "stochastic Lanczos quadrature runs of the eigenvalue density (0: none)"})
        density_steps: int = field(default=0, metadata={
            "help": "Lanczos steps per density run (0: iterations; then with method=lanczos "
                    "the first run is the eigenvalue run, no extra products)"})
        density_bins: int = field(default=500, metadata={
            "help": "bins of the stored density grid"})
        density_sigma: float = field(default=1e-5, metadata={
            "help": "Gaussian variance per unit of spectrum range (PyHessian's sigma_squared)"})
        per_layer: bool = field(default=False, metadata={
            "help": "also the top eigenvalue and trace of each conv/linear layer's diagonal "
                    "Hessian block (about 2.3x the time of the whole-model Lanczos + trace)"})
        max_basis_gb: float = field(default=2.0, metadata={
            "help": "largest Lanczos basis (iterations x parameters x 8 bytes) allowed, GB"})

        @property
        def slq_steps(self) -> int:
            """Lanczos steps per density run (``density_steps``, 0: ``iterations``)."""
            return self.density_steps or self.iterations

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
            check(self.trace_method in ("hutchinson", "hutchpp"),
                  f"hessian.trace_method: '{self.trace_method}' is not one of hutchinson, "
                  "hutchpp")
            check(self.trace_method != "hutchpp" or self.trace_samples in (0,) or
                  self.trace_samples >= 3,
                  f"hessian.trace_samples={self.trace_samples} must be >= 3 with "
                  "trace_method=hutchpp (a third sketches, a third deflates, the rest samples)")
            check(math.isfinite(self.residual_tol) and self.residual_tol > 0,
                  f"hessian.residual_tol must be > 0 (got {self.residual_tol})")
            check_count(self.density_runs, "hessian.density_runs", low=0)
            check_count(self.density_steps, "hessian.density_steps", low=0)
            check_count(self.density_bins, "hessian.density_bins")
            check(math.isfinite(self.density_sigma) and self.density_sigma > 0,
                  f"hessian.density_sigma must be > 0 (got {self.density_sigma})")
            check(self.max_basis_gb > 0,
                  f"hessian.max_basis_gb must be > 0 (got {self.max_basis_gb})")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._root = 0
        self._layers: list[str] | None = None

    def _index(self, ctx: Context, subset: str) -> np.ndarray:
        rng = self.rng(ctx, subset)
        pool = ctx.data.index(subset).detach().cpu().numpy().astype(np.int64)
        count = min(self.config.points, len(pool))
        if 0 < count < self.config.points:
            warnings.warn(f"hessian: subset '{subset}' has {len(pool)} points, fewer than "
                          f"points={self.config.points}; using all of them", stacklevel=3)
        return np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)

    def _reuses_eigen_run(self) -> bool:
        """Whether the first density run is the eigenvalue Lanczos run (no extra products)."""
        cfg = self.config
        return cfg.method == "lanczos" and cfg.slq_steps == cfg.iterations

    def cost(self, parameters: int, batches: int) -> tuple[int, int]:
        """``(basis bytes, Hessian-vector products per checkpoint)`` for a model with
        ``parameters`` entries and ``batches`` batches of points per subset (the per-layer
        block products are not counted: see :attr:`Config.per_layer`)."""
        from ..functional.hessian import lanczos_memory_bytes

        cfg = self.config
        basis = lanczos_memory_bytes(parameters, cfg.iterations) if cfg.method == "lanczos" \
            else cfg.k * parameters * 8
        if cfg.density_runs:
            basis = max(basis, lanczos_memory_bytes(parameters, cfg.slq_steps))
        density = cfg.slq_steps * (cfg.density_runs - int(self._reuses_eigen_run())) \
            if cfg.density_runs else 0
        per_subset = (cfg.iterations if cfg.method == "lanczos" else cfg.iterations * cfg.k) \
            + min(cfg.k, parameters) + cfg.trace_samples + density
        return basis, per_subset * len(cfg.subsets)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from ..functional.hessian_spectrum import layer_blocks

        cfg = self.config
        self._root = int(self.rng(ctx).integers(2**32))
        inputs: dict[str, np.ndarray] = {}
        for subset in cfg.subsets:
            inputs[f"{subset}/index"] = self._index(ctx, subset)
        batches = -(-cfg.points // max(1, ctx.batch_size))
        if cfg.per_layer:
            if ctx.build_model is None or not ctx.widths:
                raise CkptError("hessian.per_layer: needs the run's model factory and widths "
                                "to find the layers")
            self._layers = [n for n, _ in layer_blocks(ctx.build_model(ctx.widths[0]))]
            if not self._layers:
                raise CkptError("hessian.per_layer: the model has no conv or linear layer")
        if ctx.build_model is not None:
            for width in ctx.widths:
                model = ctx.build_model(width)
                dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
                inputs[f"w{width}/parameters"] = np.array([dim], dtype=np.int64)
                if cfg.per_layer:
                    names = [n for n, _ in layer_blocks(model)]
                    if names != self._layers:
                        raise CkptError(f"hessian.per_layer: width {width} has layers "
                                        f"{names}, width {ctx.widths[0]} {self._layers}: the "
                                        "layer axis needs the same modules at every width")
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
        coords: dict[str, list[Any]] = {"subset": list(cfg.subsets), "k": list(range(cfg.k))}
        metrics = {
            "eigenvalues": Metric(dims=("subset", "k"), description=(
                "top Hessian eigenvalues, descending (Lanczos: k largest; power: k largest "
                "in magnitude; PyHessian Alg. 1 / §III-C); NaN beyond the parameter count")),
            "eigen_residual": Metric(dims=("subset", "k"), description=(
                "residual ||Hv - lambda v|| of the returned unit vector (Ritz vector or last "
                "power vector), measured with one more float32 product of the undeflated H: "
                "some eigenvalue of H lies within it of lambda (not necessarily the k-th)")),
            "converged": Metric(dims=("subset", "k"), description=(
                "1 where eigen_residual <= residual_tol * |lambda|, else 0; NaN with no "
                "eigenvalue")),
            "trace": Metric(dims=("subset",), description=(
                f"{'Hutch++' if cfg.trace_method == 'hutchpp' else 'Hutchinson'} estimate of "
                "tr(H) (PyHessian Alg. 2; Meyer et al. 2021); NaN with trace_samples=0")),
            "trace_stderr": Metric(dims=("subset",), description=(
                "standard error of the trace estimate, std(z'Hz)/sqrt(samples) (Hutch++: of "
                "its Hutchinson part); NaN with fewer than 2 samples")),
            "loss": Metric(dims=("subset",), description=(
                "mean cross-entropy of the fixed points (the loss whose Hessian this is)")),
        }
        if cfg.density_runs:
            coords.update(density_bin=list(range(cfg.density_bins)),
                          density_run=list(range(cfg.density_runs)),
                          density_step=list(range(cfg.slq_steps)))
            metrics.update(
                density=Metric(dims=("subset", "density_bin"), description=(
                    "eigenvalue density of H by stochastic Lanczos quadrature (Ghorbani et al. "
                    "2019; PyHessian's density, Gaussian variance density_sigma * range), "
                    "mass per bin / bin width, at density_grid")),
                density_grid=Metric(dims=("subset", "density_bin"), description=(
                    "eigenvalue at the centre of each density bin")),
                density_nodes=Metric(dims=("subset", "density_run", "density_step"),
                                     description="Ritz values of each SLQ run (NaN: padding)"),
                density_weights=Metric(dims=("subset", "density_run", "density_step"),
                                       description=("squared first components of the "
                                                    "tridiagonal's eigenvectors (sum 1)")))
        if cfg.per_layer:
            assert self._layers is not None, "hessian.per_layer: outputs() needs prepare()"
            coords["layer"] = list(self._layers)
            lay = ("subset", "layer")
            metrics.update(
                layer_eigenvalue=Metric(dims=lay, description=(
                    "top eigenvalue of the layer's diagonal Hessian block (weight and bias of "
                    "the module), Lanczos of `iterations` steps")),
                layer_residual=Metric(dims=lay, description=(
                    "||H_bb v - lambda v|| of the block's Ritz vector (measured)")),
                layer_converged=Metric(dims=lay, description=(
                    "1 where layer_residual <= residual_tol * |lambda|, else 0")),
                layer_trace=Metric(dims=lay, description=(
                    "Hutchinson estimate of tr(H_bb) from trace_samples block vectors")),
                layer_trace_stderr=Metric(dims=lay, description=(
                    "standard error of layer_trace")))
        return Outputs(coords=coords, metrics=metrics)

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.hessian import HessianOperator, default_cache_bytes
        from ..functional.memory import HEADROOM
        from ._budget import footprint, within_budget

        cache: int | None = None  # the operator's default (2 GiB, a quarter of free CUDA memory)
        if ctx.max_memory is not None:
            # the budget less the vectors (Lanczos basis or eigenvectors, and about four
            # more parameter-sized float64 vectors of the products and the trace) is the
            # batches'; what a live chunk's graph leaves of it may keep graphs
            dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
            vectors = self.cost(dim, 1)[0] + 4 * dim * 8
            ctx = dataclasses.replace(ctx, max_memory=max(0, int(ctx.max_memory) - vectors))
        ctx = within_budget(self, model, ctx, order=2)
        if ctx.max_memory is not None:
            live = footprint(self, model, ctx, 2).at(ctx.batch_size) * HEADROOM
            cache = max(0, min(default_cache_bytes(ctx.device), int(ctx.max_memory - live)))
        assert self.inputs is not None
        cfg = self.config
        width = ctx.checkpoint.width if ctx.checkpoint is not None else 0
        out = {name: np.full(self.outputs().shape(name), np.nan)
               for name in self.outputs().metrics}
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
            op = HessianOperator(model, x, y, ctx.batch_size, cache_bytes=cache)
            if op.dim == 0:
                continue
            out["loss"][row] = op.loss()
            for name, value in measure(op, model, cfg, self._root, width, subset, dev).items():
                out[name][row] = value
            op.release()  # the kept graphs of this subset, before the next one's
        return out
