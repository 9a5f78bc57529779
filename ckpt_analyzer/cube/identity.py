"""What a cube measured: the identity of its run and of every measured checkpoint.

A cube records

- in its root attributes (so it survives in the HDF5 file and is rebuilt with the journal)
  ``run_identity``: JSON ``{"run_json": sha256, "labels": sha256}`` of the run folder's
  ``run.json`` and ``labels.safetensors`` (``null`` digests for a foreign folder without them);
- in its journal (``checkpoints``, JSON ``{"<width>/<epoch>": [size, mtime_ns, digest,
  ctime_ns, inode]}``) and, at every materialization, in the HDF5 group ``checkpoints/`` (one
  row per checkpoint, :func:`~.hdf5.write_identities`), so identities survive ``merge`` and a
  lost journal: the identity of each checkpoint as it was when measured.

The digest (:func:`checkpoint_digest`) is exact and independent of how the file is laid out:
sha256 of the safetensors header parsed and canonicalized (``__metadata__`` and each tensor's
dtype and shape, ``json.dumps(sort_keys=True)``; data offsets left out) followed by every
tensor's bytes in name order. A trainer re-writing a checkpoint with the same tensors and
metadata (safetensors writes its keys in any order) gives the same digest; one changed byte of
any tensor gives another. Other files (``.pt``, or a safetensors file whose header cannot be
parsed) are digested whole. Hashing reads the whole file (sha256 at ~1 GB/s: ~50 ms for 45 MB,
measured), so it is done once per file version: a checkpoint whose size, mtime, ctime and
inode are those recorded keeps its recorded digest without being read (a ``touch`` or copy
changes the ctime and has the file hashed again).

:func:`check_run` refuses to add to a cube that was computed from another run (one line naming
what differs; ``overwrite`` empties the cube instead). :func:`check_checkpoints` finds the
checkpoints replaced since they were measured (size or digest changed), drops their cells so
they are measured again, and says so; a changed mtime alone (a copy, a ``touch``) is accepted and
recorded. Cubes written before identities existed adopt the current ones; their stored
``run_json`` text is still compared. Identities recorded by earlier versions (a digest of the
header and both 64 KiB ends of the data, without a ``scheme:`` prefix) are compared with that
digest once and then replaced by the exact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings_diff
from ..errors import UsageError

if TYPE_CHECKING:
    from ..checkpoints import CheckpointRef
    from .journal import Cube

SAMPLE = 64 * 1024
#: Prefixes of the digests: canonical safetensors header + tensors, and a whole file.
TENSORS, WHOLE = "st1", "file1"
_BLOCK = 1 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit on the header


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a whole (small) file; None when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        _update(h, fh, None)
    return h.hexdigest()


def run_identity(run_dir: str | os.PathLike[str]) -> dict[str, str | None]:
    root = Path(run_dir)
    return {"run_json": file_digest(root / "run.json"),
            "labels": file_digest(root / "labels.safetensors")}


def _update(h: Any, fh: Any, count: int | None) -> None:
    """Feed ``count`` bytes (None: all) from ``fh``'s position into ``h``, 1 MiB at a time."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    left = count
    while left is None or left > 0:
        n = fh.readinto(view if left is None or left >= _BLOCK else view[:left])
        if not n:
            if left:
                raise OSError(f"file ended {left} bytes early")
            return
        h.update(view[:n])
        if left is not None:
            left -= n


