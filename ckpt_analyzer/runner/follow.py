"""``ckpt-analyze run --follow``: the rules of following a run that is still training (what
it refuses, when the run is finished, the idle clock, the same-run check); the rounds themselves
are :class:`~ckpt_analyzer.runner.source.Source`'s."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import CheckpointRef, is_done
from ..errors import CkptError, UsageError

if TYPE_CHECKING:
    from .core import Runner


def check_follow(opts: Runner) -> None:
    """One line for what --follow does not support."""
    if opts.shard is not None:
        raise UsageError("--follow: --shard deals a finished run's checkpoints; shard after "
                         "training")
    if opts.model is not None or opts.pattern is not None:
        raise UsageError("--follow needs a run folder written by ckpt-train or RunWriter "
                         "(run.json plans the widths); --model/--pattern folders are "
                         "analyzed after training")
    if not opts.poll > 0:
        raise UsageError(f"--poll: must be positive (got {opts.poll:g})")
    if not opts.idle_timeout >= 0:
        raise UsageError(f"--idle-timeout: must be >= 0 (got {opts.idle_timeout:g})")


def finished(run_dir: Path, run: Mapping[str, Any], widths: Sequence[int] | None) -> bool:
    """The trainer's markers say every wanted width has all its checkpoints."""
    if is_done(run_dir):
        return True
    return all(is_done(run_dir, w) for w in run["widths"] if widths is None or w in widths)


def same_run(cube: Any, run_dir: Path, ident: Mapping[str, Any], epochs: set[int],
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


def planned(run: Mapping[str, Any] | None) -> bool:
    widths = (run or {}).get("widths")
    return isinstance(widths, list) and bool(widths) and all(
        isinstance(w, int) and not isinstance(w, bool) for w in widths)


def stamp(ref: CheckpointRef) -> tuple[int, int]:
    try:
        st = Path(ref.path).stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


class Idle:
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

    def wait_for(self, path: Path, what: str) -> None:
        """Sleep ``poll`` until ``path`` exists (the trainer may not have begun), or one line."""
        while not path.is_file():
            if self.expired():
                raise CkptError(f"--follow: {what} in {self.timeout:g} s (--idle-timeout)",
                                path.parent)
            time.sleep(self.poll)


def unplanned(refs: Sequence[CheckpointRef], run: Mapping[str, Any] | None) -> list[CheckpointRef]:
    """Checkpoints of widths that run.json does not plan (none when it plans no widths)."""
    planned = (run or {}).get("widths")
    if not isinstance(planned, list):
        return []
    return [r for r in refs if r.width not in planned]
