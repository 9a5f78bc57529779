"""Atomic file replacement: write a temporary sibling, fsync it, ``os.replace`` it over the
target, fsync the folder. Readers see the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None
                ) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` for the caller to write; on a normal exit it is
    fsynced and replaces ``target``; on any exception it is removed and the target untouched."""
    dst = Path(target)
    t = Path(tmp) if tmp is not None else dst.with_name(f"{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield t
        fsync_file(t)
        os.replace(t, dst)
    except OSError as exc:
        try:
            t.unlink(missing_ok=True)
        except OSError:  # a read-only folder: there is no temporary to remove
            pass
        from .errors import write_error

        err = write_error(exc, dst, tail="the previous file, if any, is unchanged")
        if err is not None:  # full, read-only, not permitted, I/O error: one line naming dst
            raise err from None
        raise
    except BaseException:
        t.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the file's permissions follow the umask."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
