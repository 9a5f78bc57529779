"""The executor protocol and the scheduling shared by the pool and Ray executors."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..errors import UsageError
from .work import Outcome, Plan, Task

MAX_ATTEMPTS = 3  # a checkpoint whose worker dies is retried twice, then recorded as failed
IN_FLIGHT = 2  # tasks handed to one worker at a time: one computing, the next one waiting


class Executor(Protocol):
    """Runs tasks under a plan and yields their outcomes as they finish (any order), in batches:
    each yielded list holds every outcome that was ready at that moment, so the writer commits
    them in one transaction (group commit) when results arrive faster than the disk syncs.

    An executor never writes the cube. Unexpected worker exceptions are re-raised from the
    iterator; a bad checkpoint or a worker that died too often comes back as ``Outcome.error``.
    ``run`` is called once per round of the run (a batch run has one, ``--follow`` many); the
    workers start on the first round and stay until :meth:`close` (the writer calls it at the
    end of the run, also after an error or a signal), so a run pays their start-up once."""

    name: str
    used: int  # the most workers measuring at once in this run

    def run(self, plan: Plan, tasks: Sequence[Task]) -> Iterator[list[Outcome]]: ...

    def close(self) -> None: ...


def executor_kind(executor: str | None, workers: int | str | None,
                  devices: Sequence[str] | None = None, ray_address: str | None = None) -> str:
    """The one rule for where checkpoints are measured: ``local``, ``pool``, ``ray`` or ``auto``
    (``--workers auto``: decided by :func:`ckpt_analyzer.runner.plan.auto_workers` once the model is known). ``--workers
    N`` without ``--executor`` means N processes; ``--executor local`` with N > 1 is refused
    (local measures in this process)."""
    if isinstance(workers, str) and workers != "auto":
        raise UsageError(f"--workers: a number or auto (got {workers})")
    if isinstance(workers, int) and workers < 1:
        raise UsageError(f"--workers: must be at least 1 (got {workers})")
    if ray_address is not None and executor not in (None, "ray"):
        raise UsageError("--ray-address: only with --executor ray")
    if workers == "auto":
        if executor not in (None, "auto"):
            raise UsageError("--workers auto chooses the executor: pass no --executor")
        return "auto"
    kind = executor or ("ray" if ray_address else "pool" if workers or devices else "local")
    if kind == "local" and isinstance(workers, int) and workers > 1:
        raise UsageError(f"--workers {workers}: --executor local measures in this process; "
                         "pass --executor pool (or no --executor) for processes, or ray")
    if kind not in ("local", "pool", "ray"):
        raise UsageError(f"--executor: unknown executor '{kind}' (local, pool or ray)")
    return kind


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that workers x threads <= cores."""
    return max(1, (cores or available_cores()) // max(1, workers))


class Scheduler:
    """Hands out tasks to worker slots with width affinity and counts attempts.

    A slot keeps taking checkpoints of the width it works on (its model is built once); when
    that width is exhausted it claims the next width nobody works on, in the run's order; when
    none is left it takes from the end of the width with the most checkpoints left (so two
    workers finish a long width together)."""

    def __init__(self, tasks: Sequence[Task], max_attempts: int = MAX_ATTEMPTS) -> None:
        self.queues: dict[int, deque[Task]] = {}
        for t in tasks:
            self.queues.setdefault(t.ref.width, deque()).append(t)
        self.owner: dict[int, object] = {}  # width -> slot
        self.slot_width: dict[object, int] = {}
        self.attempts: dict[int, int] = {}
        self.max_attempts = max_attempts

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def next_for(self, slot: object) -> Task | None:
        w = self.slot_width.get(slot)
        if w is not None and self.queues.get(w):
            return self._take(slot, w, front=True)
        for w, q in self.queues.items():
            if q and w not in self.owner:
                return self._take(slot, w, front=True)
        busy = [(len(q), w) for w, q in self.queues.items() if q]
        if not busy:
            return None
        return self._take(slot, max(busy)[1], front=False)

    def _take(self, slot: object, width: int, front: bool) -> Task:
        old = self.slot_width.get(slot)
        if old is not None and old != width and self.owner.get(old) is slot:
            del self.owner[old]
        self.slot_width[slot] = width
        self.owner.setdefault(width, slot)
        q = self.queues[width]
        task = q.popleft() if front else q.pop()
        self.attempts[task.index] = self.attempts.get(task.index, 0) + 1
        return task

    def release(self, slot: object) -> None:
        """A slot is gone: its widths may be claimed by others."""
        self.slot_width.pop(slot, None)
        for w in [w for w, s in self.owner.items() if s is slot]:
            del self.owner[w]

    def give_back(self, task: Task, charged: bool) -> bool:
        """Return a task whose worker died. ``charged``: it was the one being computed (its
        attempt counts). False when it has had its attempts (record it as failed)."""
        if not charged:
            self.attempts[task.index] -= 1
        elif self.attempts[task.index] >= self.max_attempts:
            return False
        self.queues[task.ref.width].appendleft(task)
        return True
