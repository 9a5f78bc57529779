"""Learning-rate schedules; the checkpoint save schedule lives with the run folder
(:func:`ckpt_analyzer.checkpoints.schedule.save_epochs`, re-exported here)."""

from __future__ import annotations

import math

from ..checkpoints.schedule import save_epochs
from ..errors import UsageError

__all__ = ["SCHEDULES", "lr_at", "save_epochs"]

SCHEDULES = ("constant", "step", "cosine")


def lr_at(step: int, steps_per_epoch: int, epochs: int, lr: float, schedule: str,
          warmup_epochs: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    ``step`` multiplies by 0.1 at 50% and 75% of training; ``cosine`` decays to 0;
    a linear warm-up over ``warmup_epochs`` multiplies either."""
    total = max(1, steps_per_epoch * epochs)
    progress = step / total
    if schedule == "constant":
        f = 1.0
    elif schedule == "step":
        f = 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise UsageError(f"unknown schedule '{schedule}'")
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        f *= (step + 1) / warm
    return lr * f
