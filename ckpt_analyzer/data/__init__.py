"""Datasets by name: train/test images in [0, 1], labels, and per-channel pixel statistics.

A dataset loader is a callable ``loader(root: Path | None, split_seed: int) -> ImageData``
registered under the entry-point group ``ckpt_analyzer.datasets``. ``root`` is the user's
``--data-root`` (None when not given); loaders never download. ``split_seed`` fixes the
train/test split of datasets that have no official one (``digits``); others ignore it.

The model input is always the normalized image ``(x - mean) / std`` (per channel); probes that
perturb "in pixel space" go through :func:`denormalize` / :func:`normalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = ["DATASETS", "ImageData", "Loader", "channel_stats", "denormalize", "load_dataset",
           "normalize"]


@dataclass(frozen=True, eq=False)  # tensors: compare by identity, not elementwise
class ImageData:
    """A dataset held in memory.

    ``x_*``: float32 ``(N, C, H, W)`` pixels in [0, 1]; ``y_*``: int64 true labels;
    ``mean``/``std``: per-channel pixel statistics used for normalization; ``root``: where it
    was read from; ``split_seed``: the seed of the train/test split (None for official splits).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: str | None = None
    split_seed: int | None = None

    def __post_init__(self) -> None:
        import torch

        def bad(msg: str) -> DataError:
            return DataError(f"dataset '{self.name}': {msg}")

        for split, x, y in (("train", self.x_train, self.y_train),
                            ("test", self.x_test, self.y_test)):
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 4:
                raise bad(f"x_{split} must be a float32 tensor (N, C, H, W)")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
                raise bad(f"y_{split} must be an int64 tensor (N,)")
            if x.shape[0] != y.shape[0]:
                raise bad(f"x_{split} has {x.shape[0]} images but y_{split} {y.shape[0]} labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise bad(f"y_{split} has labels outside [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise bad(f"train images {tuple(self.x_train.shape[1:])} and test images "
                      f"{tuple(self.x_test.shape[1:])} differ in shape")
        c, h, w = self.x_train.shape[1:]
        if h != w:
            raise bad(f"images must be square, got {h}x{w}")
        if len(self.mean) != c or len(self.std) != c:
            raise bad(f"mean/std need {c} values (one per channel)")
        if min(self.std) <= 0:
            raise bad("std must be positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Side length H (= W) of the images."""
        return int(self.x_train.shape[2])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel: the model input for pixels ``x`` in [0, 1]."""
        return normalize(x, self.mean, self.std)


Loader = Callable[[Path | None, int], ImageData]

DATASETS: Registry[Loader] = Registry("ckpt_analyzer.datasets", "dataset")


def _channel_view(v: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    import torch

    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.ndim != 1 or x.ndim < 3 or t.shape[0] != x.shape[-3]:
        raise ValueError(f"{t.shape[0] if t.ndim else 1} channel statistics for an input of "
                         f"shape {tuple(x.shape)}; expected (..., C, H, W)")
    return t.view(-1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with per-channel statistics, for ``x`` of shape ``(..., C, H, W)``."""
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


def denormalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``x * std + mean`` per channel."""
    return x * _channel_view(std, x) + _channel_view(mean, x)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population, ddof=0) std of images ``(N, C, H, W)``, in float64.

    Computed with numpy's pairwise summation, so the numbers do not depend on how many torch
    threads the process has: run.json written by one process must match what a worker with
    another thread count computes (a torch reduction's last bits change with the thread count).
    """
    import numpy as np

    xc = x.detach().cpu().double().transpose(0, 1).reshape(x.shape[1], -1).numpy()
    return (tuple(float(v) for v in np.mean(xc, axis=1)),
            tuple(float(v) for v in np.std(xc, axis=1)))


def load_dataset(name: str, root: str | Path | None = None, split_seed: int = 0) -> ImageData:
    """Load a registered dataset (``digits``, ``cifar10``, ``npz`` ...) from ``root``."""
    loader = DATASETS.get(name)
    path = None if root is None or str(root) == "" else Path(root).expanduser()
    data = loader(path, split_seed)
    if not isinstance(data, ImageData):
        raise DataError(f"dataset '{name}' returned {type(data).__name__}, not ImageData")
    return data
