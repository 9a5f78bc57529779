"""``ckpt-analyze run --follow``: rounds over a run that is still training, until its done markers
say it is complete (the :class:`~ckpt_analyzer.runner.Runner` methods for it)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import (
    CheckpointRef,
    Watcher,
    is_done,
    screen_widths,
)
from ..errors import CkptError, UsageError
from ..executors.local import LocalExecutor
from ..executors.measure import PreparedProbe
from ..executors.work import Outcome, Task, Worker
from ..probes.base import Context
from .summary import RunSummary, _Terminated


class FollowMixin:
    """The --follow half of :class:`~ckpt_analyzer.runner.Runner` (its fields are declared there)."""

    if TYPE_CHECKING:
        widths: Sequence[int] | None
        epochs: Sequence[int] | None
        executor: str
        workers: int | None
        shard: tuple[int, int] | None
        model: str | None
        pattern: str | None
        poll: float
        idle_timeout: float
        allow_pt: bool
        prefix: str | None
        strict: bool
        progress: Callable[[str, Any], None] | None

        def _stream(self, cube: Any, outcomes: Iterator[list[Outcome]], summary: RunSummary,
                    epochs: list[int], widths: list[int], total: int, start: bool = True,
                    counted: set[str] | None = None) -> None: ...

    def _selected(self, ref: CheckpointRef) -> bool:
        return ((self.widths is None or ref.width in self.widths)
                and (self.epochs is None or ref.epoch in self.epochs))

    def _check_follow(self) -> None:
        """One line for what --follow does not support."""
        if self.executor != "local" or self.workers is not None:
            raise UsageError("--follow measures in this process: pass no --executor pool/ray, "
                             "--workers or --devices")
        if self.shard is not None:
            raise UsageError("--follow: --shard deals a finished run's checkpoints; shard after "
                             "training")
        if self.model is not None or self.pattern is not None:
            raise UsageError("--follow needs a run folder written by ckpt-train or RunWriter "
                             "(run.json plans the widths); --model/--pattern folders are "
                             "analyzed after training")
        if not self.poll > 0:
            raise UsageError(f"--poll: must be positive (got {self.poll:g})")
        if not self.idle_timeout >= 0:
            raise UsageError(f"--idle-timeout: must be >= 0 (got {self.idle_timeout:g})")

    def _finished(self, run_dir: Path, run: Mapping[str, Any]) -> bool:
        """The trainer's markers say every wanted width has all its checkpoints."""
        if is_done(run_dir):
            return True
        return all(is_done(run_dir, w) for w in run["widths"]
                   if self.widths is None or w in self.widths)

    def _first_checkpoint(self, watcher: Watcher, run_dir: Path, run: Mapping[str, Any],
                          idle: _Idle, notes: list[str]) -> list[CheckpointRef]:
        """Poll until a readable checkpoint to measure exists (the probes are prepared from
        it), or the run is done, or the idle timeout passes (one line)."""
        while True:
            finished = self._finished(run_dir, run)
            seen: list[str] = []
            refs, _ = watcher.poll(seen)
            idle.active(run_dir)
            if finished or any(r.error is None and self._selected(r)
                               and r.width in run["widths"] for r in refs):
                notes.extend(seen)
                return refs
            if idle.expired():
                raise CkptError(f"--follow: no checkpoint to measure appeared in "
                                f"{idle.timeout:g} s (--idle-timeout)", run_dir)
            time.sleep(self.poll)

    def _follow(self, cube: Any, executor: LocalExecutor, watcher: Watcher, idle: _Idle,
                run_dir: Path, run: Mapping[str, Any], prepared: list[PreparedProbe],
                ctx: Context, meta_of: Callable[[CheckpointRef], dict[str, Any]],
                width_meta: dict[int, Any], initial: dict[int, CheckpointRef],
                summary: RunSummary, reported: set[str], ident: Mapping[str, Any],
                final: dict[int, CheckpointRef] | None = None) -> None:
        """Rounds until the run is done: look at the folder (only new files are read), measure
        what is new, materialize the cube so that readers see it, sleep ``poll`` when nothing
        is new. A file with an error is left for the last round (it may still be growing, when
        something other than the trainer writes it); a probe that
        :meth:`~Probe.needs_finished_width` waits for its width's ``done`` marker. Every round
        first compares the run's identity (run.json and labels digests) with ``ident``, the one
        it had when the analysis began: a folder wiped and refilled by another run stops the
        follower with one line (CkptError), before anything of the new run is measured."""
        executor.worker = Worker.in_process(ctx, prepared, ctx.build_model, self.allow_pt,
                                            self.prefix, self.strict)
        old_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise _Terminated()

        try:
            signal.signal(signal.SIGTERM, on_term)  # also between rounds, while it sleeps
        except ValueError:  # not the main thread
            old_term = None
        try:
            self._rounds(cube, executor, watcher, idle, run_dir, run, prepared, meta_of,
                         width_meta, initial, summary, reported, ident, final)
        except _Terminated:
            raise CkptError("terminated: finished checkpoints are kept; re-run to resume",
                            summary.cube) from None
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)

    def _rounds(self, cube: Any, executor: LocalExecutor, watcher: Watcher, idle: _Idle,
                run_dir: Path, run: Mapping[str, Any], prepared: list[PreparedProbe],
                meta_of: Callable[[CheckpointRef], dict[str, Any]], width_meta: dict[int, Any],
                initial: dict[int, CheckpointRef], summary: RunSummary,
                reported: set[str], ident: Mapping[str, Any],
                final: dict[int, CheckpointRef] | None = None) -> None:
        from ..cube.identity import check_checkpoints

        attempted: set[tuple[str, str, tuple[int, int]]] = set()  # (path, probe, stamp)
        stamps: dict[str, tuple[int, int]] = {}  # identity-checked files (path -> stamp)
        epochs: set[int] = set()
        widths: set[int] = set()
        known_notes = set(summary.warnings)
        counted: set[str] = set()
        first = True
        while True:
            finished = self._finished(run_dir, run)  # before the look: it then sees every file
            notes: list[str] = []
            found, _ = watcher.poll(notes)
            _same_run(cube, run_dir, ident, epochs, widths)  # after the look, before measuring
            for n in notes:
                if n not in known_notes:
                    known_notes.add(n)
                    summary.warnings.append(n)
            unplanned = _unplanned(found, run)
            failed_before = len(summary.failed)
            for r in unplanned:
                if r.path not in reported:
                    reported.add(r.path)
                    msg = (f"{r.path}: width {r.width} was never planned by the trainer "
                           f"(run.json widths: {', '.join(map(str, run['widths']))})")
                    summary.failed.append({"path": r.path, "width": r.width, "epoch": r.epoch,
                                           "error": msg})
                    cube.record_failure(r.epoch, r.width, r.path, msg)
                    if self.progress:
                        self.progress("fail", msg)
            refs = [r for r in found if r not in unplanned and self._selected(r)
                    and (finished or r.error is None)]
            refs, rejected = screen_widths(refs, meta_of, self.model)
            for r in rejected:
                if r.path not in reported:
                    reported.add(r.path)
                    summary.failed.append({"path": r.path, "width": r.width, "epoch": r.epoch,
                                           "error": r.error})
                    cube.record_failure(None, None, r.path, str(r.error))
            summary.checkpoints = len(refs) + len(rejected)
            fresh = [r for r in refs if r.error is None and stamps.get(r.path) != _stamp(r)]
            for r in fresh:
                width_meta.setdefault(r.width, meta_of(r))
                if r.epoch == 0:
                    initial[r.width] = r
                if final is not None and (r.width not in final
                                          or r.epoch >= final[r.width].epoch):
                    final[r.width] = r  # the context's final_state reads it
            summary.warnings += check_checkpoints(cube, fresh)  # replaced: measured again
            stamps.update((r.path, _stamp(r)) for r in fresh)
            done = {p.probe.name: cube.done(p.probe.name) for p in prepared}
            width_done = {w: finished or is_done(run_dir, w) for w in {r.width for r in refs}}
            todo: list[Task] = []
            for r in refs:
                epochs.add(r.epoch)
                widths.add(r.width)
                stamp = _stamp(r)
                missing = tuple(p.probe.name for p in prepared
                                if (r.epoch, r.width) not in done[p.probe.name]
                                and (r.path, p.probe.name, stamp) not in attempted
                                and (width_done[r.width] or not p.probe.needs_finished_width()))
                if not missing:
                    if (r.path, "", stamp) not in attempted and all(
                            (r.epoch, r.width) in done[p.probe.name] for p in prepared):
                        summary.skipped_done += 1  # measured by an earlier run
                    attempted.add((r.path, "", stamp))
                    continue
                attempted.add((r.path, "", stamp))
                attempted.update((r.path, name, stamp) for name in missing)
                todo.append(Task(len(todo), r, missing))
            if todo:
                if self.progress and not first:
                    self.progress("grow", len(todo))
                self._stream(cube, executor.run(None, todo), summary, sorted(epochs),
                             sorted(widths), len(todo), start=first, counted=counted)
                # the run may have been replaced while this round measured: drop its cells
                _same_run(cube, run_dir, ident, epochs, widths, [t.ref for t in todo])
            elif first or len(summary.failed) > failed_before:
                cube.materialize(sorted(epochs), sorted(widths))
            first = False
            if finished:
                return
            if todo or idle.active(run_dir):
                idle.touch()
            elif idle.expired():
                summary.stopped = (
                    f"{run_dir}: --follow: nothing new in {idle.timeout:g} s (--idle-timeout) "
                    "and the run is not marked done (no done marker); stopped with "
                    f"{summary.computed} checkpoint(s) measured, re-run to go on")
                cube.materialize(sorted(epochs), sorted(widths))
                return
            else:
                time.sleep(self.poll)