def _tensor_entries(header: Any, data_size: int) -> dict[str, tuple[str, list[int], int, int]]:
    """``name -> (dtype, shape, begin, end)`` of a parsed safetensors header; ValueError when it
    is not one."""
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (not isinstance(dtype, str) or not isinstance(shape, list)
                or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ValueError(f"tensor {name!r} has a malformed entry")
        out[name] = (dtype, shape, offsets[0], offsets[1])
    return out


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """``st1:<sha256>`` of a safetensors checkpoint's canonical metadata and tensors (in name
    order; independent of the order of keys and of tensor data in the file), or ``file1:<sha256>``
    of the whole file for other files. Raises OSError when it cannot be read."""
    p = Path(path)
    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if p.suffix == ".safetensors":
            head = fh.read(8)
            try:
                if len(head) != 8:
                    raise ValueError("shorter than its header size")
                (n,) = struct.unpack("<Q", head)
                if n > min(size - 8, _MAX_HEADER):
                    raise ValueError("header size out of range")
                header = json.loads(fh.read(n))
                entries = _tensor_entries(header, size - 8 - n)
            except (ValueError, UnicodeDecodeError):
                pass  # not a readable safetensors file: digested whole (reading it will fail)
            else:
                canon = json.dumps({"__metadata__": header.get("__metadata__"),
                                    "tensors": {k: [d, s] for k, (d, s, _, _) in
                                                entries.items()}},
                                   sort_keys=True, separators=(",", ":")).encode()
                h = hashlib.sha256(b"ckpt-analyzer checkpoint digest 1\n")
                h.update(struct.pack("<Q", len(canon)))
                h.update(canon)
                for name in sorted(entries):
                    _, _, begin, end = entries[name]
                    h.update(struct.pack("<Q", end - begin))
                    fh.seek(8 + n + begin)
                    _update(h, fh, end - begin)
                return f"{TENSORS}:{h.hexdigest()}"
            fh.seek(0)
        h = hashlib.sha256()
        _update(h, fh, None)
        return f"{WHOLE}:{h.hexdigest()}"


def legacy_digest(path: str | os.PathLike[str]) -> str:
    """The digest identities of earlier versions recorded: sha256 of the safetensors header and
    the first and last 64 KiB of the data (order-dependent, sampled)."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        head = fh.read(8)
        h.update(head)
        if len(head) == 8 and p.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", head)
            h.update(fh.read(min(n, size)))
        h.update(fh.read(SAMPLE))
        if size > fh.tell() + SAMPLE:
            fh.seek(size - SAMPLE)
        h.update(fh.read(SAMPLE))
    return h.hexdigest()


def _stat_of(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def checkpoint_identity(path: str | os.PathLike[str]) -> list[Any]:
    """``[size, mtime_ns, digest, ctime_ns, inode]`` of one checkpoint file (stat taken first,
    so a file changed while it is hashed is hashed again next time)."""
    st = os.stat(path)
    size, mtime, ctime, ino = _stat_of(st)
    return [size, mtime, checkpoint_digest(path), ctime, ino]


def normalize(ident: Any) -> list[Any] | None:
    """An identity as stored (3 fields from earlier versions, 5 now) as 5 fields; None when it
    is not one."""
    if not isinstance(ident, list | tuple) or len(ident) not in (3, 5):
        return None
    out = list(ident) + [0, 0] * (len(ident) == 3)
    if not isinstance(out[2], str) or not all(isinstance(v, int) for v in (out[0], out[1],
                                                                           out[3], out[4])):
        return None
    return out


def is_legacy(ident: list[Any]) -> bool:
    return ":" not in str(ident[2])


def same_contents(a: list[Any], b: list[Any]) -> bool | None:
    """Whether two identities say the same contents (their digests: the file's size may differ,
    e.g. by the header's padding); None when they cannot be compared (one recorded by an
    earlier version, the other now) and their sizes agree."""
    if is_legacy(a) != is_legacy(b):
        return None if a[0] == b[0] else False
    if is_legacy(a):
        return bool(a[0] == b[0] and a[2] == b[2])
    return bool(a[2] == b[2])


def identities_of(value: Any) -> dict[str, list[Any]]:
    """The ``{"<width>/<epoch>": identity}`` map stored in a journal (JSON text) or a cube."""
    obj = _loads(value)
    if not isinstance(obj, Mapping):
        return {}
    out = {}
    for k, v in obj.items():
        ident = normalize(v)
        if ident is not None:
            out[str(k)] = ident
    return out


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def check_run(cube: Cube, run_dir: str | os.PathLike[str], overwrite: bool = False) -> bool:
    """Refuse (UsageError) a cube computed from another run than ``run_dir``; with
    ``overwrite`` empty the cube instead and return True. Records the run's identity."""
    root = cube.root()
    new = run_identity(run_dir)
    old = _loads(root.get("run_identity"))
    diffs: list[str] = []
    if isinstance(old, dict):
        for key, name in (("run_json", "run.json"), ("labels", "labels.safetensors")):
            if old.get(key) != new[key]:
                diffs.append(f"{name} differs" if old.get(key) and new[key]
                             else f"{name} {'missing' if old.get(key) else 'present'} here")
    if "run.json differs" in diffs or (not isinstance(old, dict) and root.get("run_json")):
        # name the settings that differ when the cube holds the manifest it was computed from
        here = Path(run_dir) / "run.json"
        try:
            text = here.read_text() if here.is_file() else ""
            a, b = json.loads(root.get("run_json") or "{}"), json.loads(text or "{}")
            keys = settings_diff(a, b, ignore=("version",)) if isinstance(a, dict) and \
                isinstance(b, dict) else []
        except ValueError:
            keys = []
        if keys:
            diffs = [d for d in diffs if d != "run.json differs"]
            diffs.insert(0, "run.json settings " + "; ".join(keys[:4])
                         + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
        elif not isinstance(old, dict) and text.strip() != str(root.get("run_json")).strip():
            diffs.insert(0, "run.json differs")
    if diffs and not overwrite:
        src = root.get("source")
        raise UsageError(f"this cube was computed from another run{f' ({src})' if src else ''}: "
                         f"{', '.join(diffs)}; use --overwrite to start it afresh, or -o another "
                         "cube", cube.path)
    if diffs:
        cube.reset()
    cube.set_root({"run_identity": json.dumps(new, sort_keys=True)})
    return bool(diffs)


def check_checkpoints(cube: Cube, refs: Iterable[CheckpointRef]) -> list[str]:
    """Record each readable checkpoint's identity; drop the cells of those replaced since
    they were measured (so they are measured again). Returns one warning line per replaced one.

    Works from the identities the cube holds, in its journal or (journal lost, or a merged cube)
    rebuilt from its HDF5 file."""
    known = identities_of(cube.extra("checkpoints"))
    current: dict[str, list[Any]] = dict(known)
    notes = []
    for ref in refs:
        if ref.error is not None:
            continue
        key = f"{ref.width}/{ref.epoch}"
        old = known.get(key)
        try:
            st = os.stat(ref.path)
            if old is not None and not is_legacy(old) and \
                    [old[0], old[1], old[3], old[4]] == _stat_of(st):
                continue  # this very file version was hashed before: its digest stands
            digest = checkpoint_digest(ref.path)
            same = None if old is None else same_contents(old, [st.st_size, 0, digest, 0, 0])
            if same is None and old is not None:  # recorded by an earlier version
                same = old[0] == st.st_size and legacy_digest(ref.path) == old[2]
        except OSError:
            continue  # reading it will fail and be recorded as such
        size, mtime, ctime, ino = _stat_of(st)
        if old is not None and not same:
            if cube.forget(ref.epoch, ref.width):
                notes.append(f"{ref.path}: replaced since it was measured (size {old[0]} -> "
                             f"{size}, content differs); measuring it again")
        current[key] = [size, mtime, digest, ctime, ino]
    if current != known:
        cube.set_extra("checkpoints", json.dumps(current, sort_keys=True))
    return notes
