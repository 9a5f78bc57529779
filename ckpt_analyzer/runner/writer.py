"""The single writer: the only code that writes the cube during a run.

It records outcomes with GROUP COMMIT (every outcome ready within :data:`GROUP_COMMIT_S`, at most
:data:`GROUP_COMMIT_CELLS` cells, in one journal transaction: one fsync), records every failure
through one :meth:`Writer.fail` (summary, cube, progress, ``--strict``), turns SIGTERM into one
line (:meth:`Writer.signals`), and materializes the cube every :data:`MATERIALIZE_EVERY_S` and at
the end of each round.

Durability: a transaction is committed when its oldest outcome is :data:`GROUP_COMMIT_S` old,
when an outcome took that long to arrive (slow checkpoints are committed one by one, as soon as
they are measured), when it holds :data:`GROUP_COMMIT_CELLS` cells, and at the end of a round. A
kill therefore loses at most the checkpoints measured in the last :data:`GROUP_COMMIT_S` before
the checkpoint in progress; a re-run measures them again and ends bit-identical.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import CheckpointError, CkptError
from ..executors.work import Outcome
from .summary import RunSummary, _Terminated

MATERIALIZE_EVERY_S = 30.0
GROUP_COMMIT_S = 0.2  # the longest an outcome waits in memory for its transaction
GROUP_COMMIT_CELLS = 2048  # the most cells (probe x checkpoint) in one transaction


class Writer:
    """Commits a run's outcomes and failures to ``cube``, counting them in ``summary``."""

    def __init__(self, cube: Any, summary: RunSummary, progress: Callable[[str, Any], None] | None,
                 strict: bool = False, delay: float = GROUP_COMMIT_S,
                 max_cells: int = GROUP_COMMIT_CELLS) -> None:
        self.cube, self.summary, self.progress, self.strict = cube, summary, progress, strict
        self.delay, self.max_cells = delay, max_cells
        self.last_flush = time.monotonic()
        self.counted: set[str] = set()  # paths counted in summary.computed (once per run)
        self.commits = 0  # journal transactions of outcomes (for tests and benchmarks)

    # -- progress

    def start(self, total: int) -> None:
        if self.progress:
            self.progress("start", total)

    def grow(self, more: int) -> None:
        if self.progress:
            self.progress("grow", more)

    # -- failures: the one place that records one

    def fail(self, path: str, error: str, *, width: int | None = None, epoch: int | None = None,
             probe: str | None = None, cell: bool = True, announce: bool = True,
             strict: bool = False) -> None:
        """Record a failure: in the summary, in the cube (at its ``(epoch, width)`` cell, or
        the run's with ``cell=False``), on the progress display (``announce``), and with
        ``strict`` under ``--strict`` raise it (CheckpointError for a checkpoint's, CkptError
        for a probe's that failed to prepare)."""
        entry: dict[str, Any] = {"path": path, "width": width, "epoch": epoch}
        if probe is not None:
            entry["probe"] = probe
        entry["error"] = error
        self.summary.failed.append(entry)
        self.cube.record_failure(epoch if cell else None, width if cell else None, path, error,
                                 **({"probe": probe} if probe is not None else {}))
        if strict and self.strict:
            if epoch is None:
                raise CkptError(error, path) from None
            raise CheckpointError(error.removeprefix(f"{path}: "), path)
        if announce and self.progress:
            self.progress("fail", error)

    # -- outcomes

    def consume(self, batches: Iterable[list[Outcome]], epochs: list[int],
                widths: list[int]) -> None:
        """Commit a round's outcomes as they arrive (group commit), then materialize the cube
        on ``epochs`` x ``widths`` (also after an error: the journal holds every finished cell)."""
        buf: list[Outcome] = []
        oldest = last = time.monotonic()

        def commit() -> None:
            todo = buf[:]
            buf.clear()  # taken: an error while committing does not commit them twice
            self._commit(todo)

        try:
            for batch in batches:
                now = time.monotonic()
                slow = now - last >= self.delay  # this outcome took long: commit it at once
                last = now
                if not buf:
                    oldest = now
                buf.extend(batch)
                cells = sum(len(o.results or {}) for o in buf)
                if slow or now - oldest >= self.delay or cells >= self.max_cells:
                    commit()
                if time.monotonic() - self.last_flush > MATERIALIZE_EVERY_S:
                    commit()
                    self.cube.materialize(epochs, widths, when_due=True)  # amortized on big cubes
                    self.last_flush = time.monotonic()
            commit()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops a prefetching thread
            in_flight = sys.exc_info()[1]
            if buf:  # stopped (SIGTERM, a fault, --strict) before the group's commit: its
                try:  # finished outcomes are kept, as every finished checkpoint is
                    self._commit(buf[:])
                except Exception:  # the stop's own cause is the line
                    pass
            try:
                self.cube.materialize(epochs, widths)
            except CkptError:
                if in_flight is None:  # else the first cause (e.g. a full journal) is the line
                    raise

    def _commit(self, outcomes: list[Outcome]) -> None:
        """One transaction for every cell of ``outcomes`` (one fsync); then their failures."""
        if not outcomes:
            return
        self.cube.record_many([(name, o.task.ref.epoch, o.task.ref.width, res)
                               for o in outcomes if o.error is None
                               for name, res in (o.results or {}).items()])
        self.commits += 1
        s = self.summary
        for out in outcomes:
            ref = out.task.ref
            if out.cpu_seconds:
                s.worker_cpu_seconds[out.worker] = (s.worker_cpu_seconds.get(out.worker, 0.0)
                                                    + out.cpu_seconds)
            for name, sec in out.probe_seconds.items():
                s.probe_seconds[name] = s.probe_seconds.get(name, 0.0) + sec
            if self.progress and out.probe_seconds:
                self.progress("seconds", out.probe_seconds)
            for msg in out.warnings:  # once, however many workers warned
                if msg not in s.warnings:
                    s.warnings.append(msg)
                    if self.progress:
                        self.progress("warn", msg)
            if out.error is not None:
                self.fail(ref.path, out.error, width=ref.width, epoch=ref.epoch, strict=True)
                continue
            for name, err in out.probe_failures.items():
                self.fail(ref.path, err, width=ref.width, epoch=ref.epoch, probe=name)
            if ref.path not in self.counted:  # measured in two rounds (--follow): counts once
                s.computed += 1
                self.counted.add(ref.path)
            if self.progress:
                self.progress("advance", ref)

    # -- signals

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM stops the run with one line (finished checkpoints are kept), also while
        --follow sleeps between rounds."""
        old: Any = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise _Terminated()

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            old = None
        try:
            yield
        except _Terminated:
            raise CkptError("terminated: finished checkpoints are kept; re-run to resume",
                            self.summary.cube) from None
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
