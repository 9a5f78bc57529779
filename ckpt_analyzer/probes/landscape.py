"""The ``landscape`` probe: loss slices along filter-normalized random directions, and the loss
along the straight path to the width's last checkpoint.

Li et al., "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018), §3-4; barrier
height as Frankle et al. (ICML 2020); the maths is in :mod:`ckpt_analyzer.functional.landscape`.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import check, check_choices, check_count
from ..errors import CkptError
from .base import SUBSETS, Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: ``functional.landscape.BN_MODES``, spelled here so that importing the probe needs no torch
BN_MODES = ("reset", "interpolate")


class LandscapeProbe(Probe):
    """Loss and error on slices ``θ + α δ (+ β η)`` and along ``(1 − t) θ + t θ_last``.

    Directions: for each width, ``directions`` (1 or 2) standard Gaussian directions over the
    model's trainable parameters (``named_parameters()`` order) are drawn once per run from a
    seed keyed by (run seed, probe, width), so every epoch of a width is sliced along the same
    raw directions whatever order the checkpoints come in. At each checkpoint they are filter
    normalized to its weights (Li et al. §4: each filter of δ scaled to the norm of the
    matching filter of θ; 1-D entries, i.e. batch-norm parameters and biases, zeroed with
    ``ignore_bn_bias``, else copied from θ), which makes slices of checkpoints with different
    weight scales comparable.
    ``prepare`` builds each width's model (``ctx.build_model``) to draw them, and stores them
    (``store_directions``) as ``landscape/inputs/w<width>/direction`` (float32,
    ``(directions, parameters)``) with ``w<width>/names`` (parameter names, in order); a width
    that appears only later (not in ``ctx.widths``) draws the same directions lazily.
    Parameter shapes differ across widths, hence one set per width; a checkpoint whose
    parameters do not match its width's directions is an error.

    Grid: ``steps`` points ``linspace(-r, r, steps)`` per direction (a ``steps × steps``
    product grid with two directions). At each grid point the loss (mean cross-entropy with the
    labels trained on; ``test`` with the test labels) and the error are evaluated on
    ``points`` fixed points per subset, all subsets in one stream of batches of
    ``ctx.batch_size``, through :func:`torch.func.functional_call` (one model, weights never
    written).

    Batch-norm statistics (``bn``): with ``reset`` (the default) the running statistics of the
    net's batch-norm layers are re-estimated at every grid point and every point of the
    segment, ends included (:func:`~ckpt_analyzer.functional.landscape.reset_batch_norm`: train
    mode, ``momentum=None``, a no-grad pass over ``bn_samples`` fixed training inputs in
    batches of ``ctx.forward_batch``), as the linear-mode-connectivity literature does; with
    ``interpolate`` the slices keep the checkpoint's statistics (Li et al.'s code) and the
    segment interpolates them between its ends. Nets without batch norm get the same numbers
    either way. The metric ``bn_reset`` says per checkpoint whether statistics were
    re-estimated (1) or not (0: ``interpolate``, or no batch norm).

    Barrier: with ``barrier`` on, the loss and error at ``barrier_steps`` points ``t`` in
    [0, 1] of the segment from the checkpoint (t = 0) to the width's last checkpoint (t = 1),
    interpolating parameters (and, with ``bn=interpolate``, batch-norm running statistics),
    and the barrier height ``max_t [L(t) − ((1 − t) L(0) + t L(1))]``. The last checkpoint is
    the runner's (``ctx.final_state``): the largest epoch of the width in the run's own list of
    checkpoints (contract names or ``--pattern`` alike, module prefixes stripped), read once
    per width at the first checkpoint of that width this probe measures; its epoch is the
    metric ``barrier_epoch``. Without one (a context that gives no ``final_state``, or a file
    that cannot be read) the barrier metrics are NaN and a warning says why. On a run still
    training, "last" is the last on disk when the width is first measured; ``barrier_epoch``
    records which (``run --follow`` waits for the width's ``done`` marker before measuring this
    probe, see :meth:`~ckpt_analyzer.probes.base.Probe.needs_finished_width`).

    Fixed inputs: ``<subset>/index`` (training positions, test positions for ``test``),
    ``bn/index`` (the training positions of the statistics, ``bn=reset`` only) and the
    directions above. An empty subset (``noisy`` without label noise) gives NaN rows.
    """

    name = "landscape"
    version = "1"
    description = ("loss along filter-normalized random directions and along the segment to the "
                   "width's last checkpoint (Li et al. 2018)")

    @dataclass(frozen=True)
    class Config:
        directions: int = field(default=1, metadata={
            "help": "random directions: 1 (a curve) or 2 (a surface, steps x steps points)"})
        steps: int = field(default=21, metadata={
            "help": "grid points per direction (Li et al. plot 51; 21 keeps a 2-D surface at "
                    "441 evaluations per checkpoint, 2,601 take ~20 min on a CPU core)"})
        r: float = field(default=1.0, metadata={"help": "grid range [-r, r] of each coordinate"})
        points: int = field(default=512, metadata={"help": "points per subset"})
        subsets: tuple[str, ...] = field(default=SUBSETS, metadata={
            "help": "subsets: train, clean, noisy, test"})
        ignore_bn_bias: bool = field(default=True, metadata={
            "help": "zero the direction on 1-D parameters (batch norm, biases); false: copy "
                    "the weights there (Li et al.'s alternative)"})
        barrier: bool = field(default=True, metadata={
            "help": "also the loss along the segment to the width's last checkpoint"})
        barrier_steps: int = field(default=11, metadata={
            "help": "points t in [0, 1] on that segment (ends included)"})
        bn: str = field(default="reset", metadata={
            "help": "batch-norm running statistics at each grid/segment point: reset "
                    "(re-estimated there on bn_samples training inputs) or interpolate (the "
                    "checkpoint's on the slices, interpolated along the segment); no effect "
                    "on nets without batch norm"})
        bn_samples: int = field(default=1024, metadata={
            "help": "training inputs the batch-norm statistics are re-estimated on (bn=reset; "
                    "fewer if the training set is smaller)"})
        store_directions: bool = field(default=True, metadata={
            "help": "store the raw directions in the cube (false: only their names; they are "
                    "re-drawn from the seed)"})

        def __post_init__(self) -> None:
            object.__setattr__(self, "subsets", tuple(self.subsets))
            check(self.directions in (1, 2),
                  f"landscape.directions must be 1 or 2 (got {self.directions})")
            check_count(self.steps, "landscape.steps", low=2)
            check(math.isfinite(self.r) and self.r > 0, f"landscape.r must be > 0 (got {self.r})")
            check(self.points >= 1, f"landscape.points must be >= 1 (got {self.points})")
            check_choices(self.subsets, SUBSETS, "landscape.subsets")
            check_count(self.barrier_steps, "landscape.barrier_steps", low=2)
            check(self.bn in BN_MODES, f"landscape.bn must be one of {', '.join(BN_MODES)} "
                  f"(got {self.bn!r})")
            check_count(self.bn_samples, "landscape.bn_samples", low=1)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._root = 0
        self._dirs: dict[int, tuple[list[str], np.ndarray]] = {}
        self._target: tuple[int, int | None, dict[str, torch.Tensor] | None] | None = None
        self._warned: set[str] = set()

    def needs_finished_width(self) -> bool:
        return bool(self.config.barrier)  # the segment ends at the width's last checkpoint

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_target"] = None  # a device state dict: reloaded where it is needed
        return state

    # ------------------------------------------------------------------ fixed inputs

    def _draw(self, width: int, model: nn.Module) -> tuple[list[str], np.ndarray]:
        """Raw Gaussian directions ``(directions, P)`` for ``width``, keyed by (seed, width).

        Only the last width's are kept here (a sweep of big models would otherwise hold every
        width's): the stored fixed inputs are reused when they hold them, else they are drawn
        again from the same seed (the same numbers)."""
        from ..functional.landscape import draw_direction

        if width in self._dirs:
            return self._dirs[width]
        stored = self.inputs or {}
        if f"w{width}/direction" in stored and f"w{width}/names" in stored:
            self._dirs = {width: ([str(n) for n in stored[f"w{width}/names"].tolist()],
                                  stored[f"w{width}/direction"])}
            return self._dirs[width]
        named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
        rng = np.random.default_rng([self._root, zlib.crc32(f"w{width}".encode())])
        rows = []
        for _ in range(self.config.directions):
            d = draw_direction(dict(named), rng)
            rows.append(np.concatenate([d[n].ravel() for n, _ in named]) if named
                        else np.zeros(0, np.float32))
        self._dirs = {width: ([n for n, _ in named], np.stack(rows).astype(np.float32))}
        return self._dirs[width]

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        cfg = self.config
        self._root = int(self.rng(ctx).integers(2**32))
        self._dirs = {}
        self._target = None
        self.inputs = None  # an earlier prepare's directions are not this one's
        inputs: dict[str, np.ndarray] = {}
        for subset in cfg.subsets:
            rng = self.rng(ctx, subset)
            pool = ctx.data.index(subset).detach().cpu().numpy().astype(np.int64)
            count = min(cfg.points, len(pool))
            if 0 < count < cfg.points:
                warnings.warn(f"landscape: subset '{subset}' has {len(pool)} points, fewer than "
                              f"points={cfg.points}; using all of them", stacklevel=2)
            inputs[f"{subset}/index"] = np.sort(
                rng.choice(pool, size=count, replace=False)).astype(np.int64)
        if cfg.bn == "reset":
            pool = ctx.data.index("train").detach().cpu().numpy().astype(np.int64)
            count = min(cfg.bn_samples, len(pool))
            inputs["bn/index"] = np.sort(self.rng(ctx, "bn").choice(
                pool, size=count, replace=False)).astype(np.int64)
        if ctx.build_model is not None:
            for width in ctx.widths:
                names, dirs = self._draw(width, ctx.build_model(width))
                inputs[f"w{width}/names"] = np.array(names, dtype=str)
                if cfg.store_directions:
                    inputs[f"w{width}/direction"] = dirs
        return inputs

    def outputs(self) -> Outputs:
        cfg = self.config
        alphas = np.linspace(-cfg.r, cfg.r, cfg.steps).tolist()
        grid = ("subset", "alpha") if cfg.directions == 1 else ("subset", "alpha", "beta")
        coords: dict[str, list[Any]] = {"subset": list(cfg.subsets), "alpha": alphas}
        if cfg.directions == 2:
            coords["beta"] = alphas
        metrics = {
            "loss": Metric(dims=grid, description=(
                "mean cross-entropy at theta + alpha delta (+ beta eta), filter-normalized "
                "directions (Li et al. eq. 1-2, §4)")),
            "error": Metric(dims=grid, description="classification error on the same grid"),
            "bn_reset": Metric(description=(
                "1: batch-norm running statistics re-estimated at every point (bn=reset); "
                "0: the checkpoint's / interpolated (bn=interpolate, or no batch norm)")),
        }
        if cfg.barrier:
            coords["t"] = np.linspace(0.0, 1.0, cfg.barrier_steps).tolist()
            metrics.update({
                "barrier_loss": Metric(dims=("subset", "t"), description=(
                    "mean cross-entropy at (1 - t) theta + t theta_last (BN statistics "
                    "re-estimated or interpolated: bn_reset); NaN where the last checkpoint is "
                    "unavailable")),
                "barrier_error": Metric(dims=("subset", "t"), description=(
                    "classification error along the same segment")),
                "barrier": Metric(dims=("subset",), description=(
                    "barrier height max_t [L(t) - ((1 - t) L(0) + t L(1))] (Frankle et al. "
                    "2020)")),
                "barrier_epoch": Metric(description=(
                    "epoch of the width's last checkpoint, the segment's end (NaN: not found)")),
            })
        return Outputs(coords=coords, metrics=metrics)

    # ------------------------------------------------------------------ measurement

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _last_state(self, ctx: Context) -> tuple[int | None, dict[str, torch.Tensor] | None]:
        """(epoch, state) of the checkpoint's width's last checkpoint (``ctx.final_state``),
        cached per width; ``(None, None)`` with a warning where it is unavailable."""
        ref = ctx.checkpoint
        if ref is None:
            return None, None
        if self._target is not None and self._target[0] == ref.width:
            return self._target[1], self._target[2]
        epoch: int | None = None
        state = None
        if ctx.final_state is None:
            self._warn("final", "landscape: the context gives no final_state (the width's last "
                       "checkpoint); barrier metrics are NaN")
        else:
            try:
                got = ctx.final_state(ref.width)
                if got is None:
                    self._warn(f"w{ref.width}", f"landscape: width {ref.width} has no "
                               "checkpoint in the run's list; barrier metrics are NaN")
                else:
                    epoch = int(got[0])
                    state = {k: v.to(ctx.device) for k, v in got[1].items()}
            except CkptError as exc:
                self._warn(f"w{ref.width}", f"landscape: width {ref.width}: cannot read its last "
                           f"checkpoint ({exc}); barrier metrics are NaN")
                state, epoch = None, None
        self._target = (ref.width, epoch, state)
        return epoch, state

    def _points(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        assert self.inputs is not None
        xs, ys, gs = [], [], []
        for row, subset in enumerate(self.config.subsets):
            index = torch.as_tensor(self.inputs[f"{subset}/index"], dtype=torch.long)
            x, y = ((ctx.data.x_test, ctx.data.y_test) if subset == "test"
                    else (ctx.data.x_train, ctx.data.y_train))
            xs.append(x[index.to(x.device)].to(ctx.device))
            ys.append(y[index.to(y.device)].to(ctx.device).long())
            gs.append(torch.full((len(index),), row, dtype=torch.long, device=ctx.device))
        return torch.cat(xs), torch.cat(ys), torch.cat(gs)

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.landscape import (
            barrier_height,
            batch_norm_buffers,
            filter_normalize,
            grid_losses,
            interpolate_states,
            model_loss_error,
            slice_grid,
        )
        from ._budget import within_budget

        ctx = within_budget(self, model, ctx)
        cfg = self.config
        width = ctx.checkpoint.width if ctx.checkpoint is not None else 0
        names, raw = self._draw(width, model)
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        sizes = [p.numel() for p in params.values()]
        if list(params) != names or sum(sizes) != raw.shape[1]:
            raise CkptError(f"landscape: the checkpoint's parameters ({len(params)} tensors, "
                            f"{sum(sizes)} entries) differ from the directions drawn for width "
                            f"{width} ({len(names)} tensors, {raw.shape[1]} entries)",
                            ctx.checkpoint.path if ctx.checkpoint is not None else None)
        s = len(cfg.subsets)
        x, y, groups = self._points(ctx)
        model.eval()
        bn_x = None
        if cfg.bn == "reset" and batch_norm_buffers(model):
            assert self.inputs is not None
            index = torch.as_tensor(self.inputs["bn/index"], dtype=torch.long)
            bn_x = ctx.data.x_train[index.to(ctx.data.x_train.device)].to(ctx.device)
        evaluate = model_loss_error(model, x, y, ctx.forward_batch, groups, s, bn_inputs=bn_x)
        dirs = []
        for row in raw:
            flat = torch.as_tensor(row).to(ctx.device)
            d = {n: c.view_as(p).to(p.dtype)
                 for (n, p), c in zip(params.items(), flat.split(sizes))}
            dirs.append(filter_normalize(d, params, cfg.ignore_bn_bias))
        alphas = torch.linspace(-cfg.r, cfg.r, cfg.steps, dtype=torch.float64)
        loss, err = grid_losses(evaluate, params, dirs, slice_grid(alphas, cfg.directions))
        shape = (cfg.steps,) * cfg.directions
        out = {"loss": loss.T.reshape(s, *shape).numpy(),
               "error": err.T.reshape(s, *shape).numpy(),
               "bn_reset": np.array(float(bn_x is not None))}
        if cfg.barrier:
            ts = torch.linspace(0.0, 1.0, cfg.barrier_steps, dtype=torch.float64)
            bl = torch.full((s, cfg.barrier_steps), math.nan, dtype=torch.float64)
            be = bl.clone()
            epoch, last = self._last_state(ctx)
            if last is not None:
                current = {k: v.detach() for k, v in model.state_dict().items()}
                if set(last) != set(current) or any(
                        last[k].shape != current[k].shape for k in current):
                    raise CkptError(f"landscape: the last checkpoint of width {width} (epoch "
                                    f"{epoch}) does not match this checkpoint's tensors")
                for j, t in enumerate(ts.tolist()):
                    l_t, e_t = evaluate(interpolate_states(current, last, t))
                    bl[:, j], be[:, j] = l_t, e_t
            out.update({
                "barrier_loss": bl.numpy(), "barrier_error": be.numpy(),
                "barrier": barrier_height(ts, bl).numpy(),
                "barrier_epoch": np.array(np.nan if epoch is None else float(epoch)),
            })
        return out
