"""The run's :class:`Plan`: everything a worker needs, picklable, and the one builder of a
probe's :class:`~ckpt_analyzer.probes.base.Context` (:meth:`Plan.context`) for the writer's
process, pool and Ray workers and :func:`ckpt_analyzer.testing.contract_context` alike. It lives
with the probes' contract, below the executors that carry it and the testing helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints.run_data import RunData
    from .base import Context


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, picklable: the run folder, the prepared probes (pickled), the
    data and device policy, and what each width's model and its first/last checkpoint are.
    Built once per run by :mod:`ckpt_analyzer.runner.plan`; ``--follow`` grows ``width_meta``,
    ``initial``, ``final`` and ``sources`` between rounds (:meth:`delta`, :meth:`grown`).

    The one builder of a probe's :class:`~ckpt_analyzer.probes.base.Context` (:meth:`context`):
    the in-process path, the pool/Ray workers and :func:`ckpt_analyzer.testing.contract_context`
    all build their model, epoch-0 state and last state through these methods, so a module
    prefix is stripped, and a broken last checkpoint raises its recorded error, everywhere alike.
    """

    run_dir: str
    probes: bytes = b""  # pickle of list[PreparedProbe], after prepare() (pool/Ray only)
    plugins: tuple[str, ...] = ()
    device: str = "cpu"
    tf32: bool = False  # CUDA: allow TF32 (device.set_precision)
    batch_size: int = 512
    forward_batch_size: int | None = None  # forward-only batch (None: batch_size)
    max_memory: int | None = None  # --max-memory: bytes a probe's batches may take (Context)
    seed: int = 0
    run: Mapping[str, Any] = field(default_factory=dict)
    widths: tuple[int, ...] = ()
    epochs: tuple[int, ...] = ()
    width_meta: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    initial: Mapping[int, str] = field(default_factory=dict)  # width -> epoch-0 checkpoint
    #: width -> its last checkpoint (epoch, path, recorded error or None)
    final: Mapping[int, tuple[int, str, str | None]] = field(default_factory=dict)
    sources: Mapping[int, str] = field(default_factory=dict)  # width -> a file named in errors
    model: str | None = None
    trust_code: bool = False  # --trust-code: the parent checked every arch; workers check again
    dataset: str | None = None
    data_root: str | None = None
    allow_pt: bool = False
    prefix: str | None = None  # module prefix of the saved keys (None: found automatically)
    normalize: str | None = None  # --normalize of a foreign folder (data/preprocessing.py)
    strict: bool = False  # a failing probe fails the whole checkpoint

    #: the fields that --follow grows between rounds (sent to workers as a delta)
    GROWING = ("width_meta", "initial", "final", "sources")

    def delta(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.GROWING}

    def grown(self, delta: Mapping[str, Any]) -> Plan:
        import dataclasses

        return dataclasses.replace(self, **{k: delta[k] for k in self.GROWING})

    # -- the one rule for a width's model and states

    def build_model(self, width: int, device: torch.device | str) -> nn.Module:
        """A fresh model of ``width`` (eval mode, on ``device``): built from that width's
        checkpoint metadata, else the first planned width's, else any width's."""
        from ..checkpoints import build_model_for

        meta = (self.width_meta.get(width)
                or (self.width_meta.get(self.widths[0]) if self.widths else None)
                or next(iter(self.width_meta.values())))
        meta = {**meta, "width": width}
        return build_model_for(meta, self.model, trust_code=self.trust_code,
                               source=self.sources.get(width, self.run_dir)).to(device).eval()

    def read_state(self, width: int, path: str, device: torch.device | str
                   ) -> dict[str, torch.Tensor]:
        """The model's tensors of the checkpoint at ``path``, module prefix stripped."""
        from ..checkpoints import open_state, strip_prefix

        return strip_prefix(open_state(path, device, self.allow_pt),
                            self.build_model(width, device).state_dict(), self.prefix, path)

    def initial_state(self, width: int, device: torch.device | str
                      ) -> Mapping[str, torch.Tensor] | None:
        path = self.initial.get(width)
        return None if path is None else self.read_state(width, path, device)

    def final_state(self, width: int, device: torch.device | str
                    ) -> tuple[int, Mapping[str, torch.Tensor]] | None:
        last = self.final.get(width)
        if last is None:
            return None
        epoch, path, error = last
        if error:  # the discovery's recorded cause, the same line in every process
            raise CheckpointError(error.split(": ", 1)[-1], path)
        return epoch, self.read_state(width, path, device)

    def context(self, data: RunData, device: torch.device) -> Context:
        """The probes' :class:`~ckpt_analyzer.probes.base.Context` under this plan."""
        from .base import Context

        return Context(data=data, device=device, batch_size=self.batch_size,
                       forward_batch_size=self.forward_batch_size, seed=self.seed,
                       run=dict(self.run), widths=tuple(self.widths), epochs=tuple(self.epochs),
                       build_model=lambda w: self.build_model(w, device),
                       initial_state=lambda w: self.initial_state(w, device),
                       final_state=lambda w: self.final_state(w, device),
                       max_memory=self.max_memory)
