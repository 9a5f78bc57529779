"""Stream checkpoints -> probes -> cube (docs/probes.md, docs/cube.md).

The unit of work is one checkpoint: :func:`measure` takes a loaded model and the prepared
probes and returns plain arrays, independent of the cube, so an external engine (Ray, Slurm
arrays) can spread checkpoints over devices while one process writes the cube.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoints import (
    PICKLE_EXTS,
    CheckpointRef,
    Watcher,
    build_model_for,
    open_state,
    pattern_time_unit,
    read_run_json,
    screen_widths,
    strip_prefix,
)
from ..config import config_to_dict
from ..cube.identity import check_checkpoints, check_run, run_identity
from ..cube.plan import PLAN_ATTR, add_plan
from ..data.run import RunData, load_run_data
from ..errors import CheckpointError, CkptError, UsageError
from ..executors.local import LocalExecutor
from ..executors.measure import PreparedProbe, one_line
from ..executors.work import Outcome, Plan, Task, Worker
from ..models import file_arch
from ..probes import make_probes
from ..probes.base import Context, Probe
from .follow import FollowMixin, _Idle, _planned, _unplanned
from .summary import RunSummary, _Terminated

MATERIALIZE_EVERY_S = 30.0
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
class Runner(FollowMixin):
    """Everything ``ckpt-analyze run`` needs; :meth:`run` does the work."""

    run_dir: str
    probes: Sequence[str]
    output: str | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    tf32: bool = False  # CUDA: allow TF32 matmuls/convolutions (util.set_precision)
    batch_size: str | int = "auto"
    #: forward-only batch: None = batch_size (bit-identical), "auto" or an int (opt-in)
    forward_batch_size: str | int | None = None
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
    progress: Callable[[str, Any], None] | None = None
    # scale-out (docs/cube.md, "Shards"): where the unit of work runs; the cube is written here
    executor: str = "local"  # local | pool | ray
    workers: int | None = None  # pool processes / Ray actors (None: local; ray: one per slot)
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
        from ..cube import Cube
        from ..util import resolve_device, set_precision

        t0 = time.perf_counter()
        probes = make_probes(self.probes, self.settings)
        dev = resolve_device(self.device)
        set_precision(dev, self.tf32)
        run_dir = Path(self.run_dir)
        idle = _Idle(self.idle_timeout, self.poll) if self.follow else None
        if idle is not None:
            self._check_follow()
            while not (run_dir / "run.json").is_file():  # the trainer may not have begun
                if idle.expired():
                    raise CkptError(f"--follow: no run.json appeared in {idle.timeout:g} s "
                                    "(--idle-timeout)", run_dir)
                time.sleep(self.poll)
        if not run_dir.is_dir():
            raise CkptError("no such run folder", run_dir)
        # --follow: the run as it is now (before its manifest and labels are read), compared
        # every round so that a folder refilled by another run is not measured against these
        ident = run_identity(run_dir) if idle is not None else None
        run = read_run_json(run_dir)
        if idle is not None and not _planned(run):
            raise UsageError(f"{run_dir}: --follow needs the planned widths in run.json (written "
                             "by ckpt-train, or RunWriter(widths=...)) to know when the run is "
                             "complete; analyze this folder after training instead")
        if idle is not None and self.widths is not None and not set(self.widths) & set(
                (run or {})["widths"]):
            raise UsageError(f"--widths: none of {', '.join(map(str, self.widths))} is planned "
                             f"(run.json widths: {', '.join(map(str, (run or {})['widths']))})")
        if run is None and self.model is None:
            raise UsageError(f"{run_dir}: no run.json, so this is a foreign folder: pass "
                             "--model MODULE:FACTORY (and --dataset, --pattern)")
        if self.pattern and not self.allow_pt and self.pattern.endswith(PICKLE_EXTS):
            raise UsageError(f"--pattern '{self.pattern}' names pickle-based files: pass "
                             "--allow-pt (read with torch.load(weights_only=True) only)")
        notes: list[str] = []
        watcher = Watcher(run_dir, self.pattern, self.allow_pt, self.width)
        if idle is None:
            all_refs = watcher.poll(notes)[0]
        else:
            all_refs = self._first_checkpoint(watcher, run_dir, run or {}, idle, notes)
        unplanned = _unplanned(all_refs, run)
        all_refs = [r for r in all_refs if r not in unplanned]
        refs = [r for r in all_refs if self._selected(r) and (idle is None or r.error is None)]
        if not refs:
            where = "" if len(all_refs) == 0 else f" matching --widths/--epochs (found {len(all_refs)})"
            hint = "" if run is not None or self.pattern else " (foreign folder? pass --pattern)"
            pt = next((n.split(": ", 1)[1] for n in notes if "--allow-pt" in n), "")
            raise CkptError(f"no checkpoints{where}{hint}{'; ' + pt if pt else ''}", run_dir)
        data = load_run_data(run_dir, dev, self.dataset, self.data_root)
        meta_of = self._metadata_factory(run, data)
        refs, rejected = screen_widths(refs, meta_of, self.model)
        if not refs:
            raise CkptError(rejected[0].error or "no checkpoints", rejected[0].path)
        all_refs = [r for r in all_refs if r not in rejected]
        grid_epochs = sorted({r.epoch for r in refs})
        grid_widths = sorted({r.width for r in refs})
        if idle is not None:  # the probes see the planned grid, as after training
            grid_widths = sorted(w for w in (run or {})["widths"]
                                 if self.widths is None or w in self.widths)
            planned = ((run or {}).get("save") or {}).get("epochs")
            if isinstance(planned, list):
                grid_epochs = sorted(e for e in planned if self.epochs is None or e in self.epochs)
        n_checkpoints = len(refs) + len(rejected)
        if self.shard is not None:
            from ..executors.shard import shard_refs

            refs = shard_refs(refs, *self.shard)
        executor = self._executor(dev)  # a bad --ray-address fails before any work
        output = Path(self.output) if self.output else run_dir / (
            "analysis.h5" if self.shard is None
            else f"analysis.shard-{self.shard[0]}-of-{self.shard[1]}.h5")
        summary = RunSummary(cube=str(output), probes=[p.name for p in probes],
                             checkpoints=n_checkpoints if self.shard is None else len(refs),
                             warnings=notes, executor=executor.name,
                             shard=None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}")

        widths = grid_widths
        width_meta = {r.width: meta_of(r) for r in all_refs if r.error is None}
        width_src = {r.width: r.path for r in all_refs if r.error is None}
        for w in widths if idle is None else ():  # --follow: widths to come build from others
            width_meta.setdefault(w, meta_of(next(r for r in all_refs if r.width == w)))

        def build(width: int) -> nn.Module:
            meta = dict(width_meta.get(width) or width_meta.get(widths[0])
                        or next(iter(width_meta.values())))
            meta["width"] = width
            return build_model_for(meta, self.model, trust_code=self.trust_code,
                                   source=width_src.get(width, run_dir)).to(dev).eval()

        initial = {r.width: r for r in all_refs if r.epoch == 0 and r.error is None}
        final: dict[int, CheckpointRef] = {}  # the width's last checkpoint (--follow: grows)
        for r in all_refs:
            if r.width not in final or r.epoch > final[r.width].epoch:
                final[r.width] = r

        def read(width: int, r: CheckpointRef) -> dict[str, torch.Tensor]:
            """The model's tensors of checkpoint ``r``, module prefix stripped (as workers')."""
            return strip_prefix(open_state(r.path, dev, self.allow_pt),
                                build(width).state_dict(), self.prefix, r.path)

        def initial_state(width: int) -> Mapping[str, torch.Tensor] | None:
            r = initial.get(width)
            return None if r is None else read(width, r)

        def final_state(width: int) -> tuple[int, Mapping[str, torch.Tensor]] | None:
            r = final.get(width)
            if r is None:
                return None
            if r.error:
                raise CheckpointError(r.error.split(": ", 1)[-1], r.path)
            return r.epoch, read(width, r)

        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            bs = auto_batch_size(build(widths[-1]), data.x_train, dev)
        else:
            bs = int(self.batch_size)
            if bs < 1:
                raise UsageError(f"--batch-size: must be a positive integer or auto (got {bs})")
        fbs: int | None = None
        if isinstance(self.forward_batch_size, str) and self.forward_batch_size == "auto":
            fbs = auto_forward_batch_size(build(widths[-1]), data.x_train, dev, bs)
        elif self.forward_batch_size is not None:
            fbs = int(self.forward_batch_size)
            if fbs < 1:
                raise UsageError("--forward-batch-size: must be a positive integer, auto or "
                                 f"same (got {fbs})")
        ctx = Context(data=data, device=dev, batch_size=bs, forward_batch_size=fbs,
                      seed=self.seed, run=run or {},
                      widths=tuple(widths), epochs=tuple(grid_epochs),
                      build_model=build, initial_state=initial_state, final_state=final_state)

        self._check_sizes(probes, ctx, len(grid_epochs), len(widths))
        with Cube(output) as cube:
            summary.warnings += cube.notes  # e.g. a damaged cube rebuilt from its journal
            check_run(cube, run_dir, self.overwrite)  # a cube of another run is refused
            summary.warnings += check_checkpoints(cube, refs)  # replaced ones are measured again
            for r in rejected:
                summary.failed.append({"path": r.path, "width": r.width, "epoch": r.epoch,
                                       "error": r.error})
                cube.record_failure(None, None, r.path, str(r.error))
            cube.set_root({"format": "ckpt-analyzer.cube/1", "version": __version__,
                           "source": str(run_dir.resolve()),
                           "time_unit": pattern_time_unit(self.pattern) if self.pattern
                           else str((run or {}).get("time_unit", "epoch")),
                           "run_json": (run_dir / "run.json").read_text() if run else "",
                           "shard": None if self.shard is None  # merge checks the set
                           else f"{self.shard[0]}/{self.shard[1]}"})
            prepared = []
            for p in probes:
                try:
                    inputs = {k: np.asarray(v) for k, v in p.prepare(ctx).items()}
                    outs = p.outputs()
                    cube.begin_probe(p.name, p.version, config_to_dict(p.resolved_config()),
                                     self.seed, outs, inputs, overwrite=self.overwrite)
                    cube.set_root({PLAN_ATTR: add_plan(cube.root().get(PLAN_ATTR), p.name,
                                                       grid_epochs, widths, self.overwrite)})
                except UsageError:
                    raise
                except (Exception, SystemExit) as exc:  # this probe is out; the others go on
                    err = (f"probe '{p.name}' failed to prepare: "
                           f"{exc if isinstance(exc, CkptError) else one_line(exc)}")
                    if self.strict:
                        raise CkptError(err, run_dir) from None
                    summary.failed.append({"path": str(run_dir), "width": None, "epoch": None,
                                           "probe": p.name, "error": err})
                    cube.record_failure(None, None, str(run_dir), err, probe=p.name)
                    if self.progress:
                        self.progress("fail", err)
                    continue
                prepared.append(PreparedProbe(p, outs))
            for r in unplanned:  # skipped like a bad checkpoint: named, recorded, exit 1
                msg = (f"{r.path}: width {r.width} was never planned by the trainer (run.json "
                       f"widths: {', '.join(map(str, run['widths']))})") if run else ""
                summary.failed.append({"path": r.path, "width": r.width, "epoch": r.epoch,
                                       "error": msg})
                cube.record_failure(r.epoch, r.width, r.path, msg)
            if not prepared:
                raise CkptError(f"no probe could be prepared ({summary.failed[-1]['error']})",
                                run_dir)
            if idle is not None:
                self._follow(cube, executor, watcher, idle, run_dir, run or {}, prepared, ctx,
                             meta_of, width_meta, initial, summary,
                             {r.path for r in [*unplanned, *rejected]}, ident or {}, final)
                summary.seconds = time.perf_counter() - t0
                return summary
            done = {p.probe.name: cube.done(p.probe.name) for p in prepared}
            todo: list[Task] = []
            for r in refs:
                missing = tuple(p.probe.name for p in prepared
                                if (r.epoch, r.width) not in done[p.probe.name])
                if missing:
                    todo.append(Task(len(todo), r, missing))
                else:
                    summary.skipped_done += 1
            if isinstance(executor, LocalExecutor):
                executor.worker = Worker.in_process(ctx, prepared, build, self.allow_pt,
                                                      self.prefix, self.strict)
                plan = None
            else:
                plan = self._plan(run_dir, run, prepared, ctx, width_meta,
                                  {w: r.path for w, r in initial.items()},
                                  {w: (r.epoch, r.path) for w, r in final.items()})
            self._stream(cube, executor.run(plan, todo), summary, grid_epochs, widths, len(todo))
            summary.workers = getattr(executor, "used", 1)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _metadata_factory(self, run: Mapping[str, Any] | None,
                          data: RunData) -> Callable[[CheckpointRef], dict[str, Any]]:
        in_channels = int(data.x_train.shape[1])

        def meta_of(ref: CheckpointRef) -> dict[str, Any]:
            """The checkpoint's metadata; an ``arch`` it names as code is refused here, before
            anything is built (screen_widths builds on the meta device), unless --model or
            --trust-code."""
            meta = dict(ref.metadata)
            if "arch" not in meta or run is None:
                meta.update(arch=self.model, width=ref.width, epoch=ref.epoch,
                            num_classes=data.num_classes, in_channels=in_channels)
            elif self.model is None:
                file_arch(meta["arch"], ref.path, self.trust_code)
            return meta

        return meta_of

    def _executor(self, dev: torch.device) -> Any:
        kind = self.executor
        if kind == "local" and self.workers is not None:
            kind = "pool"
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers: must be at least 1 (got {self.workers})")
        if kind == "local":
            return LocalExecutor()  # its worker is set in run(), once the probes are prepared
        devices = list(self.devices or [])
        if devices and dev.type != "cuda":
            raise UsageError(f"--devices: the device is {dev.type}; pass --device cuda (or auto "
                             "on a machine with CUDA)")
        if kind == "pool":
            if dev.type == "cuda" and not devices:
                devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            workers = self.workers or max(1, len(devices))
            from ..executors.pool import PoolExecutor

            return PoolExecutor(workers, devices or [str(dev)], threads=self.worker_threads)
        if kind == "ray":
            from ..executors.ray import RayExecutor

            return RayExecutor(self.workers, self.ray_address, device=dev.type,
                               threads=self.worker_threads)
        raise UsageError(f"--executor: unknown executor '{kind}' (local, pool or ray)")

    @staticmethod
    def _check_sizes(probes: Sequence[Probe[Any]], ctx: Context, epochs: int, widths: int
                     ) -> None:
        """UsageError, before the cube is opened, for a probe whose results would not fit in
        memory (a size parameter set far too high). A probe that fails to prepare is left to
        the cube loop, which records the failure."""
        from ..cube.schema import group_size_problem

        for p in probes:
            try:
                p.prepare(ctx)  # once: the base class keeps what it fixed
                outs = p.outputs()
            except (Exception, SystemExit):
                continue
            problem = group_size_problem(p.name, outs, epochs, widths)
            if problem:
                raise UsageError(problem)

    def _plan(self, run_dir: Path, run: Mapping[str, Any] | None, prepared: list[PreparedProbe],
              ctx: Context, width_meta: Mapping[int, Mapping[str, Any]],
              initial: Mapping[int, str], final: Mapping[int, tuple[int, str]]) -> Plan:
        import pickle

        plugins = tuple(str(Path(p).resolve()) if p.endswith(".py") or Path(p).is_file() else p
                        for p in self.plugins)
        return Plan(run_dir=str(run_dir.resolve()), probes=pickle.dumps(prepared),
                    plugins=plugins, device=str(ctx.device), tf32=self.tf32,
                    batch_size=ctx.batch_size,
                    forward_batch_size=ctx.forward_batch_size,
                    seed=self.seed, run=dict(run or {}), widths=ctx.widths, epochs=ctx.epochs,
                    width_meta={w: dict(m) for w, m in width_meta.items()},
                    initial=dict(initial), final=dict(final), model=self.model,
                    trust_code=self.trust_code, dataset=self.dataset,
                    data_root=self.data_root, allow_pt=self.allow_pt, prefix=self.prefix,
                    strict=self.strict)

    def _stream(self, cube: Any, outcomes: Iterator[list[Outcome]], summary: RunSummary,
                epochs: list[int], widths: list[int], total: int, start: bool = True,
                counted: set[str] | None = None) -> None:
        """The single writer: commit each outcome to the journal as it arrives. ``counted``
        (--follow): paths already counted in ``summary.computed`` (a checkpoint measured in two
        rounds, for probes that waited for its width to finish, counts once)."""
        last_flush = time.monotonic()
        old_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise _Terminated()

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            old_term = None

        if self.progress and start:
            self.progress("start", total)
        try:
            for batch in outcomes:
                # group commit: every ready checkpoint's cells in one transaction (one fsync)
                cube.record_many([(name, o.task.ref.epoch, o.task.ref.width, res)
                                  for o in batch if o.error is None
                                  for name, res in (o.results or {}).items()])
                for out in batch:
                    ref = out.task.ref
                    if out.cpu_seconds:
                        w = summary.worker_cpu_seconds
                        w[out.worker] = w.get(out.worker, 0.0) + out.cpu_seconds
                    for name, sec in out.probe_seconds.items():
                        summary.probe_seconds[name] = summary.probe_seconds.get(name, 0.0) + sec
                    if self.progress and out.probe_seconds:
                        self.progress("seconds", out.probe_seconds)
                    for msg in out.warnings:  # once, however many workers warned
                        if msg not in summary.warnings:
                            summary.warnings.append(msg)
                            if self.progress:
                                self.progress("warn", msg)
                    if out.error is not None:
                        summary.failed.append({"path": ref.path, "width": ref.width,
                                               "epoch": ref.epoch, "error": out.error})
                        cube.record_failure(ref.epoch, ref.width, ref.path, out.error)
                        if self.strict:
                            prefix = f"{ref.path}: "
                            raise CheckpointError(out.error.removeprefix(prefix), ref.path)
                        if self.progress:
                            self.progress("fail", out.error)
                        continue
                    for name, err in out.probe_failures.items():
                        summary.failed.append({"path": ref.path, "width": ref.width,
                                               "epoch": ref.epoch, "probe": name, "error": err})
                        cube.record_failure(ref.epoch, ref.width, ref.path, err, probe=name)
                        if self.progress:
                            self.progress("fail", err)
                    if counted is None or ref.path not in counted:
                        summary.computed += 1
                    if counted is not None:
                        counted.add(ref.path)
                    if self.progress:
                        self.progress("advance", ref)
                if time.monotonic() - last_flush > MATERIALIZE_EVERY_S:
                    cube.materialize(epochs, widths)
                    last_flush = time.monotonic()
        except _Terminated:
            raise CkptError("terminated: finished checkpoints are kept; re-run to resume",
                            summary.cube) from None
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()  # stops the workers
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            in_flight = sys.exc_info()[1]
            try:
                cube.materialize(epochs, widths)  # the journal holds every finished cell
            except CkptError:
                if in_flight is None:  # else the first cause (e.g. a full journal) is the line
                    raise


def run_analysis(**kwargs: Any) -> RunSummary:
    return Runner(**kwargs).run()

