"""scikit-learn's bundled 8x8 digits: 1797 real images, 10 classes, no download.

Pixels (0..16) are divided by 16 into [0, 1], shape ``(N, 1, 8, 8)``. The split is stratified
75/25 (1347 train, 450 test) by :func:`stratified_split`, which draws exactly what
``train_test_split(stratify=y, random_state=split_seed)`` draws (tested against it); each
split keeps the original dataset order. Unlike the other datasets, which use published
constants, ``mean``/``std`` are the pixel mean and population std of this training split (so
they depend, slightly, on ``split_seed``, which run.json records).

The file is read directly from scikit-learn's package folder (``datasets/data/digits.csv.gz``)
without importing scikit-learn, whose dataset machinery costs about 2 s to import: every CLI
call and every worker of a pool loads this dataset.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import ImageData, channel_stats

__all__ = ["load_digits", "stratified_split"]


def _digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError("scikit-learn's bundled digits file is missing", path)
    return path


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draws closest to the hypergeometric mode; ties broken by ``rng`` (as sklearn)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) positions of a stratified shuffle split: the same draws as
    scikit-learn's ``train_test_split(..., test_size=test_fraction, stratify=labels,
    random_state=seed)``, without importing it."""
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, idx in enumerate(class_indices):
        perm = idx.take(rng.permutation(counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i]: n_i[i] + t_i[i]])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def load_digits(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """The digits dataset with a stratified 75/25 split fixed by ``split_seed``."""
    data = np.loadtxt(_digits_file(), delimiter=",")
    images = data[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0
    labels = data[:, -1].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, 0.25, split_seed)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    x_train = x[train_idx].contiguous()
    mean, std = channel_stats(x_train)
    return ImageData(
        name="digits",
        x_train=x_train,
        y_train=y[train_idx].contiguous(),
        x_test=x[test_idx].contiguous(),
        y_test=y[test_idx].contiguous(),
        num_classes=10,
        mean=mean,
        std=std,
        root=None,
        split_seed=int(split_seed),
    )
