"""One writer per run folder: ``ckpt-train`` and :class:`~ckpt_analyzer.RunWriter` hold an
advisory lock on ``<run>/.writer.lock`` for their whole life, and create ``run.json``
exclusively.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a small file inside the run folder that names its
holder (pid, host, start time, command) as JSON, for the refusal's message. The kernel drops the
lock when its holder dies (``kill -9`` included), so a killed writer never blocks the re-run: its
file stays and means nothing on its own. A writer that ends normally removes the file while
still holding it; a writer that locked a file removed meanwhile (other inode) takes the new one.
Resuming a finished or killed run takes the lock afresh: only a *live* second writer is refused.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CkptError
from .layout import RUN_JSON, START_FILES, TMP_SUFFIX, lock_path, run_json_path


def only_start_files(folder: str | Path) -> bool:
    """True for a folder that holds nothing but what a writer puts there before run.json. A
    temporary that a starting writer renames while this looks is no evidence of anything else."""
    for p in Path(folder).iterdir():
        if not START_FILES.match(p.name):
            return False
        try:
            mode = p.lstat().st_mode
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
        if not stat.S_ISREG(mode):
            return False
    return True


def remove_stale_start_files(folder: str | Path) -> None:
    """Delete the temporaries a writer killed while starting left (not the lock file)."""
    for stale in Path(folder).glob(f"*{TMP_SUFFIX}"):
        if START_FILES.match(stale.name):
            stale.unlink(missing_ok=True)


def _holder(info: dict[str, Any]) -> str:
    """The holder as a short phrase: ``pid 12 on host, since 2025-01-01 12:00:00, 'cmd'``."""
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts[0] += f" on {info['host']}"
    started = info.get("started")
    if isinstance(started, (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)))
    cmd = " ".join(str(info.get("command") or "").split())
    if cmd:
        parts.append(repr(cmd if len(cmd) <= 120 else cmd[:117] + "..."))
    return ", ".join(parts)


class RunLock:
    """The writer's lock on one run folder (creates the folder). Use :meth:`acquire` (or
    ``with``); :meth:`release` or the process's end lets the next writer in."""

    def __init__(self, run_dir: str | Path, writer: str = "writer") -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.writer = writer
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise a one-line CkptError naming the live holder."""
        import fcntl

        if self._fd is not None:
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CkptError("exists and is a file, not a run folder", self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # the holder may remove the file between our open and our flock
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = self._read(fd)
                os.close(fd)
                raise CkptError(f"is being written by another {info.get('writer', 'writer')} "
                                f"({_holder(info)}); wait until it ends, or write to another "
                                "folder", self.run_dir) from None
            except OSError:  # a file system without flock (some network mounts): no lock
                os.close(fd)
                return self
            if self._is_current(fd):
                break
            os.close(fd)  # locked a file its holder had just removed: take the new one
        else:  # pragma: no cover - a folder whose lock file keeps being replaced
            raise CkptError("keeps being replaced; the run folder cannot be locked", self.path)
        body = {"writer": self.writer, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.time(), "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(body).encode(), 0)
        except OSError:
            pass  # the lock holds; only the refusal's message would lack the holder
        self._fd = fd
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            why = "is a link, not a lock file" if exc.errno == errno.ELOOP else \
                f"cannot be opened ({exc.strerror})"
            raise CkptError(f"{why}; the run folder cannot be locked for writing",
                            self.path) from None

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path` (not one removed meanwhile)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(fd)
        return (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        """Let the next writer in; the lock file is removed (a killed holder's stays, and
        means nothing: the kernel has dropped its lock)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._is_current(fd):
                self.path.unlink()  # while still locked; a writer that opened it retries
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def create_run_json(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``run.json`` only if none exists (a temporary hard-linked into place: atomic and
    exclusive); CkptError naming it when another writer created one first."""
    from .._atomic import fsync_dir, fsync_file

    target = run_json_path(run_dir)
    tmp = target.with_name(f"{RUN_JSON}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        fsync_file(tmp)
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise CkptError("was created by another writer at the same time; this one stops "
                            "(use another folder)", target) from None
        except OSError:  # no hard links here: an exclusive create, then the bytes
            try:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                raise CkptError("was created by another writer at the same time; this one "
                                "stops (use another folder)", target) from None
            with os.fdopen(out, "wb") as fh:
                fh.write(tmp.read_bytes())
            fsync_file(target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
