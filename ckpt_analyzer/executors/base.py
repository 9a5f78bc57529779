"""The executor protocol and the scheduling shared by the pool and Ray executors."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

from .work import Outcome, Plan, Task

MAX_ATTEMPTS = 3  # a checkpoint whose worker dies is retried twice, then recorded as failed
IN_FLIGHT = 2  # tasks handed to one worker at a time: one computing, the next one waiting


class Executor(Protocol):
    """Runs tasks under a plan and yields their outcomes as they finish (any order), in batches:
    each yielded list holds every outcome that was ready at that moment, so the writer commits
    them in one transaction (group commit) when results arrive faster than the disk syncs.

    An executor never writes the cube. Unexpected worker exceptions are re-raised from the
    iterator; a bad checkpoint or a worker that died too often comes back as ``Outcome.error``.
    Closing the iterator early (Ctrl-C, SIGTERM) stops the workers."""

    name: str

    def run(self, plan: Plan, tasks: Sequence[Task]) -> Iterator[list[Outcome]]: ...


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