def _same_run(cube: Any, run_dir: Path, ident: Mapping[str, Any], epochs: set[int],
              widths: set[int], measured: Sequence[CheckpointRef] = ()) -> None:
    """CkptError naming run.json when the run folder's identity (:func:`run_identity`: the
    digests of run.json and labels.safetensors) is no longer ``ident``. The cells of
    ``measured`` (this round's checkpoints, possibly read from the new run) are dropped first
    and the cube materialized, so it holds only what was measured from the run it names."""
    from ..cube.identity import run_identity

    now = run_identity(run_dir)
    changed = [name for key, name in (("run_json", "run.json"), ("labels", "labels"))
               if now.get(key) != ident.get(key)]
    if not changed:
        return
    for r in measured:
        cube.forget(r.epoch, r.width)
    cube.materialize(sorted(epochs), sorted(widths))
    gone = [name for key, name in (("run_json", "run.json"), ("labels", "labels"))
            if now.get(key) is None and ident.get(key) is not None]
    what = (f"{' and '.join(gone)} {'are' if len(gone) > 1 else 'is'} gone" if gone
            else f"{' and '.join(changed)} differ{'s' if changed == ['run.json'] else ''} from "
            "the run this cube measured")
    raise CkptError(f"the run changed while it was followed ({what}); start a new analysis",
                    run_dir / "run.json")


