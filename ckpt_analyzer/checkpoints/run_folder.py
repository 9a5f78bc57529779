"""The run folder's manifest, labels and completion markers, checked before use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, CkptError

if TYPE_CHECKING:
    import torch
from .files import LABELS_FORMAT, RUN_FORMAT, read_header, read_state_dict, save_tensors
from .layout import LABELS_FILE, done_path, labels_path, run_json_path


def read_run_json(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a contract run, or None for a foreign folder."""
    path = run_json_path(run_dir)
    if not path.exists():
        return None
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CkptError(f"unreadable manifest ({exc})", path) from None
    if not isinstance(run, dict):
        raise CkptError(f"not a ckpt-analyzer run manifest (a JSON {type(run).__name__}, not an "
                        "object)", path)
    if run.get("format") != RUN_FORMAT:
        raise CkptError(f"not a ckpt-analyzer run manifest (format {run.get('format')!r})", path)
    check_manifest(run, path)
    return run


def dataset_manifest(name: str, root: str | Path | None, split_seed: int, data: Any) -> dict[str, Any]:
    """run.json's ``dataset`` entry for a loaded :class:`~ckpt_analyzer.data.ImageData`."""
    return {
        "name": name,
        "root": None if root is None else str(Path(root).resolve()),
        "split_seed": split_seed,
        "n_train": int(data.n_train),
        "n_test": int(data.n_test),
        "num_classes": int(data.num_classes),
        "in_channels": int(data.in_channels),
        "image_size": int(data.image_size),
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
    }


def mark_done(run_dir: str | Path, width: int | None = None, **info: Any) -> Path:
    """Write the completion marker of ``width`` (None: of the whole run): a small JSON file
    written atomically after the width's (the run's) last checkpoint."""
    from .. import __version__
    from .._atomic import atomic_write_json

    path = done_path(run_dir, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": "ckpt-analyzer.done/1", "version": __version__,
            **({} if width is None else {"width": width}), **info}
    atomic_write_json(path, body)
    return path


def is_done(run_dir: str | Path, width: int | None = None) -> bool:
    """Whether ``width`` (None: the whole run) carries its completion marker."""
    return done_path(run_dir, width).is_file()


def check_manifest(run: Mapping[str, Any], path: str | Path) -> None:
    """CkptError naming the key when the manifest's dataset block cannot describe the data."""
    import math

    ds = run.get("dataset")
    if ds is None:
        raise CkptError("missing key 'dataset'", path)
    if not isinstance(ds, dict):
        raise CkptError(f"'dataset' must be an object (got {type(ds).__name__})", path)
    if not isinstance(ds.get("name"), str) or not ds["name"]:
        raise CkptError(f"'dataset.name' must be a dataset name (got {ds.get('name')!r})", path)
    if not isinstance(ds.get("root"), (str, type(None))):
        raise CkptError(f"'dataset.root' must be a path or null (got {ds['root']!r})", path)
    seed = ds.get("split_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise CkptError(f"'dataset.split_seed' must be an integer in [0, 2**64) (got {seed!r})",
                        path)
    for key in ("mean", "std"):
        vals = ds.get(key)
        if not isinstance(vals, list) or not vals or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in vals):
            raise CkptError(f"'dataset.{key}' must be a non-empty list of finite numbers "
                            f"(got {vals!r})"[:200], path)
    if len(ds["mean"]) != len(ds["std"]):
        raise CkptError(f"'dataset.mean' has {len(ds['mean'])} channels, 'dataset.std' "
                        f"{len(ds['std'])}", path)
    if any(v <= 0 for v in ds["std"]):
        raise CkptError(f"'dataset.std' must be positive (got {ds['std']})", path)
    smoothing = run.get("label_smoothing")
    if smoothing is not None and not isinstance(smoothing, dict):
        raise CkptError(f"'label_smoothing' must be null or an object (got {smoothing!r})", path)


def check_labels(labels: Mapping[str, torch.Tensor], n_train: int, num_classes: int,
                 path: str | Path) -> None:
    """CkptError naming the tensor when the labels do not describe ``n_train`` points of
    ``num_classes`` classes (lengths, integer dtype, range, a mask consistent with the
    labels)."""
    import torch

    for key in ("train_labels", "clean_labels", "noisy_mask"):
        t = labels[key]
        if t.dim() != 1 or len(t) != n_train:
            raise CkptError(f"'{key}' has shape {tuple(t.shape)}, the dataset has {n_train} "
                            "training points", path)
    for key in ("train_labels", "clean_labels"):
        t = labels[key]
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise CkptError(f"'{key}' must hold integer class ids (got {t.dtype})", path)
        if n_train and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise CkptError(f"'{key}' holds class {bad}, outside 0..{num_classes - 1}", path)
    clean = ~labels["noisy_mask"].bool()
    differ = labels["train_labels"] != labels["clean_labels"]
    if bool((differ & clean).any()):
        i = int(torch.nonzero(differ & clean)[0])
        raise CkptError(f"'noisy_mask' marks point {i} clean but its trained and clean labels "
                        "differ", path)


def save_labels(run_dir: str | Path, train_labels: Any, clean_labels: Any, noisy_mask: Any) -> None:
    import torch

    save_tensors(
        labels_path(run_dir),
        {
            "train_labels": torch.as_tensor(train_labels, dtype=torch.int64),
            "clean_labels": torch.as_tensor(clean_labels, dtype=torch.int64),
            "noisy_mask": torch.as_tensor(noisy_mask).to(torch.uint8),
        },
        {"format": LABELS_FORMAT},
    )


def read_labels(run_dir: str | Path) -> dict[str, torch.Tensor]:
    path = labels_path(run_dir)
    if not path.exists():
        raise CkptError(f"missing {LABELS_FILE} of the run", path)
    _, meta = read_header(path)
    if meta.get("format") != LABELS_FORMAT:
        raise CheckpointError(f"not a labels file (format {meta.get('format')!r})", path)
    out = read_state_dict(path)
    for k in ("train_labels", "clean_labels", "noisy_mask"):
        if k not in out:
            raise CheckpointError(f"missing tensor '{k}'", path)
    mask = out["noisy_mask"]
    if mask.dtype.is_floating_point or mask.dtype.is_complex or (
            mask.numel() and not bool(((mask == 0) | (mask == 1)).all())):
        raise CkptError(f"'noisy_mask' must hold 0/1 flags (got {mask.dtype})", path)
    out["noisy_mask"] = mask.bool()
    return out
