"""What a cube measured: the identity of its run and of every measured checkpoint.

A cube records

- in its root attributes (so it survives in the HDF5 file and is rebuilt with the journal)
  ``run_identity``: JSON ``{"run_json": sha256, "labels": sha256}`` of the run folder's
  ``run.json`` and ``labels.safetensors`` (``null`` digests for a foreign folder without them);
- in its journal only (it can outgrow an HDF5 attribute) ``checkpoints``: JSON
  ``{"<width>/<epoch>": [size, mtime_ns, digest]}`` of each checkpoint as it was when
  measured. The digest (sha256) covers the safetensors header (tensor names, shapes, offsets
  and the metadata with its losses) and the first and last 64 KiB of the tensor data, so it
  costs two small reads per checkpoint and is computed on every run.

:func:`check_run` refuses to add to a cube that was computed from another run (one line naming
what differs; ``overwrite`` empties the cube instead). :func:`check_checkpoints` finds the
checkpoints replaced in place since they were measured (size or digest changed), drops their
cells so they are measured again, and says so; a changed mtime alone (a copy, a ``touch``) is
accepted and recorded. Cubes written before identities existed adopt the current ones; their
stored ``run_json`` text is still compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings_diff
from ..errors import UsageError

if TYPE_CHECKING:
    from ..checkpoints import CheckpointRef
    from .journal import Cube

SAMPLE = 64 * 1024


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a whole (small) file; None when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_identity(run_dir: str | os.PathLike[str]) -> dict[str, str | None]:
    root = Path(run_dir)
    return {"run_json": file_digest(root / "run.json"),
            "labels": file_digest(root / "labels.safetensors")}


def checkpoint_identity(path: str | os.PathLike[str]) -> list[Any]:
    """``[size, mtime_ns, digest]`` of one checkpoint file (header and both ends of the data)."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        head = fh.read(8)
        h.update(head)
        if len(head) == 8 and p.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", head)
            h.update(fh.read(min(n, st.st_size)))
        h.update(fh.read(SAMPLE))
        if st.st_size > fh.tell() + SAMPLE:
            fh.seek(st.st_size - SAMPLE)
        h.update(fh.read(SAMPLE))
    return [st.st_size, st.st_mtime_ns, h.hexdigest()]


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
    they were measured (so they are measured again). Returns one warning line per replaced one."""
    stored = _loads(cube.extra("checkpoints"))
    known: dict[str, Any] = stored if isinstance(stored, dict) else {}
    current: dict[str, Any] = dict(known)
    notes = []
    for ref in refs:
        if ref.error is not None:
            continue
        try:
            ident = checkpoint_identity(ref.path)
        except OSError:
            continue  # reading it will fail and be recorded as such
        key = f"{ref.width}/{ref.epoch}"
        old = known.get(key)
        if old is not None and (old[0] != ident[0] or old[2] != ident[2]):
            if cube.forget(ref.epoch, ref.width):
                notes.append(f"{ref.path}: replaced since it was measured (size {old[0]} -> "
                             f"{ident[0]}, content differs); measuring it again")
        current[key] = ident
    if current != known:
        cube.set_extra("checkpoints", json.dumps(current, sort_keys=True))
    return notes


