"""Stream checkpoints -> probes -> cube: the plan, an executor, and the single writer loop
(``core``); ``--follow`` rounds over a live run (``follow``); the run's summary (``summary``)."""

from __future__ import annotations

from .core import (
    FOLLOW_IDLE_S,
    FOLLOW_POLL_S,
    MATERIALIZE_EVERY_S,
    Runner,
    auto_batch_size,
    auto_forward_batch_size,
    run_analysis,
)
from .summary import RunSummary

__all__ = ["FOLLOW_IDLE_S", "FOLLOW_POLL_S", "MATERIALIZE_EVERY_S", "RunSummary", "Runner",
           "auto_batch_size", "auto_forward_batch_size", "run_analysis"]
