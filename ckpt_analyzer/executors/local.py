"""The ``local`` executor: the unit of work in the writer's own process (today's default).

The next checkpoint is read in a background thread while the probes run on the current one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..checkpoints import prefetch
from .work import Outcome, Plan, Task, Worker

if TYPE_CHECKING:
    import torch

    from ..checkpoints.run_data import RunData
    from .measure import PreparedProbe


class LocalExecutor:
    """Measures in this process with the writer's loaded data and prepared probes; yields one
    outcome per list (the writer groups them into transactions)."""

    name = "local"
    used = 1

    def __init__(self, data: RunData | None = None, device: torch.device | None = None,
                 prepared: Sequence[PreparedProbe] = ()) -> None:
        self.data, self.device, self.prepared = data, device, list(prepared)
        self.worker: Worker | None = None

    def run(self, plan: Plan, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        if self.worker is None:
            if self.data is None or self.device is None:
                raise RuntimeError("LocalExecutor.run: no data and device given")
            self.worker = Worker.in_process(plan, self.data, self.device, self.prepared)
        elif plan is not self.worker.plan:
            self.worker.update(plan)
        worker = self.worker
        for task, state in prefetch(tasks, worker.load):
            yield [worker.compute(task, state)]

    def close(self) -> None:
        self.worker = None
