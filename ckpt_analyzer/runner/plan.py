"""Options -> the run's :class:`~ckpt_analyzer.probes.plan.Plan`, its probes and its executor.

One owner per rule: the probes are built once (:func:`resolve_probes`: names, classes or
instances) and prepared once (:func:`prepare_probes`); the plan is the one builder of every
:class:`~ckpt_analyzer.probes.base.Context` (:meth:`Plan.context`); :func:`executor_kind` is the
one rule that turns ``--executor``/``--workers`` into where the checkpoints are measured (in
:mod:`ckpt_analyzer.executors.base`, torch-free: the CLI and :class:`~ckpt_analyzer.runner.Runner`
both call it).
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CkptError, UsageError
from ..executors.work import Plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..checkpoints.run_data import RunData
    from ..executors.measure import PreparedProbe
    from ..probes.base import Context, Probe
    from .core import Runner
    from .source import Source

#: ``--workers auto`` starts processes only for models up to this many parameters (larger ones
#: already keep the cores busy through torch's own threads; README "Scale-out")
AUTO_MAX_PARAMS = 1_000_000
#: ... and only with at least this many checkpoints per worker (each pays its start-up)
AUTO_MIN_PER_WORKER = 8
#: fewest cores for which ``--workers auto`` starts processes: on 2 idle cores --workers 2 was
#: 0.79x of this process's 2 threads on a 33-checkpoint digits job and 1.03-1.13x on a
#: one-minute one (benchmarks/bench_scale.py section 5; issue 22), so 2 cores stay in-process
AUTO_MIN_CORES = 4

ProbeSpec = Any  # a registered name, a Probe class or a Probe instance


def resolve_probes(specs: Sequence[ProbeSpec], settings: Mapping[str, Mapping[str, Any]]
                   ) -> list[Probe[Any]]:
    """The run's probe objects, built once: a name (or ``all``) through the registry with its
    ``settings``, a class with its default config (or its ``settings``), an instance as it is
    (its config kept), as xarray's ``open_dataset(engine=...)`` takes a name or a backend."""
    from ..config import build_config
    from ..probes import make_probes
    from ..probes.base import Probe

    names = [s for s in specs if isinstance(s, str)]
    by_name = {p.name: p for p in make_probes(names, {k: v for k, v in settings.items()
                                                      if k in names or "all" in names})
               } if names else {}
    out: list[Probe[Any]] = []
    for s in specs:
        if isinstance(s, str):
            out += [p for n, p in by_name.items() if n == s or s == "all"]
        elif isinstance(s, type) and issubclass(s, Probe):
            out.append(s(build_config(s.Config, settings.get(s.name, {}), owner=s.name)))
        elif isinstance(s, Probe):
            out.append(s)
        else:
            raise UsageError(f"probes: expected a probe name, class or instance, got {s!r}")
    if not out:
        raise UsageError("no probe selected (use --probe NAME or --probe all)")
    seen: dict[str, Probe[Any]] = {}
    for p in out:
        seen.setdefault(p.name, p)
    stray = [n for n in settings if n not in seen]
    if stray:
        raise UsageError(f"--set/--config for '{stray[0]}', which is not a selected probe")
    return list(seen.values())


