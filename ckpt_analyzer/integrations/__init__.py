"""Meeting users where they train: :mod:`.lightning` holds a Lightning callback (the
``lightning`` extra) that writes the checkpoint contract through :class:`RunWriter`.

:class:`RunWriter` itself lives with the run folder it writes
(:class:`ckpt_analyzer.checkpoints.RunWriter`, also ``ckpt_analyzer.RunWriter``); it stays
importable from here. Nothing here imports torch or lightning until it is used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checkpoints.writer import RunWriter

__all__ = ["RunWriter"]


def __getattr__(name: str) -> Any:
    if name == "RunWriter":
        from ..checkpoints.writer import RunWriter

        return RunWriter
    raise AttributeError(name)
