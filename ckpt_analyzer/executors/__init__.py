"""Executors: where the unit of work (one checkpoint, :mod:`.work`) runs; the runner alone
writes the cube. ``local`` (in the writer's process), ``pool`` (spawned processes), ``ray``
(Ray actors, the ``[ray]`` extra)."""

from __future__ import annotations

from .base import Executor, Scheduler
from .work import Outcome, Plan, Task, Worker, measure_checkpoint

__all__ = ["Executor", "Outcome", "Plan", "Scheduler", "Task", "Worker", "measure_checkpoint"]
