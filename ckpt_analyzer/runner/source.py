"""Where the run's tasks come from: :class:`Source` yields rounds of tasks. A batch run is one
round over the folder as it is; ``--follow`` is many, until the run's done markers say it is
complete (watcher polls, unplanned and rejected files, identity checks, the done/attempted
bookkeeping, probes that wait for a finished width, the idle clock and the same-run check)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import PICKLE_EXTS, CheckpointRef, Watcher, is_done, read_run_json, screen_widths
from ..errors import CkptError, UsageError
from ..executors.work import Plan, Task
from .follow import Idle, finished, planned, same_run, stamp, unplanned

if TYPE_CHECKING:
    from ..checkpoints.run_data import RunData
    from ..executors.measure import PreparedProbe
    from .core import Runner
    from .writer import Writer


@dataclass
class Round:
    """One round's tasks under the plan as it is now, and the cube's grid to materialize."""

    tasks: list[Task]
    plan: Plan
    epochs: list[int]
    widths: list[int]


class Source:
    """The run folder as rounds of tasks (``opts.follow``: many rounds)."""

    def __init__(self, opts: Runner) -> None:
        self.opts = opts
        self.follow = opts.follow
        self.run_dir = Path(opts.run_dir)
        self.idle = Idle(opts.idle_timeout, opts.poll) if self.follow else None
        self.notes: list[str] = []
        self.width_meta: dict[int, Any] = {}
        self.sources: dict[int, str] = {}
        self.initial: dict[int, CheckpointRef] = {}
        self.final: dict[int, CheckpointRef] = {}
        self.reported: set[str] = set()  # unplanned/rejected files already recorded

    # -- opening: the folder as it is when the analysis begins

    def open(self) -> None:
        """Wait (--follow) for run.json and a first checkpoint; refuse what cannot be run."""
        o, run_dir = self.opts, self.run_dir
        if self.idle is not None:
            self.idle.wait_for(run_dir / "run.json", "no run.json appeared")
        if not run_dir.is_dir():
            raise CkptError("no such run folder", run_dir)
        # --follow: the run as it is now (before its manifest and labels are read), compared
        # every round so that a folder refilled by another run is not measured against these
        from ..cube.identity import run_identity

        self.ident = run_identity(run_dir) if self.follow else {}
        self.run = read_run_json(run_dir)
        if self.follow:
            self._check_planned()
        if self.run is None and o.model is None:
            raise UsageError(f"{run_dir}: no run.json, so this is a foreign folder: pass "
                             "--model MODULE:FACTORY (and --dataset, --pattern)")
        if o.pattern and not o.allow_pt and o.pattern.endswith(PICKLE_EXTS):
            raise UsageError(f"--pattern '{o.pattern}' names pickle-based files: pass "
                             "--allow-pt (read with torch.load(weights_only=True) only)")
        self.watcher = Watcher(run_dir, o.pattern, o.allow_pt, o.width)
        self.all_refs = self._first_look()
        self.unplanned = unplanned(self.all_refs, self.run)
        self.all_refs = [r for r in self.all_refs if r not in self.unplanned]
        self.refs = [r for r in self.all_refs
                     if self.selected(r) and (not self.follow or r.error is None)]
        if not self.refs:
            where = ("" if not self.all_refs
                     else f" matching --widths/--epochs (found {len(self.all_refs)})")
            hint = "" if self.run is not None or o.pattern else " (foreign folder? pass --pattern)"
            pt = next((n.split(": ", 1)[1] for n in self.notes if "--allow-pt" in n), "")
            raise CkptError(f"no checkpoints{where}{hint}{'; ' + pt if pt else ''}", run_dir)

    def _check_planned(self) -> None:
        o, run = self.opts, self.run
        if not planned(run):
            raise UsageError(f"{self.run_dir}: --follow needs the planned widths in run.json "
                             "(written by ckpt-train, or RunWriter(widths=...)) to know when "
                             "the run is complete; analyze this folder after training instead")
        if o.widths is not None and not set(o.widths) & set((run or {})["widths"]):
            raise UsageError(f"--widths: none of {', '.join(map(str, o.widths))} is planned "
                             f"(run.json widths: {', '.join(map(str, (run or {})['widths']))})")

    def _first_look(self) -> list[CheckpointRef]:
        """The folder's checkpoints; --follow polls until one to measure exists (the probes are
        prepared from it), or the run is done, or the idle timeout passes (one line)."""
        if self.idle is None:
            return self.watcher.poll(self.notes)[0]
        run = self.run or {}
        while True:
            done = finished(self.run_dir, run, self.opts.widths)
            seen: list[str] = []
            refs, _ = self.watcher.poll(seen)
            self.idle.active(self.run_dir)
            if done or any(r.error is None and self.selected(r) and r.width in run["widths"]
                           for r in refs):
                self.notes.extend(seen)
                return refs
            if self.idle.expired():
                raise CkptError(f"--follow: no checkpoint to measure appeared in "
                                f"{self.idle.timeout:g} s (--idle-timeout)", self.run_dir)
            time.sleep(self.opts.poll)

    def selected(self, ref: CheckpointRef) -> bool:
        o = self.opts
        return ((o.widths is None or ref.width in o.widths)
                and (o.epochs is None or ref.epoch in o.epochs))

    def screen(self, data: RunData) -> None:
        """Refuse absurd widths (metadata), fix the grid the probes see and each width's
        metadata, first and last checkpoint."""
        self.meta_of = _metadata_factory(self.opts, self.run, data)
        self.refs, self.rejected = screen_widths(self.refs, self.meta_of, self.opts.model)
        if not self.refs:
            raise CkptError(self.rejected[0].error or "no checkpoints", self.rejected[0].path)
        self.all_refs = [r for r in self.all_refs if r not in self.rejected]
        self.grid_epochs = sorted({r.epoch for r in self.refs})
        self.grid_widths = sorted({r.width for r in self.refs})
        run, o = self.run or {}, self.opts
        if self.follow:  # the probes see the planned grid, as after training
            self.grid_widths = sorted(w for w in run["widths"] if o.widths is None or w in o.widths)
            save = (run.get("save") or {}).get("epochs")
            if isinstance(save, list):
                self.grid_epochs = sorted(e for e in save if o.epochs is None or e in o.epochs)
        self.checkpoints = len(self.refs) + len(self.rejected)
        if o.shard is not None:
            from ..executors.shard import shard_refs

            self.refs = shard_refs(self.refs, *o.shard)
        self._learn([r for r in self.all_refs if r.error is None])
        for w in self.grid_widths if not self.follow else ():  # --follow: build from others
            self.width_meta.setdefault(w, self.meta_of(next(r for r in self.all_refs
                                                            if r.width == w)))
        for r in self.all_refs:  # a broken last file stays last: final_state raises its error
            if r.error and (r.width not in self.final or r.epoch > self.final[r.width].epoch):
                self.final[r.width] = r

    def _learn(self, refs: list[CheckpointRef]) -> None:
        """Readable checkpoints seen: their width's metadata, first and last checkpoint."""
        for r in refs:
            self.width_meta.setdefault(r.width, self.meta_of(r))
            self.sources.setdefault(r.width, r.path)
            if r.epoch == 0:
                self.initial[r.width] = r
            if r.width not in self.final or r.epoch >= self.final[r.width].epoch:
                self.final[r.width] = r

    def delta(self) -> dict[str, Any]:
        """The plan's growing part (:attr:`Plan.GROWING`) as the source knows it now."""
        return {"width_meta": {w: dict(m) for w, m in self.width_meta.items()},
                "initial": {w: r.path for w, r in self.initial.items()},
                "final": {w: (r.epoch, r.path, r.error) for w, r in self.final.items()},
                "sources": dict(self.sources)}

    # -- rounds

    def begin(self, cube: Any, writer: Writer) -> None:
        """In the opened cube: drop the cells of replaced checkpoints, record rejected files."""
        from ..cube.identity import check_checkpoints

        writer.summary.warnings += check_checkpoints(cube, self.refs)  # replaced: measured again
        for r in self.rejected:
            self._reject(writer, r)

    def rounds(self, cube: Any, writer: Writer, plan: Plan,
               prepared: list[PreparedProbe]) -> Iterator[Round]:
        """The batch round, or --follow's rounds until the run is done."""
        for r in self.unplanned:  # skipped like a bad checkpoint: named, recorded, exit 1
            self._unplanned(writer, r, announce=False)
        if not self.follow:
            tasks = self._tasks(cube, prepared, self.refs, {w: True for w in self.grid_widths},
                                writer.summary)
            writer.start(len(tasks))
            yield Round(tasks, plan, self.grid_epochs, self.grid_widths)
            return
        assert self.idle is not None
        yield from _FollowRounds(self, cube, writer, plan, prepared).rounds()

    def _reject(self, writer: Writer, r: CheckpointRef) -> None:
        if r.path not in self.reported:
            self.reported.add(r.path)
            writer.fail(r.path, str(r.error), width=r.width, epoch=r.epoch, cell=False,
                        announce=False)

    def _unplanned(self, writer: Writer, r: CheckpointRef, announce: bool) -> None:
        if r.path not in self.reported:
            self.reported.add(r.path)
            widths = ", ".join(map(str, (self.run or {}).get("widths", [])))
            msg = (f"{r.path}: width {r.width} was never planned by the trainer (run.json "
                   f"widths: {widths})") if self.run else ""
            writer.fail(r.path, msg, width=r.width, epoch=r.epoch, announce=announce)

    def _tasks(self, cube: Any, prepared: list[PreparedProbe], refs: list[CheckpointRef],
               width_done: Mapping[int, bool],
               summary: Any, attempted: set[tuple[str, str, tuple[int, int]]] | None = None
               ) -> list[Task]:
        """A task per checkpoint that misses a probe (not attempted before in this run; a probe
        that needs a finished width waits for it); the others count as done before."""
        done = {p.probe.name: cube.done(p.probe.name) for p in prepared}
        seen = set() if attempted is None else attempted
        todo: list[Task] = []
        for r in refs:
            st = stamp(r) if attempted is not None else (0, 0)
            missing = tuple(p.probe.name for p in prepared
                            if (r.epoch, r.width) not in done[p.probe.name]
                            and (r.path, p.probe.name, st) not in seen
                            and (width_done[r.width] or not p.probe.needs_finished_width()))
            if not missing:
                if (r.path, "", st) not in seen and all(
                        (r.epoch, r.width) in done[p.probe.name] for p in prepared):
                    summary.skipped_done += 1  # measured by an earlier run
                seen.add((r.path, "", st))
                continue
            seen.add((r.path, "", st))
            seen.update((r.path, name, st) for name in missing)
            todo.append(Task(len(todo), r, missing))
        return todo


