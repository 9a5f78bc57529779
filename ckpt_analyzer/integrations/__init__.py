"""Meeting users where they train: :class:`RunWriter` writes the checkpoint contract from any
training loop; :mod:`.lightning` holds a Lightning callback (the ``lightning`` extra).

Nothing here imports torch or lightning until it is used."""

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
