"""Writing one checkpoint of the contract: its metadata and its file, for every writer
(``ckpt-train``'s :class:`~ckpt_analyzer.train.loop.Trainer`, :class:`~ckpt_analyzer.RunWriter`
and through it the Lightning callback)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import CKPT_FORMAT, save_tensors
from .layout import checkpoint_path

if TYPE_CHECKING:
    import torch

__all__ = ["checkpoint_metadata", "write_checkpoint"]


def checkpoint_metadata(*, arch: str, width: int, epoch: int, step: int, num_classes: int,
                        in_channels: int, image_size: int,
                        metrics: Mapping[str, float] | None = None,
                        extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A checkpoint's safetensors ``__metadata__`` (docs/checkpoints.md).

    ``metrics``: the evaluated numbers (:func:`~ckpt_analyzer.functional.loss_error.
    checkpoint_metrics`), written as ``repr`` of the float; ``extra``: further entries already
    as text, which win over ``metrics`` (a number a person passes for a computed key). The
    contract's own keys win over both. ``train_loss``/``train_error`` that nobody gave are NaN."""
    meta: dict[str, Any] = {k: repr(float(v)) for k, v in (metrics or {}).items()}
    meta.update(extra or {})
    for k in ("train_loss", "train_error"):
        meta.setdefault(k, repr(math.nan))
    meta.update({"format": CKPT_FORMAT, "arch": arch, "width": int(width), "epoch": int(epoch),
                 "step": int(step), "num_classes": int(num_classes),
                 "in_channels": int(in_channels), "image_size": int(image_size)})
    return meta


def write_checkpoint(run_dir: str | Path, state: Mapping[str, torch.Tensor], *, arch: str,
                     width: int, epoch: int, step: int, num_classes: int, in_channels: int,
                     image_size: int, metrics: Mapping[str, float] | None = None,
                     extra: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` as ``<run>/w<width>/e<epoch:05d>.safetensors`` atomically (temporary in
    the same folder, fsync, rename) with :func:`checkpoint_metadata`; returns the path."""
    path = checkpoint_path(run_dir, width, epoch)
    meta = checkpoint_metadata(arch=arch, width=width, epoch=epoch, step=step,
                               num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size, metrics=metrics, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, state, meta)
    return path
