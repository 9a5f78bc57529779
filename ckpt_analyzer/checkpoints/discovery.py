"""Finding a run's checkpoints: contract paths, foreign patterns, incremental watching."""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, CkptError, UsageError

if TYPE_CHECKING:
    pass
from .files import (
    BIN_INDEX_SUFFIX,
    CKPT_FORMAT,
    INDEX_SUFFIX,
    PICKLE_EXTS,
    not_regular,
    parse_metadata,
    read_header,
)
from .layout import CHECKPOINT_SUFFIX, CKPT_RE, checkpoint_path, is_temporary


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint on disk. ``error`` is set when it could not be validated."""

    width: int
    epoch: int
    path: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


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
        self.allow_pt = allow_pt
        self.exts = (CHECKPOINT_SUFFIX, *PICKLE_EXTS) if allow_pt else (CHECKPOINT_SUFFIX,)
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
        pickles = read = dcp_left = 0
        present = set()
        listed = sorted(root.rglob("*"))
        folders = _folder_checkpoints(listed) if self.pattern else {}
        for p in listed:
            if is_temporary(p.name):
                continue
            if folders and any(parent in folders for parent in p.parents):
                continue  # a shard or file of a folder checkpoint: the folder is the checkpoint
            if p in folders:
                kind, marker = folders[p]
                m = _folder_match(self.rx, root, p, marker)
                if m is None:
                    continue
                if kind != "hf-sharded" and not self.allow_pt:
                    dcp_left += 1
                    continue
                key, stamp = str(p), _folder_stamp(p)
                present.add(key)
                seen = self._seen.get(key)
                if seen is None or seen[0] != stamp:
                    ref = self._read_folder(p, kind, m)
                    seen = self._seen[key] = (stamp, ref, [])
                    read += 1
                files.append(seen[1])
                continue
            if p.suffix not in self.exts:
                pickles += p.suffix in PICKLE_EXTS and p.is_file()
                continue
            m = self.rx.match(p.relative_to(root).as_posix())
            if m is None:
                continue
            try:  # the file type, from stat alone: nothing that is not a regular file is opened
                st = p.stat()
                special = not_regular(st.st_mode)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    special = "symlink loop (too many levels of symbolic links)"
                elif p.is_symlink():
                    special = "broken symlink (its target does not exist)"
                else:
                    continue  # gone since it was listed
                try:
                    st = p.lstat()
                except OSError:
                    continue
            key, stamp = str(p), (st.st_size, st.st_mtime_ns)
            present.add(key)
            seen = self._seen.get(key)
            if seen is None or seen[0] != stamp:
                own: list[str] = []
                ref = (self._read(p, m, own) if special is None
                       else self._unreadable(p, m, special))
                seen = self._seen[key] = (stamp, ref, own)
                read += 1
            files.append(seen[1])
            notes.extend(seen[2])
        for gone in set(self._seen) - present:
            del self._seen[gone]
        refs = _merge(files, root, self.pattern, notes)
        if pickles:
            notes.append(f"{root}: {pickles} .pt/.pth file(s) not read (pass --allow-pt to read "
                         "them with torch.load(weights_only=True))")
        if dcp_left:
            notes.append(f"{root}: {dcp_left} folder checkpoint(s) of pickle-based files (a DCP "
                         ".metadata, .bin shards) not read (pass --allow-pt to read them: "
                         "torch.load(weights_only=True), DCP's metadata by a restricted "
                         "unpickler)")
        return refs, read

    def _read_folder(self, p: Path, kind: str, m: re.Match[str]) -> CheckpointRef:
        """A folder checkpoint's ref (validated: index and shard headers, or DCP metadata)."""
        from .foreign import ShardedSafetensorsState, folder_metadata

        width, epoch = _match_fields(m, self.width)
        meta: dict[str, Any] = {}
        try:
            raw = (ShardedSafetensorsState(p).metadata if kind == "hf-sharded"  # headers checked
                   else folder_metadata(p))
            meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
        except CheckpointError as exc:
            return CheckpointRef(width, epoch, str(p), {}, str(exc))
        return CheckpointRef(width, epoch, str(p), meta, None)

    def _unreadable(self, p: Path, m: re.Match[str], why: str) -> CheckpointRef:
        """The ref of a path named like a checkpoint that is no regular file (a FIFO, a device
        such as ``/dev/zero``, a folder, a symlink loop): its width and epoch from the name, the
        cause as its error, so it is recorded as a failure; it is never opened."""
        width, epoch = _match_fields(m, self.width) if self.pattern else (int(m["width"]),
                                                                        int(m["epoch"]))
        return CheckpointRef(width, epoch, str(p), {}, f"{p}: {why}")

    def _read(self, p: Path, m: re.Match[str], notes: list[str]) -> CheckpointRef:
        """One file's ref: width and epoch from its name, checked against its metadata."""
        pattern = self.pattern
        width, epoch = _match_fields(m, self.width) if pattern else (int(m["width"]),
                                                                   int(m["epoch"]))
        meta: dict[str, Any] = {}
        error = None
        if p.suffix == CHECKPOINT_SUFFIX:
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


def _folder_checkpoints(listed: Iterable[Path]) -> dict[Path, tuple[str, Path]]:
    """``{folder: (kind, marker file)}`` of the folder checkpoints among the listed paths: a
    folder holding a DCP ``.metadata`` ("dcp") or one ``*.safetensors.index.json``
    ("hf-sharded")."""
    from .foreign import DCP_METADATA

    out: dict[Path, tuple[str, Path]] = {}
    for p in listed:
        if p.name == DCP_METADATA:
            out[p.parent] = ("dcp", p)
        elif p.name.endswith(INDEX_SUFFIX) and out.get(p.parent, ("",))[0] != "dcp":
            out[p.parent] = ("hf-sharded", p)
        elif p.name.endswith(BIN_INDEX_SUFFIX) and p.parent not in out:
            out[p.parent] = ("hf-sharded-bin", p)
    # a folder checkpoint inside another (a DCP "model/" in an HF folder) is the outer's file
    return {d: v for d, v in out.items() if not any(q in out for q in d.parents)}


def _folder_match(rx: re.Pattern[str], root: Path, folder: Path, marker: Path
                  ) -> re.Match[str] | None:
    """The pattern's match of a folder checkpoint: of the folder's own path
    (``checkpoint-{step}``), of its index or ``.metadata`` (``.../model.safetensors.index.json``)
    or of a file in it (``checkpoint-{step}/*.safetensors`` names the shards: the folder is still
    one checkpoint)."""
    m = rx.match(folder.relative_to(root).as_posix()) or rx.match(
        marker.relative_to(root).as_posix())
    if m is None:
        try:
            children = sorted(folder.iterdir())
        except OSError:
            children = []
        m = next((c for c in (rx.match(q.relative_to(root).as_posix()) for q in children)
                  if c is not None), None)
    return m


def _folder_stamp(folder: Path) -> tuple[int, int]:
    """(total size, latest mtime_ns) of the files directly in a folder checkpoint (HF and DCP
    folders are flat): it changes when a shard is rewritten."""
    size = mtime = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return -1, -1
    for q in entries:
        try:
            st = q.stat()
        except OSError:
            continue
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


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
