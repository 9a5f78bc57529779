"""Stream checkpoints -> probes -> cube (docs/probes.md, docs/cube.md): the wiring.

:mod:`.plan` turns the options into a picklable plan and the probes (built and prepared once),
:mod:`.source` yields rounds of tasks (one for a batch run, many with ``--follow``), an executor
(:mod:`ckpt_analyzer.executors`) measures them wherever it runs, and :mod:`.writer` (the single
writer) commits the outcomes. The unit of work is one checkpoint, independent of the cube, so an
external engine (Ray, Slurm arrays) can spread checkpoints over devices while one process
writes the cube.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..checkpoints import pattern_time_unit
from ..config import config_to_dict
from ..cube.plan import PLAN_ATTR, add_plan
from ..data.preprocessing import parse_normalize, record
from ..errors import CkptError, UsageError
from ..executors.base import executor_kind
from ..executors.measure import one_line
from .plan import ProbeSpec, build_plan, make_executor, prepare_probes, resolve_probes, with_probes
from .preprocessing import check_preprocessing, preprocessing_note
from .source import Source
from .summary import RunSummary
from .writer import Writer

FOLLOW_POLL_S = 5.0  # --poll: seconds between looks at a followed run folder
FOLLOW_IDLE_S = 3600.0  # --idle-timeout: a followed run that writes nothing this long is given up


# ---------------------------------------------------------------- probe set-up
def auto_batch_size(model: nn.Module, sample: torch.Tensor, device: torch.device,
                    needs_grad: bool = True, cap: int = 8192) -> int:
    """The largest power-of-two batch (<= cap) for which a forward+backward fits the device;
    512 on the CPU, where memory is rarely the limit and larger batches gain little."""
    if device.type != "cuda":
        return 512
    best, bs = 64, 64
    while bs <= cap:
        try:
            x = sample[:1].expand(bs, *sample.shape[1:]).clone().requires_grad_(needs_grad)
            out = model(x)
            if needs_grad:
                torch.autograd.grad(out.sum(), x)
            best = bs
            bs *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return max(64, best // 2)  # headroom for the probes' own buffers


def auto_forward_batch_size(model: nn.Module, sample: torch.Tensor, device: torch.device,
                            batch_size: int, cap: int = 16384) -> int:
    """The batch of forward-only evaluations for ``--forward-batch-size auto``: on CUDA the
    largest power of two whose inference forward fits (:func:`auto_batch_size` without
    backward); on the CPU 4 x the gradient batch, at most 4096."""
    if device.type != "cuda":
        return max(batch_size, min(4 * batch_size, 4096))
    with torch.inference_mode():
        return max(batch_size, auto_batch_size(model, sample, device, needs_grad=False, cap=cap))


@dataclass
class Runner:
    """Everything ``ckpt-analyze run`` needs; :meth:`run` does the work. ``probes``: names (or
    ``all``), Probe classes, or Probe instances (their config kept)."""

    run_dir: str
    probes: Sequence[ProbeSpec]
    output: str | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    tf32: bool = False  # CUDA: allow TF32 matmuls/convolutions (util.set_precision)
    batch_size: str | int = "auto"
    #: forward-only batch: None = batch_size (bit-identical), "auto" or an int (opt-in)
    forward_batch_size: str | int | None = None
    #: bytes the probes' batches may take on the device (None: no budget); the batches are
    #: lowered to fit (probes/_budget.py), exactly as a smaller --batch-size would
    max_memory: int | None = None
    widths: Sequence[int] | None = None
    epochs: Sequence[int] | None = None
    seed: int = 0
    overwrite: bool = False
    strict: bool = False
    model: str | None = None
    #: build an ``arch`` that checkpoint metadata names as code (``file.py:f``, ``module:f``)
    trust_code: bool = False
    dataset: str | None = None
    data_root: str | None = None
    pattern: str | None = None
    allow_pt: bool = False
    prefix: str | None = None
    width: int = 1
    #: --normalize of a foreign folder: dataset | none | MEAN,STD (data/preprocessing.py)
    normalize: str | None = None
    progress: Callable[[str, Any], None] | None = None
    # scale-out (docs/cube.md, "Shards"): where the unit of work runs; the cube is written here
    #: local | pool | ray; None: pool with ``workers`` (or ``devices``), ray with an address,
    #: else local (:func:`~ckpt_analyzer.executors.base.executor_kind`, the CLI's rule too)
    executor: str | None = None
    #: pool processes / Ray actors (None: local; ray: one per slot); "auto": processes for a
    #: small model, else this process's threads (:func:`~ckpt_analyzer.runner.plan.auto_workers`)
    workers: int | str | None = None
    devices: Sequence[str] | None = None  # CUDA devices of the pool workers, e.g. cuda:0, cuda:1
    worker_threads: int | None = None  # torch threads per worker [cores // workers]
    ray_address: str | None = None
    shard: tuple[int, int] | None = None  # (i, n), 1 <= i <= n: this process's share of cells
    plugins: Sequence[str] = ()  # --plugin specs, imported again by every worker
    # --follow: analyze a run while it trains, until its done markers say it is complete
    follow: bool = False
    poll: float = FOLLOW_POLL_S
    idle_timeout: float = FOLLOW_IDLE_S  # 0: wait for ever

    def run(self) -> RunSummary:
        from ..checkpoints.run_data import load_run_data
        from ..device import resolve_device, set_precision
        from .follow import check_follow

        t0 = time.perf_counter()
        kind = executor_kind(self.executor, self.workers, self.devices, self.ray_address)
        probes = resolve_probes(self.probes, self.settings)
        dev = resolve_device(self.device)
        set_precision(dev, self.tf32)
        if self.follow:
            check_follow(self)
        if kind == "ray" and self.ray_address:  # a bad --ray-address fails before any work
            from ..executors.ray import check_address

            check_address(self.ray_address)
        source = Source(self)
        source.open()
        norm = parse_normalize(self.normalize)
        data = load_run_data(source.run_dir, dev, self.dataset, self.data_root, norm)
        source.screen(data)
        plan = build_plan(self, source, data, dev)
        if source.run is None and not self.follow:  # a foreign folder: does the preprocessing fit?
            note = preprocessing_note(source.refs, norm, data,
                                      lambda w: plan.build_model(w, dev),
                                      lambda w, r: plan.read_state(w, r.path, dev), self.allow_pt)
            source.notes.extend([note] if note else [])
        prep = None if source.run else record(norm, data.mean.tolist(), data.std.tolist())
        ready = prepare_probes(probes, plan.context(data, dev), len(plan.epochs),
                               len(plan.widths))
        units = [p.unit() for p in ready if p.error is None]
        executor = make_executor(self, kind, dev, plan, data, units, len(source.refs))
        if executor.name != "local":
            plan = with_probes(plan, units)
        summary = RunSummary(cube=str(self._output(source.run_dir)), probes=[p.name for p in probes],
                             checkpoints=source.checkpoints if self.shard is None
                             else len(source.refs),
                             warnings=source.notes, executor=executor.name,
                             shard=None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}")
        try:
            self._write(source, plan, ready, executor, summary, prep)
        finally:
            executor.close()
        summary.workers = executor.used
        summary.seconds = time.perf_counter() - t0
        return summary

    def _output(self, run_dir: Path) -> Path:
        return Path(self.output) if self.output else run_dir / (
            "analysis.h5" if self.shard is None
            else f"analysis.shard-{self.shard[0]}-of-{self.shard[1]}.h5")

    def _write(self, source: Source, plan: Any, ready: list[Any], executor: Any,
               summary: RunSummary, prep: str | None = None) -> None:
        """Open the cube, record the run's identity and probes, then every round's outcomes."""
        from ..cube import Cube
        from ..cube.identity import check_run

        run_dir = source.run_dir
        with Cube(Path(summary.cube)) as cube:
            summary.warnings += cube.notes  # e.g. a damaged cube rebuilt from its journal
            check_preprocessing(cube, prep, self.overwrite)
            check_run(cube, run_dir, self.overwrite)  # a cube of another run is refused
            writer = Writer(cube, summary, self.progress, self.strict)
            source.begin(cube, writer)
            cube.set_root({"format": "ckpt-analyzer.cube/1", "version": __version__,
                           "source": str(run_dir.resolve()),
                           "time_unit": pattern_time_unit(self.pattern) if self.pattern
                           else str((source.run or {}).get("time_unit", "epoch")),
                           "run_json": (run_dir / "run.json").read_text() if source.run else "",
                           "shard": None if self.shard is None  # merge checks the set
                           else f"{self.shard[0]}/{self.shard[1]}",
                           "normalize": prep})
            units = []
            for p in ready:
                if p.error is not None:
                    writer.fail(str(run_dir), p.error, probe=p.probe.name, strict=True)
                    continue
                try:
                    cube.begin_probe(p.probe.name, p.probe.version,
                                     config_to_dict(p.probe.resolved_config()), self.seed,
                                     p.outputs, p.inputs, overwrite=self.overwrite)
                    cube.set_root({PLAN_ATTR: add_plan(cube.root().get(PLAN_ATTR), p.probe.name,
                                                       list(plan.epochs), list(plan.widths),
                                                       self.overwrite)})
                except UsageError:
                    raise
                except (Exception, SystemExit) as exc:  # this probe is out; the others go on
                    writer.fail(str(run_dir), f"probe '{p.probe.name}' failed to prepare: "
                                f"{exc if isinstance(exc, CkptError) else one_line(exc)}",
                                probe=p.probe.name, strict=True)
                    continue
                units.append(p.unit())
            if not units:
                raise CkptError(f"no probe could be prepared ({summary.failed[-1]['error']})",
                                run_dir)
            with writer.signals():
                for rnd in source.rounds(cube, writer, plan, units):
                    writer.consume(executor.run(rnd.plan, rnd.tasks), rnd.epochs, rnd.widths)


def run_analysis(**kwargs: Any) -> RunSummary:
    return Runner(**kwargs).run()
