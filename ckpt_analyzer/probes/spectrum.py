"""The ``spectrum`` probe: Fourier spectrum of the logits along lines through data points.

Zhang & Wu (IJCAI 2021), §2.1-2.2, eq. (1)-(3); the maths is in
:mod:`ckpt_analyzer.functional.spectrum`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import check, check_choices
from .base import SUBSETS, Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn


#: The most line samples (points x n x subsets) one checkpoint may evaluate: the logits of
#: all of them are held at once (~5 GiB at 10 classes).
MAX_SAMPLES = 2**27


class SpectrumProbe(Probe):
    """Fourier spectrum of the logits along random lines through data points (Zhang & Wu).

    For each subset, ``points`` data points x (drawn once per run, without replacement) each get
    a Gaussian direction v of unit L2 norm in the probe's space. The model's logits are sampled
    at ``x + t v`` for ``t = -h + 2h i / n``, i = 0..n-1 (endpoint excluded, as the authors'
    code), transformed with an unnormalized rfft along the line, and averaged:
    ``A_k`` = mean over points and classes of ``|F_k|``, ``R_k = log(A_k / A_0)``, k = 0..n/2.

    ``space="pixel"`` draws v in [0, 1] pixel space: the model sees
    ``normalize(denormalize(x) + t v)``. ``space="input"`` draws v in the normalized input space.

    Default ``h="auto"``: the authors' 0.5 was chosen on CIFAR-10 (a segment of 2h = 1 is about
    3.4% of a CIFAR-10 image's norm; on 8×8 digits it would be 26%). ``auto`` resolves to
    ``0.5 × N / N_CIFAR-10`` with N the RMS image norm of the run's training images in the
    probe's ``space`` (:mod:`ckpt_analyzer.probes.scale`; 3 significant digits): 0.5 on
    CIFAR-10, 0.0652 in pixel space (0.0722 with space=input) on digits. The resolved number is the ``h`` stored in the
    cube's config; an explicit number is used as given.

    Fixed inputs (stored under ``spectrum/inputs/``): ``<subset>/index`` (positions in the
    training split for train/clean/noisy, in the test split for test) and
    ``<subset>/direction`` (float32, ``(P, C, H, W)``). A subset with fewer than ``points``
    members uses all of them (the stored index says how many, and a warning says so); an empty
    subset (e.g. ``noisy`` in a run without label noise) gives NaN rows in ``A`` and ``R``.
    """

    name = "spectrum"
    version = "1"
    description = "Fourier spectrum of the logits along lines through data points (Zhang & Wu)"

    @dataclass(frozen=True)
    class Config:
        points: int = field(default=500, metadata={"help": "data points per subset"})
        n: int = field(default=128, metadata={"help": "samples per line (N)"})
        h: float | Literal["auto"] = field(default="auto", metadata={
            "help": "half-width of each line segment in the probe's space; auto: 0.5 scaled "
                    "by the dataset's RMS image norm over CIFAR-10's (0.5 on CIFAR-10)"})
        subsets: tuple[str, ...] = field(
            default=("train",), metadata={"help": "subsets: train, test, noisy, clean"})
        space: Literal["pixel", "input"] = field(
            default="pixel", metadata={"help": "space of the directions: pixel or input"})

        def __post_init__(self) -> None:
            check(self.points >= 1, f"spectrum.points must be >= 1 (got {self.points})")
            check(self.n >= 2, f"spectrum.n must be >= 2 (got {self.n})")
            samples = self.points * self.n * len(self.subsets)
            check(samples <= MAX_SAMPLES,
                  f"spectrum.points x spectrum.n = {samples:,} line samples would hold "
                  f"~{samples * 40 / 2**30:,.0f} GiB of logits (at 10 classes); at most "
                  f"{MAX_SAMPLES:,}")
            check(self.h == "auto" or (not isinstance(self.h, (str, bool))
                                       and isinstance(self.h, (int, float)) and self.h > 0
                                       and math.isfinite(self.h)),
                  f"spectrum.h must be a number > 0 or auto (got {self.h})")
            check_choices(self.subsets, SUBSETS, "spectrum.subsets")
            check(self.space in ("pixel", "input"),
                  f"spectrum.space: '{self.space}' is not one of pixel, input")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._h: float | None = None if self.config.h == "auto" else float(self.config.h)

    #: The authors' half-width on CIFAR-10 (Zhang & Wu's code), what ``h="auto"`` scales.
    paper_h = 0.5

    def resolved_config(self) -> Any:
        if self._h is None:
            raise RuntimeError("spectrum: resolved_config() needs prepare(ctx) first")
        return dataclasses.replace(self.config, h=self._h)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from .scale import resolve_auto

        cfg = self.config
        if cfg.h == "auto":
            self._h = resolve_auto(self.paper_h, ctx.data, cfg.space)
        shape = tuple(ctx.data.x_train.shape[1:])
        inputs: dict[str, np.ndarray] = {}
        for subset in cfg.subsets:
            rng = self.rng(ctx, subset)
            pool = ctx.data.index(subset).detach().cpu().numpy().astype(np.int64)
            count = min(cfg.points, len(pool))
            if count < cfg.points:
                warnings.warn(f"spectrum: subset '{subset}' has {len(pool)} points, fewer than "
                              f"points={cfg.points}; using all of them", stacklevel=2)
            index = np.sort(rng.choice(pool, size=count, replace=False)) if count else \
                np.zeros(0, dtype=np.int64)
            direction = rng.standard_normal((count, *shape))
            norms = np.sqrt((direction.reshape(count, int(np.prod(shape))) ** 2).sum(axis=1))
            direction = direction / norms.reshape(-1, *([1] * len(shape)))
            inputs[f"{subset}/index"] = index.astype(np.int64)
            inputs[f"{subset}/direction"] = direction.astype(np.float32)
        return inputs

    def outputs(self) -> Outputs:
        k = list(range(self.config.n // 2 + 1))
        return Outputs(
            coords={"subset": list(self.config.subsets), "k": k},
            metrics={
                "A": Metric(dims=("subset", "k"),
                            description="mean over points and classes of |rfft| of the logits "
                                        "along the line (eq. 2)"),
                "R": Metric(dims=("subset", "k"), description="log(A_k / A_0) (eq. 3)"),
            },
        )

    def _tensors(self, subset: str, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed points and directions of ``subset`` on the device (built once)."""
        import torch

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            assert self.inputs is not None
            index = torch.as_tensor(self.inputs[f"{subset}/index"], dtype=torch.long)
            split = ctx.data.x_test if subset == "test" else ctx.data.x_train
            x = split[index.to(split.device)].to(ctx.device)
            v = torch.as_tensor(self.inputs[f"{subset}/direction"]).to(ctx.device, x.dtype)
            return x, v

        return self.on_device(subset, ctx, make)

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.spectrum import line_spectrum, log_ratio
        from ._budget import within_budget

        ctx = within_budget(self, model, ctx)
        cfg = self.config
        shape = (len(cfg.subsets), cfg.n // 2 + 1)
        a_out = np.full(shape, np.nan)
        r_out = np.full(shape, np.nan)
        scale = None
        if cfg.space == "pixel":
            scale = 1.0 / ctx.data.std.to(ctx.device, torch.float32)
        for row, subset in enumerate(cfg.subsets):
            x, v = self._tensors(subset, ctx)
            if len(x) == 0:
                continue
            assert self._h is not None
            a = line_spectrum(model, x, v, n=cfg.n, h=self._h, batch_size=ctx.forward_batch,
                              scale=scale)
            a_out[row] = a.cpu().numpy()
            r_out[row] = log_ratio(a).cpu().numpy()
        return {"A": a_out, "R": r_out}
