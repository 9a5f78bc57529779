"""The cube's single writer: a SQLite journal of measured cells, materialized to HDF5.

One process writes a cube. Every measured cell ``(probe, epoch, width)`` is committed to a
SQLite journal next to the cube (``<cube>.journal``, one transaction per record), so a run killed
at any moment loses at most the cell in flight. :meth:`Cube.materialize` rewrites the HDF5
file from the journal into ``<cube>.tmp`` and ``os.replace``-s it, so the cube on disk is always a
complete, readable earlier state.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import atomic_path
from ..config import settings_diff
from ..errors import CkptError, UsageError, write_error
from .faults import ELSEWHERE as _ELSEWHERE
from .faults import journal_error as _journal_error
from .filewrite import Sink, cell_blocks, copy_file, old_layout, set_attrs
from .hdf5 import (
    IDENTITIES,
    Block,
    update_probe,
    write_axes,
    write_identities,
    write_probe,
)
from .identity import identities_of
from .read import READ_BLOCK_BYTES, check_cube
from .rebuild import file_stat, rebuild_journal
from .schema import (
    AXES,
    CUBE_FORMAT,
    JOURNAL_FORMAT,
    Decl,
    as_int,
    check_name,
    declaration,
    decode,
    encode,
    jsonable,
    same_inputs,
)

if TYPE_CHECKING:
    from typing import Self

    from ..schema import Outputs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS axis (name TEXT NOT NULL, value INTEGER NOT NULL,
                                 PRIMARY KEY (name, value));
CREATE TABLE IF NOT EXISTS probe (name TEXT PRIMARY KEY, version TEXT NOT NULL,
                                  config TEXT NOT NULL, seed INTEGER NOT NULL,
                                  outputs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS input (probe TEXT NOT NULL, key TEXT NOT NULL, dtype TEXT NOT NULL,
                                  shape TEXT NOT NULL, data BLOB NOT NULL,
                                  PRIMARY KEY (probe, key));
CREATE TABLE IF NOT EXISTS cell (seq INTEGER PRIMARY KEY AUTOINCREMENT, probe TEXT NOT NULL,
                                 epoch INTEGER NOT NULL, width INTEGER NOT NULL,
                                 data BLOB NOT NULL, UNIQUE (probe, epoch, width));
CREATE TABLE IF NOT EXISTS failure (path TEXT NOT NULL, probe TEXT NOT NULL, epoch INTEGER,
                                    width INTEGER, error TEXT NOT NULL,
                                    PRIMARY KEY (path, probe));
"""


#: The most bytes of cells held in memory at once while materializing: the readers' block
#: (small enough that the peak is flat once a width's epochs fill one, large enough that a block
#: is still one hyperslab write of many cells).
BLOCK_BYTES = READ_BLOCK_BYTES

#: A periodic materialization (``materialize(when_due=True)``) waits at least this long, and at
#: least 1/MATERIALIZE_SHARE times as long as the previous one took.
MATERIALIZE_EVERY_S = 30.0
MATERIALIZE_SHARE = 0.05


