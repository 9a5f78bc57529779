"""A Lightning callback that writes contract checkpoints (the ``lightning`` extra).

::

    from ckpt_analyzer import RunWriter
    from ckpt_analyzer.integrations.lightning import ContractCheckpoint

    writer = RunWriter("runs/lit", model=make_net, dataset="digits", widths=[4], epochs=10)
    trainer = L.Trainer(max_epochs=10, callbacks=[ContractCheckpoint(writer, width=4)])
    trainer.fit(LitModel(make_net(4, writer.num_classes, writer.in_channels)), loader)

The LightningModule is saved through :meth:`RunWriter.save` (:mod:`ckpt_analyzer.checkpoints`;
the one ``write_checkpoint`` of ``ckpt-train`` and the writer), which strips its module prefix
(``self.net = ...`` -> keys ``net.*``) so that the checkpoints fit the writer's factory. Works
with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older distribution
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("ckpt_analyzer.integrations.lightning needs Lightning: "
                          "pip install 'ckpt-analyzer[lightning]'") from None

from ..errors import CkptError
from .writer import RunWriter

__all__ = ["ContractCheckpoint"]


class ContractCheckpoint(pl.Callback):
    """Writes ``w<width>/e<epoch>.safetensors`` through ``writer`` as training goes.

    Args:
        writer: the run's :class:`~ckpt_analyzer.RunWriter`.
        width: the width this fit trains.
        every_n_epochs: save every N finished epochs (and the last); within the writer's
            planned save schedule, if it has one.
        save_initial: save the initialization as epoch 0 when the fit starts from scratch.
        finish: mark the width finished (``w<width>/done``) when the fit ends normally and
            every planned checkpoint is on disk (otherwise a warning names the missing ones).

    Epochs are counted as finished epochs (epoch 1 = after the first pass; Lightning's own
    file names count from 0); ``step`` is ``trainer.global_step``. Logged metrics
    (``trainer.callback_metrics``) are stored in the metadata as ``logged.<name>``. Only the
    global-zero process writes.
    """

    def __init__(self, writer: RunWriter, width: int, every_n_epochs: int = 1,
                 save_initial: bool = True, finish: bool = True) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 (got {every_n_epochs})")
        self.writer = writer
        self.width = int(width)
        self.every_n_epochs = int(every_n_epochs)
        self.save_initial = save_initial
        self.finish = finish
        self.last_saved: int | None = None

    def _logged(self, trainer: Any) -> dict[str, float]:
        out = {}
        for k, v in dict(getattr(trainer, "callback_metrics", {}) or {}).items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                out[f"logged.{k}"] = f
        return out

    def _save(self, trainer: Any, module: Any, epoch: int) -> None:
        if trainer.is_global_zero:
            self.writer.save(module, width=self.width, epoch=epoch, step=int(trainer.global_step),
                             **self._logged(trainer))
        self.last_saved = epoch

    def _wanted(self, epoch: int, trainer: Any) -> bool:
        planned = self.writer.save_epochs  # the writer's plan, if any, bounds the choice
        due = epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs
        return due and (planned is None or epoch in planned)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.save_initial and trainer.current_epoch == 0 and trainer.global_step == 0:
            self._save(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = int(trainer.current_epoch) + 1  # the epoch just finished, counted from 1
        if self._wanted(epoch, trainer):
            self._save(trainer, pl_module, epoch)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.finish or getattr(trainer, "interrupted", False):
            return
        epoch = int(trainer.current_epoch)  # finished epochs once the fit is over
        if epoch > 0 and self.last_saved != epoch and self._wanted(epoch, trainer):
            self._save(trainer, pl_module, epoch)
        if trainer.is_global_zero:
            try:
                self.writer.finish(self.width)
            except CkptError as exc:  # the fit ended short of the plan: saved, not marked done
                warnings.warn(f"ContractCheckpoint: {exc}", stacklevel=2)