def auto_workers(params: int, checkpoints: int, cores: int) -> int | None:
    """``--workers auto``: the number of worker processes, or None for in-process threads.
    Processes pay off for small models (a forward is too short for torch's threads to share
    it, while each process gets a whole core) and enough checkpoints to hide their start-up."""
    if cores < AUTO_MIN_CORES or params > AUTO_MAX_PARAMS:
        return None
    n = min(cores, checkpoints // AUTO_MIN_PER_WORKER)
    return n if n >= 2 else None


def build_plan(opts: Runner, source: Source, data: RunData, dev: torch.device) -> Plan:
    """The run's plan (without probes): the source's widths, epochs and states, and the batch
    sizes (``auto`` measured on the largest width's model)."""
    from .core import auto_batch_size, auto_forward_batch_size

    plugins = tuple(str(Path(p).resolve()) if p.endswith(".py") or Path(p).is_file() else p
                    for p in opts.plugins)
    plan = Plan(run_dir=str(source.run_dir.resolve()), plugins=plugins, device=str(dev),
                tf32=opts.tf32, seed=opts.seed, run=dict(source.run or {}),
                widths=tuple(source.grid_widths), epochs=tuple(source.grid_epochs),
                model=opts.model, trust_code=opts.trust_code, dataset=opts.dataset,
                data_root=opts.data_root, allow_pt=opts.allow_pt, prefix=opts.prefix,
                normalize=opts.normalize, max_memory=opts.max_memory,
                strict=opts.strict).grown(source.delta())

    def largest() -> nn.Module:
        return plan.build_model(plan.widths[-1], dev)

    if isinstance(opts.batch_size, str) and opts.batch_size == "auto":
        bs = auto_batch_size(largest(), data.x_train, dev)
    else:
        bs = int(opts.batch_size)
        if bs < 1:
            raise UsageError(f"--batch-size: must be a positive integer or auto (got {bs})")
    fbs: int | None = None
    if isinstance(opts.forward_batch_size, str) and opts.forward_batch_size == "auto":
        fbs = auto_forward_batch_size(largest(), data.x_train, dev, bs)
    elif opts.forward_batch_size is not None:
        fbs = int(opts.forward_batch_size)
        if fbs < 1:
            raise UsageError("--forward-batch-size: must be a positive integer, auto or "
                             f"same (got {fbs})")
    return dataclasses.replace(plan, batch_size=bs, forward_batch_size=fbs)


@dataclasses.dataclass
class Prepared:
    """A probe after its one :meth:`~Probe.prepare`: its fixed inputs, or the failure's line."""

    probe: Probe[Any]
    inputs: dict[str, Any] | None = None
    outputs: Any = None
    error: str | None = None

    def unit(self) -> PreparedProbe:
        """The probe as executors measure it (with its declared outputs)."""
        from ..executors.measure import PreparedProbe

        return PreparedProbe(self.probe, self.outputs)


def prepare_probes(probes: Sequence[Probe[Any]], ctx: Context, epochs: int, widths: int
                   ) -> list[Prepared]:
    """Prepare each probe once. A probe whose results would not fit in memory (a size parameter
    set far too high) is a UsageError before the cube is opened; one that fails to prepare is
    returned with its line (the writer records it; the others go on)."""
    import numpy as np

    from ..cube.schema import group_size_problem
    from ..executors.measure import one_line

    out = []
    for p in probes:
        try:
            inputs = {k: np.asarray(v) for k, v in p.prepare(ctx).items()}
            outs = p.outputs()
        except UsageError:
            raise
        except (Exception, SystemExit) as exc:  # this probe is out; the others go on
            out.append(Prepared(p, error=f"probe '{p.name}' failed to prepare: "
                                f"{exc if isinstance(exc, CkptError) else one_line(exc)}"))
            continue
        problem = group_size_problem(p.name, outs, epochs, widths)
        if problem:
            raise UsageError(problem)
        out.append(Prepared(p, inputs=inputs, outputs=outs))
    return out


def with_probes(plan: Plan, prepared: Sequence[PreparedProbe]) -> Plan:
    """The plan a worker process gets: the prepared probes pickled into it (their fixed inputs
    travel with them, so no worker draws them again)."""
    return dataclasses.replace(plan, probes=pickle.dumps(list(prepared)))


def make_executor(opts: Runner, kind: str, dev: torch.device, plan: Plan, data: RunData,
                  prepared: Sequence[PreparedProbe], checkpoints: int) -> Any:
    """The executor object of ``kind`` (``auto`` decided here from the model's size)."""
    import torch

    from ..executors.base import available_cores
    from ..executors.local import LocalExecutor

    workers = opts.workers if isinstance(opts.workers, int) else None
    if kind == "auto":
        params = sum(p.numel() for p in plan.build_model(plan.widths[-1], "meta").parameters())
        workers = auto_workers(params, checkpoints, available_cores())
        kind = "local" if workers is None or dev.type == "cuda" else "pool"
    if kind == "local":
        return LocalExecutor(data, dev, prepared)
    devices = list(opts.devices or [])
    if devices and dev.type != "cuda":
        raise UsageError(f"--devices: the device is {dev.type}; pass --device cuda (or auto "
                         "on a machine with CUDA)")
    if kind == "pool":
        if dev.type == "cuda" and not devices:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        from ..executors.pool import PoolExecutor

        return PoolExecutor(workers or max(1, len(devices)), devices or [str(dev)],
                            threads=opts.worker_threads)
    from ..executors.ray import RayExecutor

    return RayExecutor(workers, opts.ray_address, device=dev.type, threads=opts.worker_threads)
