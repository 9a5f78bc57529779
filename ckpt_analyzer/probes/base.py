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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..schema import SUBSETS, Metric, Outputs

__all__ = ["SUBSETS", "Context", "Metric", "NoConfig", "Outputs", "Probe", "RunData"]

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints import CheckpointRef
    from ..data.run import RunData

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


def __getattr__(name: str) -> Any:
    # RunData lives in ckpt_analyzer.data.run (it imports torch); kept importable from here.
    if name == "RunData":
        from ..data.run import RunData

        return RunData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