class Cube:
    """The single writer of one cube file and its journal (``<path>.journal``).

    Typical use (the runner)::

        with Cube(out) as cube:
            cube.set_root({"source": run_dir, "run_json": text})
            cube.begin_probe(p.name, p.version, config_dict, seed, p.outputs(), inputs)
            todo = [c for c in cells if (c.epoch, c.width) not in cube.done(p.name)]
            for c in todo:
                cube.record(p.name, c.epoch, c.width, results)     # durable on return
            cube.materialize(epochs, widths)                        # atomic rewrite of the cube

    ``fsync=False`` commits without waiting for the disk (SQLite ``synchronous=NORMAL``): still
    safe against a killed process (kill -9), not against a power cut, and commits are ~3x faster.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.journal_path = Path(f"{self.path}.journal")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._decls: dict[str, Decl] = {}
        self._last_end: float | None = None  # monotonic time the last materialization ended
        self._last_cost = 0.0  # and the seconds it took
        #: one line per repair done on opening (e.g. a damaged cube rebuilt from the journal)
        self.notes: list[str] = []

    # -- life cycle

    def __enter__(self) -> Self:
        if self._db is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Self:
        """Open (or create) the journal; rebuild it from an existing cube if it is missing."""
        if self._db is not None:
            return self
        if self.path.is_dir():
            raise CkptError("is a directory, not a cube file", self.path)
        damaged = None
        if self.path.exists():
            try:
                check_cube(self.path)
            except CkptError as exc:
                if not self.journal_path.is_file():
                    raise
                damaged = str(exc)  # our journal is next to it: rebuilt from the journal below
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.journal_path, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error):
                raise _journal_error(exc, self.journal_path) from None
            raise write_error(exc, self.journal_path, "the cube's journal", _ELSEWHERE) or \
                CkptError(f"cannot create the cube's journal here ({exc})", self.journal_path) \
                from None
        try:
            db.execute("PRAGMA busy_timeout=0")
            # Exclusive WAL: one fsync per commit, no -shm file (works on network file systems),
            # and a second writer of the same cube fails at once instead of interleaving.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise CkptError("another process is writing this cube", self.path) from None
            if "not a database" in str(exc) and damaged is None:
                raise CkptError("is not a ckpt-analyzer journal (not an SQLite file)",
                                self.journal_path) from None
            raise _journal_error(exc, self.journal_path) from None
        self._db = db
        # a temporary left by a writer killed while materializing (we hold the journal's lock:
        # no other writer is composing it)
        try:
            Path(f"{self.path}.tmp").unlink(missing_ok=True)
        except OSError:
            pass
        try:
            with self._tx() as cur:
                tables = {r[0] for r in cur.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")}
                fmt = None
                if "meta" in tables:
                    row = cur.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                    fmt = row and row[0]
                if fmt is None and tables - set(_table_names()):
                    raise CkptError("is not a ckpt-analyzer journal", self.journal_path)
                if fmt is not None and fmt != JOURNAL_FORMAT:
                    raise CkptError(f"journal format '{fmt}' is not {JOURNAL_FORMAT}",
                                    self.journal_path)
                if fmt is not None and damaged is not None:
                    # the next materialization rewrites the whole file from the journal
                    cur.execute("DELETE FROM meta WHERE key='materialized'")
                    _bump_layout(cur)
                    why = damaged.split(": ", 1)[-1].split("; its journal")[0]
                    self.notes.append(f"{self.path}: {why}; rebuilt it from its journal "
                                      f"{self.journal_path.name}")
                elif damaged is not None:
                    raise CkptError(damaged.split(": ", 1)[-1], self.path)
                if fmt is None:
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            cur.execute(stmt)
                    cur.execute("INSERT INTO meta VALUES ('format', ?)", (JOURNAL_FORMAT,))
                    if self.path.exists():
                        rebuild_journal(cur, self.path)
        except BaseException:
            self.close()
            raise
        if damaged is not None:
            self.materialize(rewrite=True)
        return self

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._decls.clear()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One transaction, committed (durably) when the block exits."""
        with self._lock:
            if self._db is None:
                raise CkptError("cube is not open", self.path)
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    if self._db.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise _journal_error(exc, self.journal_path) from None

    # -- provenance and probes

    def set_root(self, attrs: Mapping[str, str | None]) -> None:
        """Merge root attributes (``source``, ``run_json``, ``version`` ...; a value None removes
        the attribute); ``format`` is fixed."""
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='root'").fetchone()
            root = json.loads(row[0]) if row else {}
            root.update({str(k): v for k, v in attrs.items() if k not in ("format", "failures")})
            root = {k: v for k, v in root.items() if v is not None}
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('root', ?)", (json.dumps(root),))

    def root(self) -> dict[str, Any]:
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='root'").fetchone()
        return json.loads(row[0]) if row else {}

    def extra(self, key: str) -> str | None:
        """A value kept in the journal. ``checkpoints`` (the checkpoint identities of
        :mod:`.identity`) is also materialized, as the HDF5 group ``checkpoints/``, and read back
        when the journal is rebuilt from the cube; other keys stay in the journal only."""
        with self._tx() as cur:
            return _meta(cur, f"extra:{key}")

    def set_extra(self, key: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"extra:{key}", value))

    def reset(self) -> None:
        """Forget everything measured (cells, probes, inputs, failures, coordinates, root
        attributes): the next materialization writes an empty cube."""
        with self._tx() as cur:
            for table in ("cell", "probe", "input", "failure", "axis"):
                cur.execute(f"DELETE FROM {table}")
            cur.execute("DELETE FROM meta WHERE key='root' OR key LIKE 'extra:%'")
            _bump_layout(cur)
        self._decls.clear()

    def forget(self, epoch: int, width: int) -> int:
        """Drop the cells of every probe at (epoch, width), e.g. of a replaced checkpoint, so
        they are measured again; returns how many were dropped."""
        with self._tx() as cur:
            n = cur.execute("DELETE FROM cell WHERE epoch=? AND width=?",
                            (as_int(epoch, "epoch"), as_int(width, "width"))).rowcount
            if n:
                _bump_layout(cur)
        return int(n)

    def probes(self) -> list[str]:
        """Probes known to the journal."""
        with self._tx() as cur:
            return [r[0] for r in cur.execute("SELECT name FROM probe ORDER BY name")]

    def begin_probe(self, name: str, version: str, config: Mapping[str, Any], seed: int,
                    outputs: Outputs, inputs: Mapping[str, np.ndarray],
                    overwrite: bool = False) -> None:
        """Declare a probe before its cells are recorded.

        A probe already in the cube must have the same version, config, seed, declared outputs
        and fixed inputs; otherwise this raises :class:`UsageError` naming what differs, unless
        ``overwrite`` (which drops the probe's recorded cells).
        """
        check_name(name, "probe", name)
        if name in AXES or name == IDENTITIES:
            raise UsageError(f"probe name '{name}' is reserved")
        decl = declaration(name, outputs)
        conf = jsonable(config)
        seed = int(seed)
        arrays = {}
        for key, value in inputs.items():
            parts = key.split("/")
            if any(not p or p in (".", "..") for p in parts):
                raise CkptError(f"probe '{name}': invalid input key '{key}'")
            arr = np.asarray(value)
            if arr.dtype.kind not in "biufUS" and not (
                    arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat)):
                raise CkptError(f"probe '{name}': input '{key}' has unsupported dtype "
                                f"{arr.dtype} (numbers, booleans or strings only)")
            arrays[key] = arr
        keys = sorted(arrays)
        for a, b in itertools.pairwise(keys):
            if b.startswith(a + "/"):
                raise CkptError(f"probe '{name}': input '{a}' is both an array and a group")
        with self._tx() as cur:
            row = cur.execute("SELECT version, config, seed, outputs FROM probe WHERE name=?",
                              (name,)).fetchone()
            if row is not None and not overwrite:
                old_ver, old_conf, old_seed, old_out = row
                diffs = []
                if old_ver != str(version):
                    diffs.append(f"version: {old_ver} -> {version}")
                if old_seed != seed:
                    diffs.append(f"seed: {old_seed} -> {seed}")
                diffs += settings_diff(json.loads(old_conf), conf)
                if diffs:
                    raise UsageError(f"probe '{name}' was computed with a different config "
                                     f"({', '.join(diffs)}); use --overwrite to recompute",
                                     self.path)
                old_c, old_m = Decl.from_json(old_out).key()
                new_c, new_m = decl.key()
                if (old_c, old_m) != (new_c, new_m):
                    what = sorted({k for k in set(old_c) | set(new_c)
                                   if old_c.get(k) != new_c.get(k)}
                                  | {k for k in set(old_m) | set(new_m)
                                     if old_m.get(k) != new_m.get(k)})
                    raise UsageError(f"probe '{name}' declares different outputs than the cube "
                                     f"({', '.join(what)}); use --overwrite to recompute",
                                     self.path)
                old_in = {k: decode(t, s, d) for k, t, s, d in cur.execute(
                    "SELECT key, dtype, shape, data FROM input WHERE probe=?", (name,))}
                differ = sorted(k for k in set(old_in) | set(arrays)
                                if k not in old_in or k not in arrays
                                or not same_inputs(old_in[k], arrays[k]))
                if differ:
                    raise UsageError(f"probe '{name}' has the same config but its fixed inputs "
                                     f"differ from the cube's ({', '.join(differ)}): the cube "
                                     "was computed on other data; use --overwrite to recompute",
                                     self.path)
                self._decls[name] = Decl.from_json(old_out)
                return
            _bump_layout(cur)  # the next materialization rewrites the whole file
            if row is not None:
                cur.execute("DELETE FROM cell WHERE probe=?", (name,))
                cur.execute("DELETE FROM input WHERE probe=?", (name,))
                cur.execute("DELETE FROM failure WHERE probe=?", (name,))
            cur.execute("INSERT OR REPLACE INTO probe VALUES (?, ?, ?, ?, ?)",
                        (name, str(version), json.dumps(conf, sort_keys=True), seed,
                         decl.to_json()))
            for key in keys:
                cur.execute("INSERT INTO input VALUES (?, ?, ?, ?, ?)",
                            (name, key, *encode(arrays[key])))
        self._decls[name] = decl

    def _decl(self, cur: sqlite3.Cursor, probe: str) -> Decl:
        if probe not in self._decls:
            row = cur.execute("SELECT outputs FROM probe WHERE name=?", (probe,)).fetchone()
            if row is None:
                raise CkptError(f"probe '{probe}' was not begun in this cube", self.path)
            self._decls[probe] = Decl.from_json(row[0])
        return self._decls[probe]

    # -- cells

    def done(self, probe: str) -> set[tuple[int, int]]:
        """The ``(epoch, width)`` cells of ``probe`` recorded so far."""
        with self._tx() as cur:
            return {(e, w) for e, w in cur.execute(
                "SELECT epoch, width FROM cell WHERE probe=?", (probe,))}

    def record(self, probe: str, epoch: int, width: int,
               results: Mapping[str, np.ndarray]) -> None:
        """Commit one cell durably (returns after fsync); clears failures of this checkpoint."""
        self.record_many([(probe, epoch, width, results)])

    def record_many(self, cells: Iterable[tuple[str, int, int, Mapping[str, np.ndarray]]]
                    ) -> None:
        """Commit several ``(probe, epoch, width, results)`` cells in one transaction (one
        fsync, all or none): the writer's group commit when results arrive faster than the disk
        syncs."""
        with self._tx() as cur:
            for probe, epoch, width, results in cells:
                self._record(cur, probe, as_int(epoch, "epoch"), as_int(width, "width"), results)

    def _record(self, cur: sqlite3.Cursor, probe: str, epoch: int, width: int,
                results: Mapping[str, np.ndarray]) -> None:
        decl = self._decl(cur, probe)
        checked = decl.check(results, probe)  # the probe base's check (ckpt_analyzer.schema)
        blob = bytearray()
        for name, _, dtype, _ in decl.metrics:
            blob += np.ascontiguousarray(checked[name],
                                         dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        cur.execute("INSERT OR REPLACE INTO cell (probe, epoch, width, data) "
                    "VALUES (?, ?, ?, ?)", (probe, epoch, width, bytes(blob)))
        cur.execute("INSERT OR IGNORE INTO axis VALUES ('epoch', ?), ('width', ?)",
                    (epoch, width))
        cur.execute("DELETE FROM failure WHERE epoch=? AND width=? AND probe IN ('', ?)",
                    (epoch, width, probe))

    def record_failure(self, epoch: int | None, width: int | None, path: str, error: str,
                       probe: str | None = None) -> None:
        """Record a checkpoint that could not be measured (``probe=None``: it could not be
        loaded). A later :meth:`record` of that (epoch, width) clears it (for ``probe``)."""
        e = None if epoch is None else as_int(epoch, "epoch")
        w = None if width is None else as_int(width, "width")
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO failure VALUES (?, ?, ?, ?, ?)",
                        (str(path), probe or "", e, w, str(error)))

    def failures(self) -> list[dict[str, Any]]:
        """Recorded failures: dicts with path, epoch, width, probe (None: whole checkpoint),
        error."""
        with self._tx() as cur:
            return _failures(cur)

    # -- materialization

    def materialize(self, epochs: Iterable[int] = (), widths: Iterable[int] = (),
                    rewrite: bool = False, when_due: bool = False) -> bool:
        """Bring the cube file up to date with the journal, atomically; True if it was written.

        ``epochs``/``widths`` join the coordinates (kept in the journal, so they only grow);
        cells recorded at other epochs/widths add theirs too. The new file is written to
        ``<path>.tmp``, fsynced and ``os.replace``-d over the cube. When only cells were added
        since the last materialization (and coordinates only grew at their ends) the previous
        file is copied by the kernel (a reflink where the file system has them) and just the new
        cells are written into the copy; otherwise (or with ``rewrite``) the whole file is
        written from the journal. Both give identical arrays, and both stream: cells are read
        from the journal and written in contiguous blocks of at most :data:`BLOCK_BYTES`, so
        memory does not grow with the cube (see docs/cube.md, "Writing at scale").

        ``when_due`` (a periodic call) skips the work unless :meth:`due`: the copy is
        proportional to the cube, so a growing cube is materialized less often.
        """
        if when_due and not self.due():
            return False
        start = time.monotonic()
        with self._lock:  # no cell may change between the snapshot below and the last block
            self._materialize(epochs, widths, rewrite)
        self._last_cost = time.monotonic() - start
        self._last_end = time.monotonic()
        return True

    def due(self, every: float = MATERIALIZE_EVERY_S, share: float = MATERIALIZE_SHARE) -> bool:
        """Whether a periodic materialization is due: ``every`` seconds since the last one, and
        at least ``1/share`` times as long as the last one took (so materializing takes at most
        ``share`` of the run's time however large the cube grows)."""
        if self._last_end is None:
            return True
        return time.monotonic() - self._last_end >= max(every, self._last_cost / share)

    def _materialize(self, epochs: Iterable[int], widths: Iterable[int], rewrite: bool) -> None:
        import h5py

        from .. import __version__

        ep = [as_int(e, "epoch") for e in epochs]
        wd = [as_int(w, "width") for w in widths]
        with self._tx() as cur:
            cur.executemany("INSERT OR IGNORE INTO axis VALUES ('epoch', ?)", [(e,) for e in ep])
            cur.executemany("INSERT OR IGNORE INTO axis VALUES ('width', ?)", [(w,) for w in wd])
            upto = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM cell").fetchone()[0]
            grid = {a: np.array([v for (v,) in cur.execute(
                "SELECT value FROM axis WHERE name=? ORDER BY value", (a,))], dtype=np.int64)
                for a in AXES}
            root = {"format": CUBE_FORMAT, "version": __version__}
            root.update(json.loads(_meta(cur, "root") or "{}"))
            failures = _failures(cur)
            probes = cur.execute(
                "SELECT name, version, config, seed, outputs FROM probe ORDER BY name").fetchall()
            layout = _meta(cur, "layout") or "0"
            last = json.loads(_meta(cur, "materialized") or "null")
            identities = identities_of(_meta(cur, f"extra:{IDENTITIES}"))
        since = None
        if (not rewrite and last is not None and last["layout"] == layout
                and self.path.exists() and last["stat"] == file_stat(self.path)
                and all(last[a] == grid[a][:len(last[a])].tolist() for a in AXES)
                and not old_layout(self.path)):
            since = last["seq"]
        root["failures"] = json.dumps(failures)
        # HDF5 writes through a Python file object that keeps the first OSError (a full disk, a
        # file-size limit) and drops later writes: HDF5 never sees a failed write (its own
        # failures are noisy and can crash the interpreter at exit), the error is raised after
        # the file is closed, and atomic_path removes the temporary; the previous cube stays.
        try:
            with atomic_path(self.path, tmp=f"{self.path}.tmp") as tmp:
                if since is not None:
                    copy_file(self.path, tmp)
                with open(tmp, "r+b" if since is not None else "w+b") as fh:
                    sink = Sink(fh)
                    try:
                        with h5py.File(sink, "r+" if since is not None else "w",
                                       track_order=True) as f:
                            set_attrs(f.attrs, root)
                            write_axes(f, grid)
                            write_identities(f, identities)
                            for name, version, config, seed, outputs in probes:
                                decl = Decl.from_json(outputs)
                                blocks = self._blocks(name, decl, grid, since or 0, upto)
                                if since is None:
                                    write_probe(f, name, version, config, seed, decl, grid,
                                                blocks, self._inputs(name))
                                else:
                                    update_probe(f[name], decl, grid, blocks)
                    except Exception:
                        if sink.error is None:
                            raise
                    sink.raise_error()
        except OSError as exc:
            why = str(exc.strerror or exc).splitlines()[0]
            raise CkptError(f"cannot write the cube ({why}); the previous cube is unchanged and "
                            "the journal keeps every cell: re-run when there is room",
                            self.path) from None
        state = {"layout": layout, "seq": upto, "stat": file_stat(self.path),
                 **{a: grid[a].tolist() for a in AXES}}
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('materialized', ?)",
                        (json.dumps(state),))

    def _inputs(self, name: str) -> list[tuple[str, np.ndarray]]:
        with self._tx() as cur:
            rows = cur.execute("SELECT key, dtype, shape, data FROM input WHERE probe=? "
                               "ORDER BY key", (name,)).fetchall()
        return [(key, decode(dtype, shape, data)) for key, dtype, shape, data in rows]

    def _blocks(self, name: str, decl: Decl, grid: dict[str, np.ndarray], since: int,
                upto: int, max_bytes: int | None = None) -> Iterator[Block]:
        """:func:`~ckpt_analyzer.cube.filewrite.cell_blocks` of this journal."""
        return cell_blocks(self._tx, name, decl, grid, since, upto, max_bytes or BLOCK_BYTES)



def _table_names() -> list[str]:
    return ["meta", "axis", "probe", "input", "cell", "failure", "sqlite_sequence"]


def _failures(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [{"path": p, "epoch": e, "width": w, "probe": pr or None, "error": err}
            for p, pr, e, w, err in cur.execute(
                "SELECT path, probe, epoch, width, error FROM failure ORDER BY path, probe")]


def _meta(cur: sqlite3.Cursor, key: str) -> str | None:
    row = cur.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _bump_layout(cur: sqlite3.Cursor) -> None:
    gen = int(_meta(cur, "layout") or "0") + 1
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('layout', ?)", (str(gen),))


def cube_busy(cube: str | os.PathLike[str]) -> bool:
    """True while a ``ckpt-analyze run`` writes ``cube``: the writer holds the cube's journal in
    exclusive locking mode, so that even reading it is refused (no journal: False)."""
    journal = Path(f"{cube}.journal")
    if not journal.is_file():
        return False
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=0.05)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return True
    return False
