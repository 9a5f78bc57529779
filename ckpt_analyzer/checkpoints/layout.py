"""The run folder's layout: every path rule of a run directory (docs/checkpoints.md), in one place.

::

    <run>/run.json                         the manifest             (:func:`run_json_path`)
    <run>/labels.safetensors               labels trained on        (:func:`labels_path`)
    <run>/.writer.lock                     the one writer's lock    (:func:`lock_path`)
    <run>/done                             the run is complete      (:func:`done_path`)
    <run>/analysis.h5                      the default cube         (:func:`default_cube`)
    <run>/analysis.shard-<i>-of-<n>.h5     a shard's default cube   (:func:`default_cube`)
    <run>/w<width>/                        one folder per width     (:func:`width_dir`)
    <run>/w<width>/e<epoch:05d>.safetensors  one checkpoint         (:func:`checkpoint_path`)
    <run>/w<width>/done                    the width is complete    (:func:`done_path`)
    <run>/w<width>/train_state.safetensors ckpt-train's resume point (:func:`train_state_path`)
    <name>.<8 hex>.tmp                     a file being written     (:func:`is_temporary`)

Pure path arithmetic and directory listings: nothing here reads a file's contents or imports
torch. Reading and writing the files is the job of the modules beside this one.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "CHECKPOINT_SUFFIX", "CKPT_RE", "CUBE_FILE", "DONE_FILE", "LABELS_FILE", "LOCK_FILE",
    "RUN_JSON", "START_FILES", "TMP_SUFFIX", "TRAIN_STATE_FILE", "checkpoint_epochs",
    "checkpoint_name", "checkpoint_path", "default_cube", "done_path", "has_checkpoint_files",
    "is_activity_entry", "is_checkpoint_temporary", "is_temporary", "is_width_dir_name",
    "labels_path", "lock_path", "run_json_path", "train_state_path", "width_dir",
    "width_dir_name",
]

RUN_JSON = "run.json"
LABELS_FILE = "labels.safetensors"
LOCK_FILE = ".writer.lock"
DONE_FILE = "done"
"""Completion markers: ``<run>/w<W>/done`` once width W has all its checkpoints, ``<run>/done``
once every planned width has."""
TRAIN_STATE_FILE = "train_state.safetensors"
CUBE_FILE = "analysis.h5"
CHECKPOINT_SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"

#: A contract checkpoint's path relative to its run folder (width and epoch as named groups).
CKPT_RE = re.compile(r"^w(?P<width>\d+)/e(?P<epoch>\d+)\.safetensors$")
_CKPT_NAME = re.compile(r"^e(\d+)\.safetensors$")
_WIDTH_DIR = re.compile(r"^w\d+$")
#: What a writer killed while creating its folder can leave before run.json (written last), and
#: the lock file: a folder holding only these is reused as if empty.
START_FILES = re.compile(r"^(\.writer\.lock|labels\.safetensors"
                         r"|(labels\.safetensors|run\.json)\.[0-9a-f]+\.tmp)$")


# ---------------------------------------------------------------- the run's own files
def run_json_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_JSON


def labels_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LABELS_FILE


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def default_cube(run_dir: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """The cube ``ckpt-analyze run`` writes without ``-o``: ``<run>/analysis.h5``, or for shard
    ``(i, n)`` of ``--shard i/n`` ``<run>/analysis.shard-<i>-of-<n>.h5``."""
    if shard is None:
        return Path(run_dir) / CUBE_FILE
    stem, dot, ext = CUBE_FILE.rpartition(".")
    return Path(run_dir) / f"{stem}.shard-{shard[0]}-of-{shard[1]}{dot}{ext}"


def done_path(run_dir: str | Path, width: int | None = None) -> Path:
    """The completion marker of ``width`` (None: of the whole run)."""
    folder = Path(run_dir) if width is None else width_dir(run_dir, width)
    return folder / DONE_FILE


# ---------------------------------------------------------------- widths and checkpoints
def width_dir_name(width: int) -> str:
    return f"w{width}"


def is_width_dir_name(name: str) -> bool:
    """Whether ``name`` is a width folder's name (``w`` and digits)."""
    return _WIDTH_DIR.match(name) is not None


def width_dir(run_dir: str | Path, width: int) -> Path:
    return Path(run_dir) / width_dir_name(width)


def checkpoint_name(epoch: int) -> str:
    return f"e{epoch:05d}{CHECKPOINT_SUFFIX}"


def checkpoint_path(run_dir: str | Path, width: int, epoch: int) -> Path:
    """``<run>/w<width>/e<epoch:05d>.safetensors``."""
    return width_dir(run_dir, width) / checkpoint_name(epoch)


def train_state_path(run_dir: str | Path, width: int) -> Path:
    """``ckpt-train``'s resume point of ``width`` (removed once the width is trained)."""
    return width_dir(run_dir, width) / TRAIN_STATE_FILE


def checkpoint_epochs(run_dir: str | Path, width: int) -> list[int]:
    """Epochs of the checkpoint files of ``width`` by their names, sorted ([] without its
    folder); the files are not read."""
    folder = width_dir(run_dir, width)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(m.group(1)) for m in map(_CKPT_NAME.match, names) if m)


def has_checkpoint_files(run_dir: str | Path) -> bool:
    """Whether any file lies in a folder ``w*`` of the run (a checkpoint or one being written)."""
    return any(p.is_file() for p in Path(run_dir).glob("w*/*"))


# ---------------------------------------------------------------- files being written
def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary of an atomic write (``*.tmp``): never a result."""
    return name.endswith(TMP_SUFFIX)


def is_checkpoint_temporary(name: str) -> bool:
    """A checkpoint's temporary (``e00003.safetensors.<hex>.tmp``) in a width folder."""
    return is_temporary(name) and f"{CHECKPOINT_SUFFIX}." in name[:-len(TMP_SUFFIX)]


def is_activity_entry(name: str, is_dir: bool) -> bool:
    """Whether a top-level entry of a run folder shows a writer's activity: a width folder
    (checkpoints, their temporaries, resume state, done markers inside) or the run's ``done``
    (what ``--follow``'s idle clock scans)."""
    return name == DONE_FILE or (is_dir and is_width_dir_name(name))

