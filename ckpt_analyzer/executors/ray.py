"""The ``ray`` executor: Ray actors, one per GPU of the cluster (or per CPU slot without GPUs).

Each actor holds a :class:`~.work.Worker` (data, prepared probes, one model per width) and is
fed like a pool process: width affinity, two tasks in flight, results gathered back to the
writer (the runner, in this process). The actors start once per run and serve every round of it
(``--follow``); a plan that grew between rounds reaches them as a delta before the round's
tasks. An actor that dies (node lost, SIGKILL, out of memory) fails its pending calls with
``RayActorError``: the checkpoint it was computing is retried on another actor (twice at most,
then recorded as failed with the cause) and a replacement actor is started. Ray is optional:
``pip install 'ckpt-analyzer[ray]'``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import CkptError, UsageError
from .base import IN_FLIGHT, Scheduler
from .work import Outcome, Plan, Task, Worker, set_threads

INSTALL_HINT = "--executor ray needs Ray: pip install 'ckpt-analyzer[ray]'"
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within seconds, in one line, when ``host:port`` does not answer (``ray.init`` itself
    may wait a minute or more). ``auto`` and ``ray://`` addresses are left to Ray."""
    if address == "auto" or address == "local":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address '{address}': expected auto or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise CkptError(f"the Ray cluster at {address} does not answer "
                        f"({exc.strerror or exc}); start it with 'ray start --head' or "
                        "check --ray-address") from None


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """Connect to (or start, without an address) a Ray cluster; reuse one already connected."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address:
        check_address(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=num_cpus, log_to_driver=False, configure_logging=False)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()
        raise CkptError(f"cannot connect to Ray at {address or 'a new local cluster'}: "
                        f"{msg[0] if msg else type(exc).__name__}") from None
    return ray


class _Actor:
    """The body of the Ray actor (wrapped with ``ray.remote`` on first use)."""

    def __init__(self, plan: Plan, device: str | None, threads: int, name: str) -> None:
        set_threads(threads)
        self.worker = Worker(plan, device, name=name)

    def ready(self) -> bool:
        return True

    def update(self, delta: dict[str, Any]) -> None:
        self.worker.update(self.worker.plan.grown(delta))

    def run(self, task: Task) -> Outcome:
        return self.worker.run(task)


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None,
                 device: str = "cpu", threads: int | None = None) -> None:
        self.workers = workers
        self.address = address
        self.device = device
        self.threads = threads
        self.ray = connect(address)
        self.started = 0
        self.used = 0  # most actors at once in this run
        self._actors: dict[Any, list[tuple[Task, Any]]] = {}
        self._actor_cls: Any = None
        self._device = "cpu"
        self._plan: Plan | None = None
        self._plan_ref: Any = None

    def _slots(self) -> tuple[int, bool]:
        res = self.ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        use_gpu = self.device.startswith("cuda") and gpus > 0
        if self.workers is not None:
            return self.workers, use_gpu
        return (gpus if use_gpu else max(1, int(res.get("CPU", 1)))), use_gpu

    def run(self, plan: Plan, tasks: Sequence[Task]) -> Iterator[list[Outcome]]:
        """One round: ``tasks`` under ``plan``; the actors stay for the next round."""
        if not tasks:
            return
        ray = self.ray
        n, use_gpu = self._slots()
        self.used = max(self.used, min(n, len(tasks)))
        if self._actor_cls is None:
            threads = self.threads or 1
            self._actor_cls = ray.remote(_Actor).options(
                num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else threads,
                max_restarts=0, max_concurrency=1)
            self._device = "cuda" if use_gpu else "cpu"
        if self._plan is None or plan.delta() != self._plan.delta():
            if self._plan is not None:
                for a in self._actors:  # an actor runs its calls in order: before the tasks
                    a.update.remote(plan.delta())
            self._plan_ref = ray.put(plan)
        self._plan = plan
        while len(self._actors) < self.used:
            self._start()
        yield from self._round(Scheduler(tasks), len(tasks))

    def _start(self) -> Any:
        a = self._actor_cls.remote(self._plan_ref, self._device, self.threads or 1,
                                   f"ray actor {self.started}")
        self.started += 1
        self._actors[a] = []
        return a

    def _round(self, sched: Scheduler, remaining: int) -> Iterator[list[Outcome]]:
        ray = self.ray
        from ray.exceptions import GetTimeoutError, RayActorError

        actors = self._actors  # actor -> [(task, ref)] in order sent
        owner: dict[Any, Any] = {}  # ref -> actor

        def feed(a: Any) -> None:
            while len(actors[a]) < IN_FLIGHT:
                task = sched.next_for(a)
                if task is None:
                    return
                ref = a.run.remote(task)
                actors[a].append((task, ref))
                owner[ref] = a

        for a in list(actors):
            feed(a)
        while remaining:
            refs = list(owner)
            if not refs:
                raise CkptError("no Ray actor is left to measure the remaining checkpoints")
            done, rest = ray.wait(refs, num_returns=1, timeout=None)
            if rest:  # and whatever else is ready now: one batch for the writer
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            batch: list[Outcome] = []
            for ref in done:
                a = owner.pop(ref, None)
                if a is None:  # its actor died earlier in this batch
                    continue
                try:
                    out = ray.get(ref)
                except (RayActorError, GetTimeoutError) as exc:
                    cause = f"Ray actor died ({type(exc).__name__})"
                    pending = actors.pop(a, [])
                    for _, r in pending:
                        owner.pop(r, None)
                    sched.release(a)
                    for k, (task, _) in enumerate(pending):
                        if not sched.give_back(task, charged=k == 0):
                            remaining -= 1
                            batch.append(Outcome(task, error=f"{cause} while measuring "
                                                 f"it, {sched.max_attempts} times"))
                    with contextlib.suppress(Exception):
                        ray.kill(a)
                    if remaining and (sched.pending() or not actors):
                        feed(self._start())
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                actors[a] = [(t, r) for t, r in actors[a] if r != ref]
                remaining -= 1
                batch.append(out)
            for b in list(actors):
                feed(b)  # before yielding: the actors compute while the writer commits
            if batch:
                yield batch

    def close(self) -> None:
        """Stop the actors (the end of the run, or an error or signal in the writer)."""
        actors, self._actors = self._actors, {}
        for a in list(actors):
            with contextlib.suppress(Exception):
                self.ray.kill(a)
