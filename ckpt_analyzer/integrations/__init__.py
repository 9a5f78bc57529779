"""Meeting users where they train: :mod:`.lightning` holds a Lightning callback (the
``lightning`` extra) that writes the checkpoint contract through :class:`RunWriter`.

:mod:`.writer` holds :class:`RunWriter` (also ``ckpt_analyzer.RunWriter``) for users' own
loops; it writes every checkpoint through :func:`ckpt_analyzer.checkpoints.write_checkpoint`,
which the trainer uses too. Nothing here imports torch or lightning until it is used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .writer import RunWriter

__all__ = ["RunWriter"]


def __getattr__(name: str) -> Any:
    if name == "RunWriter":
        from .writer import RunWriter

        return RunWriter
    raise AttributeError(name)
