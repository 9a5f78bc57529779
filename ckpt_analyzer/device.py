"""The device a process computes on: ``--device auto|cpu|cuda:N`` and its float precision.

torch is imported when a function is called, not with this module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device: unknown device '{spec}' (use auto, cpu or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"--device: unsupported device '{spec}'")
    return dev


def set_precision(device: torch.device, tf32: bool = False) -> None:
    """How this process computes on ``device``. On CUDA: full float32 in matrix products and
    convolutions (TF32 off, unless ``tf32``: about 10 bits of mantissa, faster on Ampere and
    later) and deterministic cuDNN algorithms without autotuning, so that a probe gives the same
    numbers on every run and its differences and second derivatives keep float32 accuracy.
    Nothing changes on other devices."""
    import torch

    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
