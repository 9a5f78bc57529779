"""The unit of work: a picklable :class:`Plan` (:mod:`ckpt_analyzer.probes.plan`), one
:class:`Task` per checkpoint, and the :class:`Worker` that measures tasks and returns plain :class:`Outcome` s.

Nothing here touches the cube, progress displays or signals: a worker lives in the writer's
process (the ``local`` executor), in a spawned process (``pool``) or in a Ray actor (``ray``), and
only the writer (the runner) commits outcomes to the cube's journal.

Decision: probes travel *pickled after* :meth:`Probe.prepare`. The parent prepares each probe once
(its fixed inputs are numpy arrays that are also stored in the cube); the plan carries the pickled
probe objects as bytes, and a worker first imports the run's ``--plugin`` s and then unpickles
them. So a worker never re-draws inputs, and every worker measures on exactly the inputs the cube
records. (A probe must therefore be picklable after ``prepare``: hold numpy arrays or plain data,
and build device caches lazily in ``__call__``, as the built-in probes do.)
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..checkpoints import CheckpointRef
from ..errors import CheckpointError
from ..probes.plan import Plan

__all__ = ["KEEP_MODELS", "Outcome", "Plan", "Task", "Worker", "describe_death",
           "measure_checkpoint", "set_threads"]

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints.run_data import RunData
    from .measure import PreparedProbe

KEEP_MODELS = 2  # models kept per worker (one per width, least recently used dropped)


@dataclass(frozen=True)
class Task:
    """One checkpoint and the probes it still misses (``index``: its place in the run's order)."""

    index: int
    ref: CheckpointRef
    probes: tuple[str, ...]


@dataclass
class Outcome:
    """What a worker returns for one task: results per probe, or the failure's cause."""

    task: Task
    results: dict[str, dict[str, Any]] | None = None
    error: str | None = None
    probe_failures: dict[str, str] = field(default_factory=dict)  # probe -> one-line cause
    probe_seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    cpu_seconds: float = 0.0  # CPU time of the worker's process on this task (load + probes)
    warnings: list[str] = field(default_factory=list)  # the probes' warnings, for the writer


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads of this process (before any work, so the pools are sized once)."""
    if threads is None:
        return
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


class Worker:
    """Measures tasks of one plan; keeps one model per width (LRU of :data:`KEEP_MODELS`) and
    the probes' prepared state between checkpoints.

    ``Worker(plan)`` loads the data and unpickles the probes from the plan (pool processes, Ray
    actors); :meth:`in_process` reuses the writer's loaded data and prepared probes (``local``).
    Both build their context with :meth:`Plan.context`; :meth:`update` takes a grown plan
    (``--follow``: a new width's metadata, first and last checkpoints) between rounds.
    """

    def __init__(self, plan: Plan, device: str | None = None, name: str = "") -> None:
        import torch

        from ..checkpoints.run_data import load_run_data
        from ..device import set_precision
        from ..probes import load_plugin

        dev = torch.device(device or plan.device)
        set_precision(dev, plan.tf32)
        for spec in plan.plugins:
            load_plugin(spec, replace=True)  # the parent checked the names
        prepared: list[PreparedProbe] = pickle.loads(plan.probes)
        from ..data.preprocessing import parse_normalize

        data = load_run_data(plan.run_dir, dev, plan.dataset, plan.data_root,
                             parse_normalize(plan.normalize))
        self._setup(plan, data, dev, prepared, name or f"pid {os.getpid()}")

    @classmethod
    def in_process(cls, plan: Plan, data: RunData, device: torch.device,
                   prepared: Sequence[PreparedProbe], name: str = "local") -> Worker:
        self = cls.__new__(cls)
        self._setup(plan, data, device, prepared, name)
        return self

    def _setup(self, plan: Plan, data: RunData, device: torch.device,
               prepared: Sequence[PreparedProbe], name: str) -> None:
        self.name = name
        self.data = data
        self.device = device
        self.prepared = list(prepared)
        self.models: OrderedDict[int, nn.Module] = OrderedDict()
        #: width -> the model's state keys (what :meth:`load` reads ahead)
        self.keys: dict[int, list[str]] = {}
        self.update(plan)

    def update(self, plan: Plan) -> None:
        """Measure under ``plan`` from now on (the same run; grown widths and states)."""
        self.plan = plan
        self.ctx = plan.context(self.data, self.device)
        self.allow_pt, self.prefix, self.strict = plan.allow_pt, plan.prefix, plan.strict

    def build(self, width: int) -> nn.Module:
        return self.plan.build_model(width, self.device)

    # -- the two halves of one task (the local executor prefetches the first in a thread)

    def load(self, task: Task) -> Mapping[str, torch.Tensor]:
        """The checkpoint's tensors: a safetensors file is opened lazily and, once a model of
        its width was built, only the model's tensors are read here (an unused tensor in the
        file is never read)."""
        from ..checkpoints import SafetensorsState, model_keys, open_state

        ref = task.ref
        if ref.error:
            raise CheckpointError(ref.error.split(": ", 1)[-1], ref.path)
        state = open_state(ref.path, "cpu", self.allow_pt)
        want = self.keys.get(ref.width)
        if want is not None and isinstance(state, SafetensorsState):
            state.preload(model_keys(state, want, self.prefix))
        return state

    def compute(self, task: Task, state: Mapping[str, torch.Tensor] | BaseException) -> Outcome:
        """Measure one loaded checkpoint. A bad checkpoint (:class:`CheckpointError`) becomes
        ``Outcome.error``; anything else is a bug or a device fault and propagates."""
        from ..checkpoints import load_state_into
        from .measure import measure

        ref = task.ref
        timings: dict[str, float] = {}
        try:
            if isinstance(state, BaseException):
                raise state
            model = self.models.get(ref.width)
            if model is None:
                while len(self.models) >= KEEP_MODELS:
                    self.models.popitem(last=False)
                model = self.models[ref.width] = self.build(ref.width)
            self.models.move_to_end(ref.width)
            self.keys.setdefault(ref.width, list(model.state_dict()))
            load_state_into(model, state, ref.path, self.prefix)
            model.to(self.ctx.device)
            plist = [p for p in self.prepared if p.probe.name in task.probes]
            failures: dict[str, str] = {}
            with warnings.catch_warnings(record=True) as caught:  # shown once, by the writer
                warnings.simplefilter("always")
                results = measure(model, ref, plist, self.ctx, timings, failures, self.strict)
        except CheckpointError as exc:
            return Outcome(task, error=str(exc), probe_seconds=timings, worker=self.name)
        return Outcome(task, results=results, probe_failures=failures, probe_seconds=timings,
                       worker=self.name, warnings=list(dict.fromkeys(str(w.message)
                                                                    for w in caught)))

    def run(self, task: Task) -> Outcome:
        cpu = time.process_time()
        try:
            state: Any = self.load(task)
        except Exception as exc:
            state = exc
        out = self.compute(task, state)
        out.cpu_seconds = time.process_time() - cpu
        return out


def measure_checkpoint(plan: Plan, task: Task, _cache: dict[int, Worker] = {}) -> Outcome:  # noqa: B006
    """The unit of work as one plain function: measure ``task`` under ``plan``. The worker (data,
    prepared probes, models) is kept per plan in this process, so repeated calls are cheap."""
    key = id(plan)
    worker = _cache.get(key)
    if worker is None or worker.plan is not plan:
        _cache.clear()
        worker = _cache[key] = Worker(plan)
    return worker.run(task)


def describe_death(exitcode: int | None) -> str:
    import signal

    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    return f"worker exited with code {exitcode}"
