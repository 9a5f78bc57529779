"""Training settings, validated without importing torch so bad input fails instantly."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError, unknown
from ..seeds import check_seed
from .schedule import SCHEDULES, save_epochs

OPTIMIZERS = ("adam", "sgd")
MAX_WIDTHS = 1000
MAX_EPOCHS = 1_000_000


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; defaults follow Zhang & Wu (Adam, lr 1e-4, batch 128)."""

    dataset: str = "digits"
    data_root: str | None = None
    split_seed: int = 0
    arch: str = "mcnn"
    widths: tuple[int, ...] = (1, 2, 4, 8)
    epochs: int = 100
    label_noise: float = 0.0
    noise_kind: str = "symmetric"
    noise_classes: tuple[int, ...] | None = None
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    schedule: str = "constant"
    batch_size: int = 128
    augment: bool = False
    save: str = "every"
    seed: int = 0
    label_smoothing: str | None = None
    ls_frequency: float = 1.0
    ls_amplitude: float = 0.5
    ls_index: int = 1

    def __post_init__(self) -> None:
        for flag, value in (("--lr", self.lr), ("--momentum", self.momentum),
                            ("--weight-decay", self.weight_decay),
                            ("--label-noise", self.label_noise),
                            ("--ls-frequency", self.ls_frequency),
                            ("--ls-amplitude", self.ls_amplitude)):
            if not math.isfinite(value):
                raise UsageError(f"{flag}: must be a finite number (got {value})")
        check_seed(self.seed, "--seed")
        check_seed(self.split_seed, "--split-seed")
        if len(self.widths) > MAX_WIDTHS:
            raise UsageError(f"--widths: {len(self.widths):,} widths; at most {MAX_WIDTHS}")
        if self.epochs > MAX_EPOCHS:
            raise UsageError(f"--epochs: at most {MAX_EPOCHS:,} (got {self.epochs:,}): every "
                             "epoch may be saved")
        if not self.widths or any(w < 1 for w in self.widths):
            raise UsageError("--widths: must be positive integers")
        if self.epochs < 1:
            raise UsageError(f"--epochs: must be a positive integer (got {self.epochs})")
        if not 0.0 <= self.label_noise < 1.0:
            raise UsageError(f"--label-noise: must be in [0, 1) (got {self.label_noise})")
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", self.schedule, SCHEDULES)
        if self.lr <= 0:
            raise UsageError(f"--lr: must be positive (got {self.lr})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size: must be a positive integer (got {self.batch_size})")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.momentum < 0:
            raise UsageError("--warmup-epochs, --weight-decay and --momentum must be >= 0")
        if self.label_smoothing is not None:
            if self.label_smoothing not in ("radial", "direction"):
                raise unknown("label smoothing", self.label_smoothing, ("radial", "direction"))
            if self.ls_frequency <= 0:
                raise UsageError(f"--ls-frequency: must be > 0 (got {self.ls_frequency})")
            if not 0.0 <= self.ls_amplitude <= 1.0:
                raise UsageError(f"--ls-amplitude: must be in [0, 1] (got {self.ls_amplitude})")
        save_epochs(self.save, self.epochs)  # validates the schedule