def _planned(run: Mapping[str, Any] | None) -> bool:
    widths = (run or {}).get("widths")
    return isinstance(widths, list) and bool(widths) and all(
        isinstance(w, int) and not isinstance(w, bool) for w in widths)


def _stamp(ref: CheckpointRef) -> tuple[int, int]:
    try:
        st = Path(ref.path).stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


class _Idle:
    """--follow's idle clock: anything the trainer writes under the run's width folders
    (checkpoints, their ``.tmp`` files while written, resume state, done markers) or the run's
    own ``done`` counts as activity."""

    def __init__(self, timeout: float, poll: float) -> None:
        self.timeout = timeout
        self.poll = poll
        self.last = time.monotonic()
        self._seen: object = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def active(self, run_dir: Path) -> bool:
        """Whether the run folder changed since the last look (and then touch the clock)."""
        import os

        from ..checkpoints.layout import is_activity_entry

        state = []
        try:
            with os.scandir(run_dir) as top:
                for d in top:
                    if is_activity_entry(d.name, d.is_dir()):
                        if d.is_dir():
                            with os.scandir(d.path) as inner:
                                entries = list(inner)
                        else:
                            entries = [d]
                        for e in entries:
                            try:
                                st = e.stat()
                            except OSError:
                                continue
                            state.append((e.path, st.st_size, st.st_mtime_ns))
        except OSError:
            pass
        state.sort()
        changed = state != self._seen
        self._seen = state
        if changed:
            self.touch()
        return changed

    def expired(self) -> bool:
        return self.timeout > 0 and time.monotonic() - self.last > self.timeout


def _unplanned(refs: Sequence[CheckpointRef], run: Mapping[str, Any] | None) -> list[CheckpointRef]:
    """Checkpoints of widths that run.json does not plan (none when it plans no widths)."""
    planned = (run or {}).get("widths")
    if not isinstance(planned, list):
        return []
    return [r for r in refs if r.width not in planned]
