"""Stream checkpoints -> probes -> cube: options -> plan (``plan``), rounds of tasks
(``source``; ``--follow``'s rules in ``follow``), an executor, the single writer (``writer``),
wired in ``core``; the run's summary (``summary``)."""

from __future__ import annotations

from .core import (
    FOLLOW_IDLE_S,
    FOLLOW_POLL_S,
    Runner,
    auto_batch_size,
    auto_forward_batch_size,
    run_analysis,
)
from .summary import RunSummary
from .writer import MATERIALIZE_EVERY_S

__all__ = ["FOLLOW_IDLE_S", "FOLLOW_POLL_S", "MATERIALIZE_EVERY_S", "RunSummary", "Runner",
           "auto_batch_size", "auto_forward_batch_size", "run_analysis"]
