"""Writing the cube file safely: the contiguous runs that cells are written in, the kernel copy
of the previous file that an incremental materialization starts from, and the file object
through which HDF5 writes, which keeps the first disk error so that HDF5 never sees a failed
write (docs/cube.md, "Writing at scale"). :meth:`ckpt_analyzer.cube.Cube.materialize` uses
them."""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .hdf5 import Block
from .read import is_probe, scalar
from .schema import Decl

if TYPE_CHECKING:
    import h5py


def runs(i: np.ndarray, j: np.ndarray, step: int
          ) -> tuple[np.ndarray, list[tuple[int, int]], bool]:
    """Order cells at (epoch index ``i``, width index ``j``) into contiguous runs of at most
    ``step``: ``(order, [(start, stop)] into order, along_epoch)``."""
    best = None
    for along_epoch in (True, False):
        major, minor = (j, i) if along_epoch else (i, j)
        order = np.lexsort((minor, major))
        a, b = major[order], minor[order]
        cuts = np.flatnonzero((np.diff(a) != 0) | (np.diff(b) != 1)) + 1
        if best is None or len(cuts) < len(best[1]):
            best = (order, cuts, along_epoch)
    assert best is not None
    order, cuts, along_epoch = best
    pieces = []
    for s, e in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist(), strict=True):
        pieces += [(k, min(k + step, e)) for k in range(s, e, step)]
    return order, pieces, along_epoch


class Sink:
    """A binary file for h5py's file-object driver that keeps its first OSError and from then
    on drops writes (so HDF5 never sees one fail); :meth:`raise_error` raises it."""

    def __init__(self, fh: io.BufferedRandom) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def readinto(self, b: Any) -> int:
        return self.fh.readinto(b)

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        if self.error is None:
            try:
                self.fh.write(b)
            except OSError as exc:
                self.error = exc
        return n

    def truncate(self, n: int | None = None) -> int:
        if self.error is None:
            try:
                return self.fh.truncate(n)
            except OSError as exc:
                self.error = exc
        return self.fh.tell() if n is None else n

    def flush(self) -> None:
        if self.error is None:
            try:
                self.fh.flush()
            except OSError as exc:
                self.error = exc

    def raise_error(self) -> None:
        self.flush()
        if self.error is not None:
            raise self.error


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new ``dst`` in the kernel (``copy_file_range``: a reflink on file
    systems that have them, else no copy through user space; ``sendfile`` where it is
    missing)."""
    import errno
    import shutil

    with open(src, "rb") as a, open(dst, "wb") as b:
        left = os.fstat(a.fileno()).st_size
        try:
            while left > 0:
                n = os.copy_file_range(a.fileno(), b.fileno(), left)
                if n == 0:
                    break
                left -= n
            return
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (
                    errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
    shutil.copyfile(src, dst)


def set_attrs(attrs: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    """Make ``attrs`` hold exactly ``values``, rewriting only those that changed (a rewritten
    attribute may leave its old space unused in the file)."""
    for k in list(attrs):
        if k not in values:
            del attrs[k]
    for k, v in values.items():
        if k in attrs:
            old = scalar(attrs[k])
            if type(old) is type(v) and isinstance(v, (str, int, float)) and old == v:
                continue
        attrs[k] = v


def old_layout(path: Path) -> bool:
    """A cube whose ``done`` datasets are compressed (written before 0.x): every in-place write
    to them would leave space behind, so it is rewritten once in the current layout."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return any(is_probe(g) and "done" in g and g["done"].compression is not None
                       for g in f.values())
    except OSError:
        return True


def cell_blocks(tx: Callable[[], AbstractContextManager[sqlite3.Cursor]], name: str, decl: Decl,
                grid: dict[str, np.ndarray], since: int, upto: int, max_bytes: int
                ) -> Iterator[Block]:
    """The cells of ``name`` with ``since < seq <= upto`` in contiguous blocks: runs of
    consecutive epochs at one width (or of widths at one epoch, whichever gives fewer
    runs), each at most ``max_bytes``; only a block's cells are in
    memory at a time."""
    layout = []
    offset = 0
    for m, d, t, _ in decl.metrics:
        dt = np.dtype(t).newbyteorder("<")
        shape = decl.shape(d)
        count = int(np.prod(shape, dtype=np.int64))
        layout.append((m, dt, count, shape, offset, np.dtype(t)))
        offset += count * dt.itemsize
    with tx() as cur:  # a rowid range: proportional to what is new
        rows = np.fromiter(chain.from_iterable(cur.execute(
            "SELECT seq, epoch, width FROM cell WHERE seq > ? AND seq <= ? AND +probe = ?",
            (since, upto, name))), dtype=np.int64).reshape(-1, 3)
    if not len(rows):
        return
    i = np.searchsorted(grid["epoch"], rows[:, 1])
    j = np.searchsorted(grid["width"], rows[:, 2])
    order, pieces, along_epoch = runs(i, j, max(1, max_bytes
                                                 // max(1, offset)))
    for start, stop in pieces:
        sel = order[start:stop]
        seqs = rows[sel, 0].tolist()
        n = stop - start
        values = {m: np.empty((n, *shape), dtype=native)
                  for m, _, _, shape, _, native in layout}
        at = {seq: k for k, seq in enumerate(seqs)}
        with tx() as cur:  # each blob is copied into its row as it arrives: one block held
            for k in range(0, len(seqs), 500):
                part = seqs[k:k + 500]
                for seq, blob in cur.execute(
                        f"SELECT seq, data FROM cell WHERE seq IN ({','.join('?' * len(part))})",
                        part):
                    row = at[seq]
                    for m, dt, count, shape, off, _ in layout:
                        values[m][row] = np.frombuffer(blob, dt, count, off).reshape(shape)
        a, b = int(i[sel[0]]), int(j[sel[0]])
        index: tuple[int | slice, int | slice] = (
            (slice(a, a + n), b) if along_epoch else (a, slice(b, b + n)))
        yield index, values
