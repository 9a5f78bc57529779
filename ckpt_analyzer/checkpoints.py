"""The checkpoint contract (docs/checkpoints.md): atomic writes, discovery, validated reads, prefetch."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ._atomic import atomic_write_bytes
from .errors import CheckpointError, CkptError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

CKPT_FORMAT = "ckpt-analyzer.ckpt/1"
LABELS_FORMAT = "ckpt-analyzer.labels/1"
RUN_FORMAT = "ckpt-analyzer.run/1"
REQUIRED_META = (
    "format", "arch", "width", "epoch", "step", "num_classes", "in_channels", "image_size",
    "train_loss", "train_error",
)
INT_META = ("width", "epoch", "step", "num_classes", "in_channels", "image_size")
T = TypeVar("T")
R = TypeVar("R")
CKPT_RE = re.compile(r"^w(?P<width>\d+)/e(?P<epoch>\d+)\.safetensors$")


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any]) -> None:
    """Atomically write a safetensors file; metadata values are stringified."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save(flat, metadata=meta))


def checkpoint_path(run_dir: str | Path, width: int, epoch: int) -> Path:
    return Path(run_dir) / f"w{width}" / f"e{epoch:05d}.safetensors"


# ---------------------------------------------------------------- reading
def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors file's framing; return (tensor header, metadata)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError("not a safetensors file (shorter than its 8-byte header)", path)
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > 100_000_000:
                raise CheckpointError("not a safetensors file (bad header length)", path)
            head = fh.read(n)
            if 8 + n > size and head.lstrip().startswith(b"{"):
                raise CheckpointError(f"truncated: {size} bytes, shorter than its own header", path)
            if 8 + n > size:
                raise CheckpointError("not a safetensors file (bad header length)", path)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror})", path) from None
    try:
        header = json.loads(head.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError("not a safetensors file (header is not JSON)", path) from None
    meta = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"not a safetensors file (bad entry '{name}')", path) from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"truncated: {size} bytes, header promises {8 + n + end}", path
        )
    return header, meta


