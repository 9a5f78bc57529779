"""The ``pool`` executor: ``--workers N`` spawned processes on this machine.

Each worker is a ``spawn`` process (fork with torch's thread pools is unsafe) that sets its torch
threads, loads the run's data itself from the plan and unpickles the prepared probes; then it
measures the tasks the parent sends over its own pipe and sends back plain outcomes. The workers
start once per run and serve every round of it (``--follow``): a plan that grew between rounds
(a new width's metadata, first and last checkpoints) reaches them as a delta before the round's
tasks. One pipe per worker (not a shared queue): a worker killed while sending cannot wedge the others. The parent
notices a dead worker by its pipe and process sentinel, gives the checkpoint it was computing to
another worker (at most twice, then records it as failed with the cause) and starts a
replacement.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import CkptError
from .base import IN_FLIGHT, Scheduler, threads_per_worker
from .work import Outcome, Plan, Task, Worker, describe_death, set_threads


def _worker_main(conn: Connection, plan: Plan, device: str | None, threads: int | None,
                 name: str) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(threads)
    try:
        worker = Worker(plan, device, name=name)
    except BaseException as exc:
        conn.send(("init_error", _portable(exc)))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        if isinstance(task, tuple):  # ("plan", delta): the run's plan grew (--follow)
            worker.update(worker.plan.grown(task[1]))
            continue
        try:
            out = worker.run(task)
        except Exception as exc:
            conn.send(("error", (task, _portable(exc))))
            continue
        conn.send(("done", out))


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it pickles, else a RuntimeError with its first lines."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return RuntimeError(tb)


@dataclass(eq=False)
class _Slot:
    name: str
    device: str | None
    proc: Any
    conn: Connection
    ready: bool = False
    tasks: list[Task] = field(default_factory=list)  # in the order sent; [0] is computing


class PoolExecutor:
    name = "pool"

    def __init__(self, workers: int, devices: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.devices = list(devices or [])
        self.threads = threads
        self.started = 0  # processes started, replacements included (for tests and summaries)
        self.used = 0  # most workers at once in this run
        self._slots: list[_Slot] = []
        self._plan: Plan | None = None  # the plan the live workers measure under

    def _start(self, plan: Plan) -> _Slot:
        ctx = mp.get_context("spawn")
        i = self.started
        dev = self.devices[i % len(self.devices)] if self.devices else None
        parent, child = ctx.Pipe()
        name = f"worker {i}"
        threads = self.threads if self.threads is not None else threads_per_worker(
            min(self.workers, max(self.used, 1)))
        proc = ctx.Process(target=_worker_main, args=(child, plan, dev, threads, name),
                           name=f"ckpt-analyze {name}", daemon=True)
        proc.start()
        child.close()
        self.started += 1
        slot = _Slot(name, dev, proc, parent)
        self._slots.append(slot)
        return slot

    def run(self, plan: Plan, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        """One round: ``tasks`` under ``plan``; the workers stay for the next round."""
        if not tasks:
            return
        slots = self._slots
        if self._plan is not None and plan.delta() != self._plan.delta():
            for slot in slots:
                slot.conn.send(("plan", plan.delta()))
        self._plan = plan
        self.used = max(self.used, min(self.workers, len(tasks)))  # never more than checkpoints
        while len(slots) < self.used:
            self._start(plan)
        yield from self._round(plan, Scheduler(tasks), len(tasks))

    def _round(self, plan: Plan, sched: Scheduler, remaining: int) -> Iterator[list[Outcome]]:
        slots = self._slots

        def feed(slot: _Slot) -> None:
            while slot.ready and len(slot.tasks) < IN_FLIGHT:
                task = sched.next_for(slot)
                if task is None:
                    return
                slot.tasks.append(task)
                slot.conn.send(task)

        for slot in slots:
            feed(slot)
        while remaining:
            ready = wait([s.conn for s in slots] + [s.proc.sentinel for s in slots])
            dead: list[_Slot] = []
            batch: list[Outcome] = []
            for slot in list(slots):
                if slot.conn not in ready and slot.proc.sentinel not in ready:
                    continue
                try:
                    while slot.conn.poll():
                        kind, arg = slot.conn.recv()
                        if kind == "ready":
                            slot.ready = True
                        elif kind == "init_error":
                            raise arg
                        elif kind == "error":
                            task, exc = arg
                            raise exc
                        else:
                            slot.tasks.remove(arg.task)
                            remaining -= 1
                            batch.append(arg)
                except (EOFError, OSError):
                    dead.append(slot)
                    continue
                if not slot.proc.is_alive():
                    dead.append(slot)
            for slot in dead:
                remaining -= self._bury(slot, sched, batch)
                if remaining and (sched.pending() or not slots):
                    self._start(plan)
            for slot in slots:
                feed(slot)  # before yielding: the workers compute while the writer commits
            if batch:
                yield batch

    def _bury(self, slot: _Slot, sched: Scheduler, batch: list[Outcome]) -> int:
        """Remove a dead worker; its tasks go back to the scheduler, or (attempts spent) into
        ``batch`` as failures. Returns how many tasks ended that way."""
        slot.proc.join(5)
        cause = describe_death(slot.proc.exitcode)
        if not slot.ready and not slot.tasks:
            raise CkptError(f"a pool worker could not start ({cause}; its error is "
                            "above; a script that runs Runner with workers must "
                            "do so under if __name__ == '__main__':)")
        self._slots.remove(slot)
        slot.conn.close()
        sched.release(slot)
        ended = 0
        for k, task in enumerate(slot.tasks):
            if not sched.give_back(task, charged=k == 0):
                ended += 1
                batch.append(Outcome(task, error=f"{cause} while measuring it, "
                                     f"{sched.max_attempts} times", worker=slot.name))
        return ended

    def close(self) -> None:
        """Stop the workers (the end of the run, or an error or signal in the writer)."""
        slots, self._slots = self._slots, []
        for slot in slots:
            try:
                slot.conn.send(None)
            except (OSError, ValueError):
                pass
        for slot in slots:
            slot.proc.join(2)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join()
            slot.conn.close()
