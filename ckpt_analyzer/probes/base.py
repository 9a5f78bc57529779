"""The probe contract (DESIGN §4).

A probe measures one checkpoint's model and returns named arrays whose shapes it declared
up front. Write one by subclassing :class:`Probe` with ``name``, ``version``, ``description``,
a frozen dataclass ``Config``, :meth:`Probe.outputs` and :meth:`Probe.__call__` (a complete
20-line example is ``examples/custom_probe.py`` in the repository, also shown in the README)
and register it under the entry-point group ``ckpt_analyzer.probes`` (or pass the file with
``--plugin``). The runner:

1. builds the probe with its validated ``Config`` (``--set name.key=value``, ``--config``);
2. calls :meth:`Probe.prepare` once per run; the arrays it returns are the probe's fixed
   inputs (points, directions, pairs...) and are stored under ``<probe>/inputs/`` in the cube;
   the cube's ``config`` is :meth:`Probe.resolved_config` (``auto`` values resolved);
3. calls :meth:`Probe.outputs` to lay out the cube group;
4. calls the probe on every checkpoint's model (eval mode, on ``ctx.device``) and checks every
   returned array against the declared shape.

Probes must be deterministic given ``ctx.seed`` and the checkpoint, and must batch their
evaluations (``ctx.batch_size`` samples per forward pass), never loop over single points.
"""

from __future__ import annotations

import abc
import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints import CheckpointRef

SUBSETS = ("train", "clean", "noisy", "test")


@dataclass(frozen=True)
class Metric:
    """One output array: its dimensions after (epoch, width), dtype and a description."""

    dims: tuple[str, ...] = ()
    dtype: str = "float64"
    description: str = ""


@dataclass(frozen=True)
class Outputs:
    """Everything a probe writes per checkpoint: extra coordinates and metrics."""

    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)

    def shape(self, metric: str) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.metrics[metric].dims)

    def check(self, results: Mapping[str, Any], probe: str) -> dict[str, np.ndarray]:
        """Validate one checkpoint's results against the declaration."""
        missing = set(self.metrics) - set(results)
        extra = set(results) - set(self.metrics)
        if missing or extra:
            raise ValueError(
                f"probe '{probe}' returned metrics {sorted(results)}, declared {sorted(self.metrics)}"
            )
        out = {}
        for name, metric in self.metrics.items():
            arr = np.asarray(results[name], dtype=metric.dtype)
            if arr.shape != self.shape(name):
                raise ValueError(
                    f"probe '{probe}' metric '{name}' has shape {arr.shape}, declared "
                    f"{self.shape(name)} for dims {metric.dims}"
                )
            out[name] = arr
        return out


@dataclass(frozen=True)
class RunData:
    """The run's data on the device, shared by all probes.

    ``x_*`` are normalized model inputs (N, C, H, W); ``mean``/``std`` map them back to
    [0, 1] pixel space. ``y_train`` holds the labels trained on (noisy where corrupted),
    ``clean_labels`` the true ones, ``noisy_mask`` which training points were corrupted.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    clean_labels: torch.Tensor
    noisy_mask: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    smoothing: Any = None

    def index(self, subset: str) -> torch.Tensor:
        """Positions of ``subset`` in its split (training split, or test split for test)."""
        import torch

        if subset == "train":
            return torch.arange(len(self.y_train), device=self.y_train.device)
        if subset == "clean":
            return torch.nonzero(~self.noisy_mask, as_tuple=False).flatten()
        if subset == "noisy":
            return torch.nonzero(self.noisy_mask, as_tuple=False).flatten()
        if subset == "test":
            return torch.arange(len(self.y_test), device=self.y_test.device)
        raise ValueError(f"unknown subset '{subset}' (choose from {', '.join(SUBSETS)})")

    def subset(self, subset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, index)`` of a subset; ``noisy`` carries its corrupted labels."""
        idx = self.index(subset)
        if subset == "test":
            return self.x_test[idx], self.y_test[idx], idx
        return self.x_train[idx], self.y_train[idx], idx

    def to_pixel(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


@dataclass(frozen=True)
class Context:
    """What a probe sees: data, device, batch size, seed and run facts.

    ``checkpoint`` is set for each call (width, epoch, path, metadata of the checkpoint being
    measured); it is ``None`` during :meth:`Probe.prepare`.
    """

    data: RunData
    device: torch.device
    batch_size: int
    seed: int = 0
    run: Mapping[str, Any] = field(default_factory=dict)
    widths: tuple[int, ...] = ()
    epochs: tuple[int, ...] = ()
    build_model: Callable[[int], nn.Module] | None = None
    initial_state: Callable[[int], Mapping[str, torch.Tensor] | None] | None = None
    checkpoint: CheckpointRef | None = None

    def with_checkpoint(self, ref: CheckpointRef) -> Context:
        return dataclasses.replace(self, checkpoint=ref)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` on ``x`` in batches of ``batch_size`` without autograd."""
        import torch

        with torch.no_grad():
            outs = [model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.data.num_classes, device=x.device)


@dataclass(frozen=True)
class NoConfig:
    """A probe without parameters."""


class Probe(abc.ABC):
    """Base class of all probes; see the module docstring for the contract."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def rng(self, ctx: Context) -> np.random.Generator:
        """The probe's own random stream: the same for every checkpoint of a run."""
        return np.random.default_rng([ctx.seed, zlib.crc32(self.name.encode())])

    def prepare(self, ctx: Context) -> Mapping[str, np.ndarray]:
        """Fix the probe's inputs once per run; return them (``'train/index'`` style keys)
        to be stored under ``<probe>/inputs/``. Default: nothing."""
        return {}

    def resolved_config(self) -> Any:
        """The config as measured: every ``auto`` parameter replaced by the number
        :meth:`prepare` resolved it to. The runner stores this in the cube (and compares it on a
        re-run), so ``auto`` and the number it stands for are the same config. Default: the
        config itself."""
        return self.config

    @abc.abstractmethod
    def outputs(self) -> Outputs:
        """Declare every metric (extra dims and their coordinates); called after prepare."""

    @abc.abstractmethod
    def __call__(self, model: nn.Module, ctx: Context) -> Mapping[str, np.ndarray]:
        """Measure one checkpoint; return arrays shaped as declared by :meth:`outputs`."""