class _FollowRounds:
    """--follow's rounds over one source (the state one followed run keeps between rounds)."""

    def __init__(self, src: Source, cube: Any, writer: Writer, plan: Plan,
                 prepared: list[PreparedProbe]) -> None:
        self.src, self.cube, self.writer, self.plan, self.prepared = (src, cube, writer, plan,
                                                                      prepared)
        self.attempted: set[tuple[str, str, tuple[int, int]]] = set()  # (path, probe, stamp)
        self.stamps: dict[str, tuple[int, int]] = {}  # identity-checked files (path -> stamp)
        self.epochs: set[int] = set()
        self.widths: set[int] = set()
        self.known_notes = set(writer.summary.warnings)

    def rounds(self) -> Iterator[Round]:
        src, writer, idle = self.src, self.writer, self.src.idle
        assert idle is not None
        first = True
        while True:
            # the markers before the look, so that it sees every file a marker covers (a width
            # marked done between the look and the check would be measured without its last)
            done = finished(src.run_dir, src.run or {}, src.opts.widths)
            marked = {w: done or is_done(src.run_dir, w) for w in (src.run or {})["widths"]}
            failed_before = len(writer.summary.failed)
            todo = self._look(done, marked)
            if todo:
                if first:
                    writer.start(len(todo))
                else:
                    writer.grow(len(todo))
                yield Round(todo, self.plan, sorted(self.epochs), sorted(self.widths))
                # the run may have been replaced while this round measured: drop its cells
                same_run(self.cube, src.run_dir, src.ident, self.epochs, self.widths,
                         [t.ref for t in todo])
            elif first or len(writer.summary.failed) > failed_before:
                self.cube.materialize(sorted(self.epochs), sorted(self.widths))
            first = False
            if done:
                return
            if todo or idle.active(src.run_dir):
                idle.touch()
            elif idle.expired():
                writer.summary.stopped = (
                    f"{src.run_dir}: --follow: nothing new in {idle.timeout:g} s "
                    "(--idle-timeout) and the run is not marked done (no done marker); stopped "
                    f"with {writer.summary.computed} checkpoint(s) measured, re-run to go on")
                self.cube.materialize(sorted(self.epochs), sorted(self.widths))
                return
            else:
                time.sleep(src.opts.poll)

    def _look(self, done: bool, marked: Mapping[int, bool]) -> list[Task]:
        """One look at the folder: record what is new and bad, grow the plan, the tasks."""
        from ..cube.identity import check_checkpoints

        src, cube, summary = self.src, self.cube, self.writer.summary
        notes: list[str] = []
        found, _ = src.watcher.poll(notes)
        same_run(cube, src.run_dir, src.ident, self.epochs, self.widths)  # before measuring
        for n in notes:
            if n not in self.known_notes:
                self.known_notes.add(n)
                summary.warnings.append(n)
        bad = unplanned(found, src.run)
        for r in bad:
            src._unplanned(self.writer, r, announce=True)
        refs = [r for r in found if r not in bad and src.selected(r) and (done or r.error is None)]
        refs, rejected = screen_widths(refs, src.meta_of, src.opts.model)
        for r in rejected:
            src._reject(self.writer, r)
        summary.checkpoints = len(refs) + len(rejected)
        fresh = [r for r in refs if r.error is None and self.stamps.get(r.path) != stamp(r)]
        src._learn(fresh)
        if fresh and src.delta() != self.plan.delta():
            self.plan = self.plan.grown(src.delta())  # reaches the workers with the round
        summary.warnings += check_checkpoints(cube, fresh)  # replaced: measured again
        self.stamps.update((r.path, stamp(r)) for r in fresh)
        for r in refs:
            self.epochs.add(r.epoch)
            self.widths.add(r.width)
        width_done = {w: marked.get(w, done) for w in {r.width for r in refs}}
        return src._tasks(cube, self.prepared, refs, width_done, summary, self.attempted)


def _metadata_factory(opts: Runner, run: Mapping[str, Any] | None,
                      data: RunData) -> Callable[[CheckpointRef], dict[str, Any]]:
    from ..models import file_arch

    in_channels = int(data.x_train.shape[1])

    def meta_of(ref: CheckpointRef) -> dict[str, Any]:
        """The checkpoint's metadata; an ``arch`` it names as code is refused here, before
        anything is built (screen_widths builds on the meta device), unless --model or
        --trust-code."""
        meta = dict(ref.metadata)
        if "arch" not in meta or run is None:
            meta.update(arch=opts.model, width=ref.width, epoch=ref.epoch,
                        num_classes=data.num_classes, in_channels=in_channels)
        elif opts.model is None:
            file_arch(meta["arch"], ref.path, opts.trust_code)
        return meta

    return meta_of