def parse_metadata(meta: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Check a contract checkpoint's metadata and convert numbers."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"missing metadata {', '.join(missing)}", path)
    if meta["format"] != CKPT_FORMAT:
        raise CheckpointError(f"unsupported format '{meta['format']}' (expected {CKPT_FORMAT})", path)
    out: dict[str, Any] = dict(meta)
    try:
        for k in INT_META:
            out[k] = int(meta[k])
        for k in ("train_loss", "train_error"):
            out[k] = float(meta[k])
    except ValueError as exc:
        raise CheckpointError(f"bad metadata value ({exc})", path) from None
    return out


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint on disk. ``error`` is set when it could not be validated."""

    width: int
    epoch: int
    path: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


PICKLE_EXTS = (".pt", ".pth", ".bin", ".ckpt")
"""Pickle-based checkpoint files: read only with ``allow_pt`` and ``torch.load(weights_only=True)``."""


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """'w{width}/ckpt_{epoch}.safetensors' -> a regex with named integer groups.

    The time field is ``{epoch}`` or ``{step}`` (exactly one); ``{width}`` is optional (a
    pattern without it is a single model). ``*`` matches within one path component."""
    has_epoch, has_step = "{epoch}" in pattern, "{step}" in pattern
    if has_epoch == has_step:
        why = "both" if has_epoch else "neither"
        raise UsageError(f"--pattern '{pattern}' has {why} {{epoch}} and {{step}}: name exactly "
                         "one time field, e.g. 'w{width}/ckpt_{epoch}.safetensors' or "
                         "'checkpoint-{step}/model.safetensors'")
    for field_ in ("{width}", "{epoch}", "{step}"):
        if pattern.count(field_) > 1:
            raise UsageError(f"--pattern '{pattern}' names {field_} more than once")
    parts = re.split(r"(\{width\}|\{epoch\}|\{step\})", pattern)
    rx = "".join(
        f"(?P<{p[1:-1]}>\\d+)" if p in ("{width}", "{epoch}", "{step}")
        else re.escape(p).replace("\\*", "[^/]*")
        for p in parts
    )
    return re.compile("^" + rx + "$")


def pattern_time_unit(pattern: str | None) -> str:
    """``"step"`` for a pattern with ``{step}``, else ``"epoch"``."""
    return "step" if pattern and "{step}" in pattern else "epoch"


def _match_fields(m: re.Match[str], width: int) -> tuple[int, int]:
    """(width, time) of a pattern match; ``width`` where the pattern has no ``{width}``."""
    g = m.groupdict()
    time = g["epoch"] if g.get("epoch") is not None else g["step"]
    return (int(g["width"]) if g.get("width") is not None else width), int(time)


def discover(run_dir: str | Path, pattern: str | None = None,
             allow_pt: bool = False, width: int = 1,
             warnings: list[str] | None = None) -> list[CheckpointRef]:
    """All checkpoints below ``run_dir`` sorted by (width, epoch).

    Contract checkpoints take width and epoch from their metadata (it wins over a file name
    that says otherwise, with a warning). With ``pattern`` (foreign folders), paths matching it
    supply width and epoch (or step: the ref's ``epoch`` is then the step) where metadata lacks
    them; ``width`` is the width of a pattern without ``{width}``. A file that cannot be
    validated is returned with ``error`` set, so the caller can skip and report it. Two files
    claiming the same (width, epoch): the one at the contract's own path is kept and the other
    skipped; when neither is, the pair is returned as one ref with ``error`` set. Each such
    decision appends a line to ``warnings`` (when given), as do ``.pt``/``.pth`` files left
    unread without ``allow_pt``.
    """
    return Watcher(run_dir, pattern, allow_pt, width).poll(warnings)[0]


class Watcher:
    """:func:`discover`, incrementally: each :meth:`poll` lists the folder again but reads
    (validates) only files it has not seen with the same size and mtime, so a followed run's
    known checkpoints are not re-read. ``*.tmp`` files are ignored: checkpoints appear by atomic
    rename, so a visible checkpoint file is complete."""

    def __init__(self, run_dir: str | Path, pattern: str | None = None, allow_pt: bool = False,
                 width: int = 1) -> None:
        self.root = Path(run_dir)
        self.pattern = pattern
        self.rx = pattern_regex(pattern) if pattern else CKPT_RE
        self.exts = (".safetensors", *PICKLE_EXTS) if allow_pt else (".safetensors",)
        self.width = width
        #: path -> ((size, mtime_ns), its ref, its notes) of every checkpoint file read so far
        self._seen: dict[str, tuple[tuple[int, int], CheckpointRef, list[str]]] = {}

    def poll(self, warnings: list[str] | None = None) -> tuple[list[CheckpointRef], int]:
        """(every checkpoint now on disk, as :func:`discover` returns them; how many files
        were new or changed since the last poll, i.e. read this time)."""
        root = self.root
        if not root.is_dir():
            raise CkptError("no such run folder", root)
        notes: list[str] = [] if warnings is None else warnings
        files: list[CheckpointRef] = []
        pickles = read = 0
        present = set()
        for p in sorted(root.rglob("*")):
            if p.name.endswith(".tmp") or not p.is_file():
                continue
            if p.suffix not in self.exts:
                pickles += p.suffix in PICKLE_EXTS
                continue
            m = self.rx.match(p.relative_to(root).as_posix())
            if m is None:
                continue
            try:
                st = p.stat()
            except OSError:  # gone since it was listed
                continue
            key, stamp = str(p), (st.st_size, st.st_mtime_ns)
            present.add(key)
            seen = self._seen.get(key)
            if seen is None or seen[0] != stamp:
                own: list[str] = []
                seen = self._seen[key] = (stamp, self._read(p, m, own), own)
                read += 1
            files.append(seen[1])
            notes.extend(seen[2])
        for gone in set(self._seen) - present:
            del self._seen[gone]
        refs = _merge(files, root, self.pattern, notes)
        if pickles:
            notes.append(f"{root}: {pickles} .pt/.pth file(s) not read (pass --allow-pt to read "
                         "them with torch.load(weights_only=True))")
        return refs, read

    def _read(self, p: Path, m: re.Match[str], notes: list[str]) -> CheckpointRef:
        """One file's ref: width and epoch from its name, checked against its metadata."""
        pattern = self.pattern
        width, epoch = _match_fields(m, self.width) if pattern else (int(m["width"]),
                                                                   int(m["epoch"]))
        meta: dict[str, Any] = {}
        error = None
        if p.suffix == ".safetensors":
            try:
                _, raw = read_header(p)
                if raw.get("format") == CKPT_FORMAT or pattern is None:
                    meta = parse_metadata(raw, p)
                    if (meta["width"], meta["epoch"]) != (width, epoch):
                        notes.append(f"{p}: metadata says width {meta['width']} epoch "
                                     f"{meta['epoch']}, the file name width {width} epoch "
                                     f"{epoch}; the metadata wins")
                    width, epoch = meta["width"], meta["epoch"]
                else:
                    meta = dict(raw)
            except CheckpointError as exc:
                error = str(exc)
        return CheckpointRef(width, epoch, str(p), meta, error)


def _merge(files: Iterable[CheckpointRef], root: Path, pattern: str | None,
           notes: list[str]) -> list[CheckpointRef]:
    """One ref per (width, epoch) from the files' refs (in path order); see :func:`discover`."""
    refs: dict[tuple[int, int], CheckpointRef] = {}
    for ref in files:
        width, epoch, p, error = ref.width, ref.epoch, ref.path, ref.error
        key = (width, epoch)
        old = refs.get(key)
        if old is None:
            refs[key] = ref
            continue
        if error is not None:  # an unreadable file does not displace a readable one
            notes.append(f"{p}: skipped, unreadable and width {width} epoch {epoch} is also "
                         f"in {old.path}")
            continue
        clash = f"two checkpoints for width {width} epoch {epoch}"
        if old.error is not None and clash not in old.error:
            notes.append(f"{old.path}: skipped, unreadable and width {width} epoch {epoch} is "
                         f"also in {p}")
            refs[key] = ref
            continue
        own = str(checkpoint_path(root, width, epoch)) if pattern is None else None
        if old.error is None and own in (old.path, str(p)):
            keep, drop = (old, ref) if old.path == own else (ref, old)
            notes.append(f"{drop.path}: skipped, it also claims width {width} epoch {epoch}; "
                         f"measuring {keep.path}")
            refs[key] = keep
            continue
        if old.error is None:
            refs[key] = CheckpointRef(width, epoch, old.path, old.metadata,
                                      f"{old.path}: {clash} ({p}); neither is measured")
        notes.append(f"{p}: {clash} ({old.path}); neither is measured")
    return [refs[k] for k in sorted(refs)]


def read_state_dict(path: str | Path, device: str | torch.device = "cpu",
                    allow_pt: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint. Pickle-based files (``.pt``, ``.pth``, ``.bin``, Lightning
    ``.ckpt``) only with ``allow_pt`` and never unpickled beyond
    ``torch.load(weights_only=True)``; a dict holding ``state_dict`` (Lightning, many scripts)
    gives that entry, which a Lightning ``.ckpt`` must have."""
    import torch

    path = Path(path)
    if path.suffix in PICKLE_EXTS:
        if not allow_pt:
            raise CheckpointError("pickle-based checkpoints are read only with --allow-pt", path)
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load with weights_only=True ({exc})".splitlines()[0],
                                  path) from None
        if path.suffix == ".ckpt" and not (isinstance(obj, dict) and "state_dict" in obj):
            found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"Lightning checkpoint without 'state_dict' (found: {found})", path)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError("not a state_dict of tensors", path)
        return obj
    read_header(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"cannot read tensors ({exc})".splitlines()[0], path) from None


def _sample(keys: Iterable[str], n: int = 4) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(f"'{k}'" for k in keys[:n]) + more


def strip_prefix(state: Mapping[str, T], expected: Iterable[str], prefix: str | None = None,
                 path: str | Path = "") -> dict[str, T]:
    """``state`` with a module prefix removed so that its keys are the model's (``expected``).

    With ``prefix`` ('model' or 'model.'), keys under it are kept without it and the others
    dropped; a prefix that matches no key is an error naming the expected and found keys.
    Without it, a state that already holds every expected key is returned as is; otherwise the
    prefix under which every expected key appears (Lightning's ``model.``, DDP's ``module.``,
    ``torch.compile``'s ``_orig_mod.``) is found and removed; two such prefixes are an error."""
    want = list(expected)
    if prefix:
        p = prefix if prefix.endswith(".") else prefix + "."
        sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if not sub:
            raise CheckpointError(f"prefix '{p}' matches no key: the model expects "
                                  f"{_sample(want)}; the file has {_sample(state)}", path)
        return sub
    if not want or all(k in state for k in want):
        return dict(state)
    first = want[0]
    found = sorted({k[:len(k) - len(first)] for k in state if k.endswith("." + first)})
    fits = [p for p in found if all(p + k in state for k in want)]
    if len(fits) > 1:
        raise CheckpointError(f"several module prefixes fit the model ({', '.join(map(repr, fits))}): "
                              "choose one with --prefix", path)
    if fits:
        p = fits[0]
        return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return dict(state)


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                    prefix: str | None = None) -> None:
    """Copy ``state`` into ``model`` after checking that every key and shape fits (a module
    prefix is removed first, see :func:`strip_prefix`)."""
    own = model.state_dict()
    state = strip_prefix(state, own, prefix, path)
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"does not fit the model: missing tensor '{key}' "
                                  f"(model wants {tuple(value.shape)}; the file has "
                                  f"{_sample(state)})", path)
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"does not fit the model: '{key}' has shape {tuple(state[key].shape)}, "
                f"model wants {tuple(value.shape)}", path)
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"does not fit the model: unexpected tensor '{extra[0]}'", path)
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- run folders
def read_run_json(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a contract run, or None for a foreign folder."""
    path = Path(run_dir) / "run.json"
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


DONE_FILE = "done"
"""Completion markers: ``<run>/w<W>/done`` once width W has all its checkpoints, ``<run>/done``
once every planned width has. Small JSON files written atomically after the last checkpoint."""


def mark_done(run_dir: str | Path, width: int | None = None, **info: Any) -> Path:
    """Write the completion marker of ``width`` (None: of the whole run)."""
    from . import __version__
    from ._atomic import atomic_write_json

    folder = Path(run_dir) if width is None else Path(run_dir) / f"w{width}"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"format": "ckpt-analyzer.done/1", "version": __version__,
            **({} if width is None else {"width": width}), **info}
    atomic_write_json(folder / DONE_FILE, body)
    return folder / DONE_FILE


def is_done(run_dir: str | Path, width: int | None = None) -> bool:
    """Whether ``width`` (None: the whole run) carries its completion marker."""
    folder = Path(run_dir) if width is None else Path(run_dir) / f"w{width}"
    return (folder / DONE_FILE).is_file()
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
        Path(run_dir) / "labels.safetensors",
        {
            "train_labels": torch.as_tensor(train_labels, dtype=torch.int64),
            "clean_labels": torch.as_tensor(clean_labels, dtype=torch.int64),
            "noisy_mask": torch.as_tensor(noisy_mask).to(torch.uint8),
        },
        {"format": LABELS_FORMAT},
    )


def read_labels(run_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / "labels.safetensors"
    if not path.exists():
        raise CkptError("missing labels.safetensors of the run", path)
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


# ---------------------------------------------------------------- models
def screen_widths(refs: list[CheckpointRef], meta_of: Callable[[CheckpointRef], Mapping[str, Any]],
                  model: str | None = None) -> tuple[list[CheckpointRef], list[CheckpointRef]]:
    """Split ``refs`` into those whose model can be built and those whose (metadata) width would
    build an absurdly large model (``error`` set, with the estimated size), checked on torch's
    meta device without allocating."""
    from .models import check_model_size

    verdict: dict[tuple[Any, ...], str | None] = {}
    keep, rejected = [], []
    for ref in refs:
        if ref.error is not None:
            keep.append(ref)
            continue
        meta = meta_of(ref)
        key = (model or meta.get("arch"), ref.width, meta.get("num_classes"), meta.get("in_channels"))
        if key not in verdict:
            verdict[key] = None
            try:
                check_model_size(str(key[0]), int(ref.width), int(meta["num_classes"]),
                                 int(meta["in_channels"]), what="metadata width")
            except (UsageError, KeyError, TypeError, ValueError) as exc:
                verdict[key] = str(exc)
        if verdict[key] is None:
            keep.append(ref)
        else:
            rejected.append(dataclasses.replace(ref, error=f"{ref.path}: {verdict[key]}; skipped"))
    return keep, rejected


def build_model_for(meta: Mapping[str, Any], model: str | None = None) -> nn.Module:
    """A fresh model for a checkpoint's metadata (``model`` overrides ``arch``)."""
    from .models import build_model

    return build_model(model or meta["arch"], int(meta["width"]), int(meta["num_classes"]),
                       int(meta["in_channels"]))


def load_model(path: str | Path, device: str = "cpu", model: str | None = None,
               pattern: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None, width: int | None = None,
               prefix: str | None = None) -> nn.Module:
    """One checkpoint's model, weights loaded, eval mode (the README's Python API)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        _, raw = read_header(path)
    else:
        raw = {}
    if raw.get("format") == CKPT_FORMAT:
        meta: dict[str, Any] = parse_metadata(raw, path)
    else:
        if model is None:
            raise CheckpointError("no ckpt-analyzer metadata: pass model='module:factory'", path)
        meta = dict(raw)
        if pattern:
            m = None
            parts = path.resolve().parts
            for i in range(len(parts)):
                m = pattern_regex(pattern).match("/".join(parts[i:]))
                if m:
                    break
            if m is None:
                raise CheckpointError(f"path does not match pattern '{pattern}'", path)
            meta.setdefault("width", _match_fields(m, width or 1)[0])
        for key, val in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("width", width)):
            if val is not None:
                meta[key] = val
        missing = [k for k in ("width", "num_classes", "in_channels") if k not in meta]
        if missing:
            raise CheckpointError(f"cannot build a model: unknown {', '.join(missing)}", path)
    net = build_model_for(meta, model)
    load_state_into(net, read_state_dict(path, allow_pt=path.suffix != ".safetensors"), path, prefix)
    return net.to(torch.device(device)).eval()


def load_subset(run_dir: str | Path, subset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized inputs and labels of a subset of a contract run, in split order."""
    from .data.run import load_run_data

    data = load_run_data(run_dir)
    x, y, _ = data.subset(subset)
    return x, y


# ---------------------------------------------------------------- prefetch


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R | BaseException]]:
    """Yield ``(item, load(item))`` while the next ``depth`` items load in a background thread.

    Errors are yielded in place of the result so the caller can skip a bad item."""
    def safe(item: T) -> R | BaseException:
        try:
            return load(item)
        except Exception as exc:  # handed to the consumer
            return exc

    pending: deque[tuple[T, Future[R | BaseException]]] = deque()
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-prefetch") as pool:
        for item in it:
            pending.append((item, pool.submit(safe, item)))
            if len(pending) > depth:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()
