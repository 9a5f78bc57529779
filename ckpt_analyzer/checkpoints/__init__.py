"""The checkpoint contract and the run folder (docs/checkpoints.md): its layout (every path
rule), files, discovery, run.json/labels/done markers, the writer lock, writing checkpoints
(:func:`write_checkpoint`, under ``RunWriter`` and the trainer), the run's data, models, prefetch.

Importing this package imports neither torch nor h5py."""

from __future__ import annotations

from .discovery import CheckpointRef, Watcher, discover, pattern_regex, pattern_time_unit
from .files import (
    CKPT_FORMAT,
    INT_META,
    LABELS_FORMAT,
    PICKLE_EXTS,
    REQUIRED_META,
    RUN_FORMAT,
    SafetensorsState,
    load_state_into,
    model_keys,
    open_state,
    parse_metadata,
    read_header,
    read_state_dict,
    save_tensors,
    strip_prefix,
)
from .layout import CKPT_RE, DONE_FILE, LOCK_FILE, checkpoint_path
from .lock import RunLock, create_run_json, only_start_files, remove_stale_start_files
from .models import build_model_for, load_model, screen_widths
from .prefetch import prefetch
from .run_data import RunData, load_run_data, load_subset
from .run_folder import (
    check_labels,
    check_manifest,
    dataset_manifest,
    is_done,
    mark_done,
    read_labels,
    read_run_json,
    save_labels,
)
from .write import checkpoint_metadata, write_checkpoint

__all__ = ["CKPT_FORMAT", "CKPT_RE", "DONE_FILE", "INT_META", "LABELS_FORMAT", "LOCK_FILE",
    "PICKLE_EXTS", "REQUIRED_META", "RUN_FORMAT", "CheckpointRef", "RunData", "RunLock",
    "SafetensorsState", "Watcher", "build_model_for", "check_labels",
    "check_manifest", "checkpoint_metadata", "checkpoint_path", "create_run_json",
    "dataset_manifest", "discover", "is_done", "load_model", "load_run_data",
    "load_state_into", "load_subset", "mark_done", "model_keys", "only_start_files",
    "open_state", "parse_metadata", "pattern_regex", "pattern_time_unit", "prefetch",
    "read_header", "read_labels", "read_run_json", "read_state_dict",
    "remove_stale_start_files", "save_labels", "save_tensors", "screen_widths", "strip_prefix",
    "write_checkpoint"]

# foreign formats and the key-matching report (issue 24)
from .files import LazyState, checkpoint_scalars, flatten_tensors, key_map
from .foreign import DCPState, ShardedSafetensorsState, folder_format
from .key_report import (
    KeyReport,
    fitting_widths,
    format_key_report,
    inspect_checkpoint,
    key_report,
)

__all__ += ["DCPState", "KeyReport", "LazyState", "ShardedSafetensorsState", "checkpoint_scalars",
            "fitting_widths", "flatten_tensors", "folder_format", "format_key_report",
            "inspect_checkpoint", "key_map", "key_report"]
