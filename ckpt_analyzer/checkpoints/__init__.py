"""The checkpoint contract (docs/checkpoints.md): files, discovery, run folders, models, prefetch."""

from __future__ import annotations

from .discovery import CKPT_RE, CheckpointRef, Watcher, discover, pattern_regex, pattern_time_unit
from .files import (
    CKPT_FORMAT,
    INT_META,
    LABELS_FORMAT,
    PICKLE_EXTS,
    REQUIRED_META,
    RUN_FORMAT,
    SafetensorsState,
    checkpoint_path,
    load_state_into,
    model_keys,
    open_state,
    parse_metadata,
    read_header,
    read_state_dict,
    save_tensors,
    strip_prefix,
)
from .lock import LOCK_FILE, RunLock, create_run_json, only_start_files, remove_stale_start_files
from .models import build_model_for, load_model, load_subset, screen_widths
from .prefetch import prefetch
from .run_folder import (
    DONE_FILE,
    check_labels,
    check_manifest,
    dataset_manifest,
    is_done,
    mark_done,
    read_labels,
    read_run_json,
    save_labels,
)

__all__ = ["CKPT_FORMAT", "CKPT_RE", "DONE_FILE", "INT_META", "LABELS_FORMAT", "LOCK_FILE",
    "PICKLE_EXTS", "REQUIRED_META", "RUN_FORMAT", "CheckpointRef", "RunLock", "SafetensorsState",
    "Watcher", "build_model_for", "check_labels", "check_manifest", "checkpoint_path",
    "create_run_json", "dataset_manifest", "discover", "is_done", "load_model", "load_state_into",
    "load_subset", "mark_done", "model_keys", "only_start_files", "open_state", "parse_metadata",
    "pattern_regex", "pattern_time_unit", "prefetch", "read_header", "read_labels",
    "read_run_json", "read_state_dict", "remove_stale_start_files", "save_labels", "save_tensors", "screen_widths",
    "strip_prefix"]

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
