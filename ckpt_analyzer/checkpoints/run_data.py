"""A run's data on the device, shared by all probes: normalized splits, labels, noise mask.

It lives with the run folder (checkpoints/) because it is read from it: run.json names the
dataset, labels.safetensors the labels trained on; :mod:`ckpt_analyzer.data` only loads
datasets (and imports nothing of checkpoints/)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import denormalize, load_dataset, normalize
from ..data.preprocessing import Normalize
from ..errors import CkptError, UsageError
from ..schema import SUBSETS
from .layout import labels_path, run_json_path
from .run_folder import check_labels, read_labels, read_run_json

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunData:
    """The run's data on the device, shared by all probes.

    ``x_*`` are normalized model inputs (N, C, H, W); ``mean``/``std`` map them back to
    [0, 1] pixel space. ``y_train`` holds the labels trained on (noisy where corrupted),
    ``clean_labels`` the true ones, ``noisy_mask`` which training points were corrupted.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    clean_labels: torch.Tensor
    noisy_mask: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    smoothing: Any = None

    def index(self, subset: str) -> torch.Tensor:
        """Positions of ``subset`` in its split (training split, or test split for test)."""
        import torch

        if subset == "train":
            return torch.arange(len(self.y_train), device=self.y_train.device)
        if subset == "clean":
            return torch.nonzero(~self.noisy_mask, as_tuple=False).flatten()
        if subset == "noisy":
            return torch.nonzero(self.noisy_mask, as_tuple=False).flatten()
        if subset == "test":
            return torch.arange(len(self.y_test), device=self.y_test.device)
        raise ValueError(f"unknown subset '{subset}' (choose from {', '.join(SUBSETS)})")

    def subset(self, subset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, index)`` of a subset; ``noisy`` carries its corrupted labels."""
        idx = self.index(subset)
        if subset == "test":
            return self.x_test[idx], self.y_test[idx], idx
        return self.x_train[idx], self.y_train[idx], idx

    def to(self, device: str | torch.device) -> RunData:
        """The same data with every tensor on ``device``."""
        import torch

        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def to_pixel(self, x: torch.Tensor) -> torch.Tensor:
        return denormalize(x, self.mean, self.std)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)


def load_run_data(run_dir: str | Path, device: str | torch.device = "cpu",
                  dataset: str | None = None, data_root: str | None = None,
                  preprocessing: Normalize | None = None) -> RunData:
    """The data of a run on ``device``: contract runs from run.json and labels.safetensors,
    foreign folders from ``dataset``/``data_root`` (no label noise), normalized as
    ``preprocessing`` states (:mod:`.preprocessing`, ``--normalize``; the dataset's statistics by default)."""
    import torch

    run = read_run_json(run_dir)
    dev = torch.device(device)
    if run is not None and preprocessing is not None:
        raise UsageError(f"--normalize: {run_json_path(Path(run_dir))} states the preprocessing "
                         "of this run (dataset.mean/std); --normalize is for foreign folders")
    if run is not None:
        ds = run["dataset"]
        data = load_dataset(dataset or ds["name"], data_root or ds.get("root"), ds.get("split_seed", 0))
        labels = read_labels(run_dir)
        check_labels(labels, data.n_train, data.num_classes, labels_path(run_dir))
        mean, std = ds["mean"], ds["std"]
        if len(mean) != data.in_channels:
            raise CkptError(f"'dataset.mean' has {len(mean)} channels, dataset '{ds['name']}' "
                            f"has {data.in_channels}", run_json_path(run_dir))
        y_train, clean = labels["train_labels"].long(), labels["clean_labels"].long()
        mask = labels["noisy_mask"].bool()
        smoothing = run.get("label_smoothing")
    else:
        data = load_dataset(dataset or "digits", data_root, 0)
        mean, std = (data.mean, data.std) if preprocessing is None else preprocessing.resolve(
            data.mean, data.std)
        y_train = clean = data.y_train
        mask = torch.zeros(data.n_train, dtype=torch.bool)
        smoothing = None
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev)
    norm = lambda x: normalize(x.to(dev), mean_t, std_t)
    return RunData(
        x_train=norm(data.x_train), y_train=y_train.to(dev), clean_labels=clean.to(dev),
        noisy_mask=mask.to(dev), x_test=norm(data.x_test), y_test=data.y_test.to(dev),
        mean=mean_t, std=std_t, num_classes=data.num_classes, smoothing=smoothing,
    )


def load_subset(run_dir: str | Path, subset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized inputs and labels of a subset of a contract run, in split order."""
    x, y, _ = load_run_data(run_dir).subset(subset)
    return x, y
