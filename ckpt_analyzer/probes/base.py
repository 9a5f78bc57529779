"""The probe contract (docs/probes.md).

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
4. calls the probe on every checkpoint's model (eval mode, on ``ctx.device``) through
   :meth:`Probe.measure`, which checks what it returns against the declaration (every declared
   metric and no other, each of its declared dtype and shape: :meth:`Decl.check`, the same
   check the cube's journal runs on what it records).

Probes must be deterministic given ``ctx.seed`` and the checkpoint, and must batch their
evaluations (``ctx.batch_size`` samples per forward pass), never loop over single points.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import numpy as np

from ..errors import ProbeError
from ..schema import SUBSETS, Decl, Metric, Outputs

__all__ = ["SUBSETS", "Context", "Decl", "Metric", "NoConfig", "Outputs", "Probe", "RunData"]

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints import CheckpointRef
    from ..checkpoints.run_data import RunData

@dataclass(frozen=True)
class Context:
    """What a probe sees: data, device, batch sizes, seed and run facts.

    ``batch_size`` is the batch of gradient evaluations (sharpness, hessian);
    ``forward_batch_size``, when set, the batch of forward-only evaluations (logits under
    inference mode: metrics, normalization, spectrum, interpolation, landscape), read through
    :attr:`forward_batch`. Unset (the default) it is ``batch_size``, which keeps every number
    identical to a run without it; a larger one trades memory for fewer, larger kernels and
    may change the last bits of some results on some devices (matmul and convolution
    algorithms can depend on the batch).

    ``initial_state(width)`` is the state dict of the width's epoch-0 checkpoint (module
    prefixes stripped), ``None`` without one. ``final_state(width)`` is ``(epoch, state)`` of
    the width's last checkpoint in the run's own list of checkpoints (contract or
    ``--pattern`` names alike; prefixes stripped), ``None`` if the width has none; an
    unreadable file raises :class:`~ckpt_analyzer.errors.CheckpointError`. Both are ``None``
    where the context's builder knows no checkpoints.

    ``checkpoint`` is set for each call (width, epoch, path, metadata of the checkpoint being
    measured); it is ``None`` during :meth:`Probe.prepare`.

    ``max_memory``, when set, is the bytes a probe's batches may take on the device (their
    activations and autograd graphs; the model, the data and the probe's fixed inputs come on
    top): the built-in probes then lower their batches to fit
    (:mod:`ckpt_analyzer.probes._budget`). Unset (the default), every batch is as given.
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
    final_state: Callable[[int], tuple[int, Mapping[str, torch.Tensor]] | None] | None = None
    checkpoint: CheckpointRef | None = None
    forward_batch_size: int | None = None
    max_memory: int | None = None

    @property
    def forward_batch(self) -> int:
        """Samples per forward-only pass: ``forward_batch_size``, else ``batch_size``."""
        return self.forward_batch_size or self.batch_size

    def with_checkpoint(self, ref: CheckpointRef) -> Context:
        return dataclasses.replace(self, checkpoint=ref)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` on ``x`` in batches of :attr:`forward_batch` under inference
        mode (:func:`~ckpt_analyzer.functional.batching.batched`)."""
        import torch

        from ..functional.batching import batched

        out = batched(model, x, batch_size=self.forward_batch)
        return out if out is not None else torch.empty(0, self.data.num_classes, device=x.device)


@dataclass(frozen=True)
class NoConfig:
    """A probe without parameters."""


ConfigT = TypeVar("ConfigT")
T = TypeVar("T")


class Probe(abc.ABC, Generic[ConfigT]):
    """Base class of all probes; see the module docstring for the contract.

    What the base class does for a subclass, so that a probe holds only its maths:

    * ``self.config`` is the validated ``Config`` instance (typed: ``Probe[MyConfig]``);
    * :meth:`prepare` runs at most once per instance unless called again explicitly:
      :meth:`measure` prepares on first use, and whatever ``prepare`` returns is kept in
      :attr:`inputs`;
    * :meth:`rng` gives keyed random streams (the same draws for a key whatever else is drawn);
    * :meth:`on_device` caches tensors built from the fixed inputs per device (dropped when the
      device changes and when the probe is pickled for a worker);
    * :meth:`measure` converts the results to numpy once and checks them against the
      declaration of :meth:`outputs` (:meth:`Outputs.declare`, once per preparation; its
      :meth:`Decl.check`), raising a one-line :class:`~ckpt_analyzer.errors.ProbeError` that
      names the probe and the metric.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config if config is not None else self.Config()
        self.inputs: dict[str, np.ndarray] | None = None
        self._decl: Decl | None = None
        self._cache: dict[str, Any] = {}
        self._cache_device: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("prepare")
        if own is not None and not getattr(own, "_records_inputs", False):
            @functools.wraps(own)
            def prepare(self: Probe[Any], ctx: Context) -> Mapping[str, np.ndarray]:
                self._cache, self._cache_device, self._decl = {}, None, None
                inputs = own(self, ctx)
                self.inputs = {k: np.asarray(v) for k, v in inputs.items()}
                return inputs

            prepare._records_inputs = True  # type: ignore[attr-defined]
            cls.prepare = prepare  # type: ignore[method-assign]

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for executors: device tensors are rebuilt from the numpy inputs.
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_cache_device"] = None
        return state

    # -- helpers for subclasses

    def rng(self, ctx: Context, *keys: object) -> np.random.Generator:
        """The probe's own random stream, the same for every checkpoint of a run. With
        ``keys`` (a subset, a width...), a stream derived from that stream's first draw and the
        keys only, so e.g. the ``train`` points stay the same whether or not ``test`` is drawn."""
        base = np.random.default_rng([ctx.seed, zlib.crc32(self.name.encode())])
        if not keys:
            return base
        root = int(base.integers(2**32))
        return np.random.default_rng([root, *(zlib.crc32(str(k).encode()) for k in keys)])

    def on_device(self, key: str, ctx: Context, make: Callable[[], T]) -> T:
        """``make()`` once per device for ``key`` (e.g. the fixed points moved to the GPU)."""
        if self._cache_device != ctx.device:
            self._cache, self._cache_device = {}, ctx.device
        if key not in self._cache:
            self._cache[key] = make()
        return cast(T, self._cache[key])

    def needs_finished_width(self) -> bool:
        """Whether a checkpoint's result depends on its width's *last* checkpoint (e.g. the
        landscape barrier). ``ckpt-analyze run --follow`` then measures this probe on a width
        only once the trainer has marked the width done (``w<W>/done``), so a followed run gives
        the same cube as an analysis after training."""
        return False

    def ensure_prepared(self, ctx: Context) -> dict[str, np.ndarray]:
        """The fixed inputs, preparing first if this instance has not been prepared."""
        if self.inputs is None:
            self.prepare(dataclasses.replace(ctx, checkpoint=None))
            if self.inputs is None:  # a prepare() not wrapped by __init_subclass__
                self.inputs = {}
        return self.inputs

    def measure(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        """Prepare if needed, measure one checkpoint, return numpy arrays checked against
        the declaration of :meth:`outputs` (:meth:`Decl.check`; one :class:`ProbeError` line
        naming the probe and metric otherwise)."""
        self.ensure_prepared(ctx)
        decl = self.declaration()
        results = self(model, ctx)
        if not isinstance(results, Mapping):
            raise ProbeError(f"probe '{self.name}' returned {type(results).__name__}, "
                             "not a mapping of metric names to arrays")
        return decl.check({k: _to_numpy(v) for k, v in results.items()}, self.name)

    def declaration(self) -> Decl:
        """The canonical form of :meth:`outputs` (:meth:`Outputs.declare`), built once per
        preparation; a one-line :class:`~ckpt_analyzer.errors.CkptError` if it is invalid."""
        if self._decl is None:
            self._decl = self.outputs().declare(self.name)
        return self._decl

    # -- the contract

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
        """Declare every metric (extra dims and their coordinates); called after prepare.
        What :meth:`__call__` returns is checked against it (:meth:`Decl.check`) and the cube
        is laid out from it (see :class:`~ckpt_analyzer.schema.Outputs` for the rules)."""

    @abc.abstractmethod
    def __call__(self, model: nn.Module, ctx: Context) -> Mapping[str, Any]:
        """Measure one checkpoint; return arrays (numpy or torch) shaped as declared by
        :meth:`outputs`. Called through :meth:`measure`, after :meth:`prepare`."""


def _to_numpy(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if callable(detach) else value


def __getattr__(name: str) -> Any:
    # RunData lives in ckpt_analyzer.checkpoints.run_data (it imports torch); kept importable from here.
    if name == "RunData":
        from ..checkpoints.run_data import RunData

        return RunData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
