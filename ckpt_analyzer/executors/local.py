"""The ``local`` executor: the unit of work in the writer's own process (today's default).

The next checkpoint is read in a background thread while the probes run on the current one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..checkpoints import prefetch
from .work import Outcome, Plan, Task, Worker


class LocalExecutor:
    name = "local"

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker  # the runner sets it once the probes are prepared

    def run(self, plan: Plan | None, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        worker = self.worker
        if worker is None:
            raise RuntimeError("LocalExecutor.run: no worker set")
        for task, state in prefetch(tasks, worker.load):
            yield [worker.compute(task, state)]
