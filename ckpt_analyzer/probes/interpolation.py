"""The ``interpolation`` probe: smoothness of the classifier along paths between test images.

Fridovich-Keil et al., "Spectral Bias in Practice" (NeurIPS 2022), §3.2 and App. A.3; the
maths is in :mod:`ckpt_analyzer.functional.interpolation`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import check, check_choices, check_count
from .base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS = ("within", "between")


def _within_pairs(rng: np.random.Generator, members: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct unordered pairs of ``members`` (all pairs if fewer), random order."""
    n = len(members)
    total = n * (n - 1) // 2
    k = min(count, total)
    lin = rng.choice(total, size=k, replace=False)
    # Linear index over the strict upper triangle -> (i, j), i < j, in exact integer arithmetic.
    row_start = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])
    i = np.searchsorted(row_start, lin, side="right") - 1
    j = lin - row_start[i] + i + 1
    swap = rng.random(k) < 0.5  # which image the path starts from
    first, second = np.where(swap, j, i), np.where(swap, i, j)
    return np.stack([members[first], members[second]], axis=1)


def _between_pairs(rng: np.random.Generator, a: np.ndarray, b: np.ndarray,
                   count: int) -> np.ndarray:
    """``count`` distinct pairs of one image of ``a`` and one of ``b`` (all pairs if fewer);
    the path starts from either class at random."""
    total = len(a) * len(b)
    k = min(count, total)
    lin = rng.choice(total, size=k, replace=False)
    first, second = a[lin // len(b)], b[lin % len(b)]
    swap = rng.random(k) < 0.5  # which class the path starts from
    return np.stack([np.where(swap, second, first), np.where(swap, first, second)], axis=1)


class InterpolationProbe(Probe):
    """Cumulative difference norm of the softmax along straight paths between test images.

    Pairs are drawn once per run from the test split: ``within``: ``pairs`` distinct pairs of
    each class; ``between``: ``pairs`` pairs of each unordered pair of classes, each path
    starting from either class at random (version 1 always started from the lower class). A
    class with fewer than 2 test images is skipped with a warning. Each path
    ``x(t) = (1 - t/d) x0 + (t/d) x1``, ``t = 0, step, ... < d = ||x1 - x0||`` runs in the
    normalized input space; ``d_t = ||softmax(f(x(t))) - softmax(f(x0))||_2``.

    Per checkpoint, pairs where the model mispredicts either end point (against the true test
    labels) are excluded. Outputs per kind: ``cdn`` — ``d_t`` binned by ``lambda = t/d`` into
    ``bins`` equal bins of [0, 1) (coordinate: bin centres), every path weighted equally in each
    bin; ``paths`` — the number of paths included; ``tv`` — mean over included paths of
    ``sum_t ||y_{t+1} - y_t||_2``. With no path included, ``cdn`` and ``tv`` are NaN.

    Default ``step="auto"``: the authors' Δ = 1 was chosen on CIFAR-10 (normalized 3×32×32
    images, RMS norm 55.4); on 8×8 digits it leaves 7-9 samples per path, fewer than the 20 λ
    bins, so each bin averages a different subset of paths. ``auto`` resolves to
    ``1 × N / N_CIFAR-10`` with N the RMS norm of the run's training images in the normalized
    input space (:mod:`ckpt_analyzer.probes.scale`; 3 significant digits): 1.0 on CIFAR-10,
    0.144 on digits (median 57 samples per path instead of 9). The resolved number is the ``step``
    stored in the cube's config; an explicit number is used as given.

    Fixed inputs: ``<kind>/pairs``, int64 ``(n, 2)`` positions in the test split.
    """

    name = "interpolation"
    version = "2"  # 2: between-class paths start from either class at random
    description = "softmax change along straight paths between test images (Fridovich-Keil et al.)"

    @dataclass(frozen=True)
    class Config:
        pairs: int = field(default=200, metadata={
            "help": "pairs per class (within) and per unordered class pair (between)"})
        step: float | Literal["auto"] = field(default="auto", metadata={
            "help": "spacing of the samples along a path, in normalized input space; auto: 1 "
                    "scaled by the dataset's RMS image norm over CIFAR-10's (1 on CIFAR-10)"})
        bins: int = field(default=20, metadata={"help": "bins of lambda = t/d in [0, 1)"})
        kinds: tuple[str, ...] = field(default=KINDS, metadata={"help": "within, between"})

        def __post_init__(self) -> None:
            check_count(self.pairs, "interpolation.pairs")
            check(self.step == "auto" or (not isinstance(self.step, (str, bool))
                                          and isinstance(self.step, (int, float))
                                          and self.step > 0 and math.isfinite(self.step)),
                  f"interpolation.step must be a finite number > 0 or auto (got {self.step})")
            check_count(self.bins, "interpolation.bins")
            check_choices(self.kinds, KINDS, "interpolation.kinds", noun="kind")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._step: float | None = None if self.config.step == "auto" else float(self.config.step)

    #: The authors' step on CIFAR-10 (Fridovich-Keil et al.), what ``step="auto"`` scales.
    paper_step = 1.0

    def resolved_config(self) -> Any:
        if self._step is None:
            raise RuntimeError("interpolation: resolved_config() needs prepare(ctx) first")
        return dataclasses.replace(self.config, step=self._step)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from .scale import resolve_auto

        cfg = self.config
        if cfg.step == "auto":
            self._step = resolve_auto(self.paper_step, ctx.data, "input")
        labels = ctx.data.y_test.detach().cpu().numpy()
        members = {c: np.flatnonzero(labels == c) for c in range(ctx.data.num_classes)}
        usable = []
        for c, m in members.items():
            if len(m) < 2:
                warnings.warn(f"interpolation: class {c} has {len(m)} test image(s), fewer than "
                              "2; skipping it", stacklevel=2)
            else:
                usable.append(c)
        inputs: dict[str, np.ndarray] = {}
        for kind in cfg.kinds:
            rng = self.rng(ctx, kind)
            if kind == "within":
                chunks = [_within_pairs(rng, members[c], cfg.pairs) for c in usable]
            else:
                chunks = [_between_pairs(rng, members[a], members[b], cfg.pairs)
                          for a, b in itertools.combinations(usable, 2)]
            pairs = np.concatenate(chunks) if chunks else np.zeros((0, 2))
            inputs[f"{kind}/pairs"] = pairs.astype(np.int64).reshape(-1, 2)
        return inputs

    def outputs(self) -> Outputs:
        from ..functional.interpolation import lambda_centres

        return Outputs(
            coords={"kind": list(self.config.kinds), "lambda": lambda_centres(self.config.bins)},
            metrics={
                "cdn": Metric(dims=("kind", "lambda"),
                              description="mean over paths of ||y_t - y_0||_2 per lambda bin"),
                "paths": Metric(dims=("kind",),
                                description="paths whose end points are both predicted right"),
                "tv": Metric(dims=("kind",),
                             description="mean over paths of sum_t ||y_{t+1} - y_t||_2"),
            },
        )

    def _pairs(self, kind: str, ctx: Context) -> torch.Tensor:
        import torch

        assert self.inputs is not None
        pairs = self.inputs[f"{kind}/pairs"]
        return self.on_device(kind, ctx, lambda: torch.as_tensor(pairs, dtype=torch.long).to(ctx.device))

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.interpolation import aggregate_paths, correct_pairs, path_curves, predict
        from ._budget import within_budget

        ctx = within_budget(self, model, ctx)
        cfg = self.config
        images = ctx.data.x_test.to(ctx.device)
        labels = ctx.data.y_test.to(ctx.device)
        pairs = {kind: self._pairs(kind, ctx) for kind in cfg.kinds}
        # End-point predictions, once for every test image used by any kind.
        used = torch.unique(torch.cat([p.flatten() for p in pairs.values()]))
        pred = torch.full((len(images),), -1, dtype=torch.long, device=ctx.device)
        if len(used):
            pred[used] = predict(model, images[used], ctx.forward_batch)
        cdn = np.full((len(cfg.kinds), cfg.bins), np.nan)
        paths = np.zeros(len(cfg.kinds))
        tv = np.full(len(cfg.kinds), np.nan)
        for row, kind in enumerate(cfg.kinds):
            kept = pairs[kind][correct_pairs(pred, labels, pairs[kind])]
            assert self._step is not None
            curves = path_curves(model, images, kept, step=self._step, bins=cfg.bins,
                                 batch_size=ctx.forward_batch)
            res = aggregate_paths(curves.bin_mean, curves.tv)
            cdn[row] = res.cdn.cpu().numpy()
            tv[row] = float(res.tv)
            paths[row] = res.paths
        return {"cdn": cdn, "paths": paths, "tv": tv}
