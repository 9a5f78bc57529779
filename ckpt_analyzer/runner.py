"""Stream checkpoints -> probes -> cube (DESIGN §4, §6).

The unit of work is one checkpoint: :func:`measure` takes a loaded model and the prepared
probes and returns plain arrays, independent of the cube, so an external engine (Ray, Slurm
arrays) can spread checkpoints over devices while one process writes the cube.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoints import (
    PICKLE_EXTS,
    CheckpointRef,
    build_model_for,
    discover,
    load_state_into,
    pattern_time_unit,
    prefetch,
    read_run_json,
    read_state_dict,
    screen_widths,
    strip_prefix,
)
from .config import config_to_dict
from .cube.identity import check_checkpoints, check_run
from .data.run import RunData, load_run_data
from .errors import CheckpointError, CkptError, UsageError
from .probes import make_probes
from .probes.base import Context, Outputs, Probe
from .util import first_line

MATERIALIZE_EVERY_S = 30.0


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


# ---------------------------------------------------------------- the unit of work
@dataclass(frozen=True)
class PreparedProbe:
    probe: Probe
    outputs: Outputs


def measure(model: nn.Module, ref: CheckpointRef, probes: Sequence[PreparedProbe],
            ctx: Context, timings: dict[str, float] | None = None,
            failures: dict[str, str] | None = None,
            strict: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Every probe on one loaded checkpoint; results checked against the declarations.

    Probes are isolated from each other: one that raises (even ``SystemExit``), returns an
    undeclared metric or a wrong shape, or changes the model's weights or buffers is a failure
    of that probe alone; the model is restored before the next probe, so no probe sees another's
    changes. With ``failures`` (a dict) each failed probe's one-line error is put there and the
    other probes go on; without it, or with ``strict``, the first failure raises
    :class:`CheckpointError`. A checkpoint with NaN/Inf weights raises CheckpointError before
    any probe runs: it is reported, never stored as a measurement.

    ``timings`` (optional) accumulates each probe's compute seconds."""
    cctx = ctx.with_checkpoint(ref)
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(f"has non-finite weights ({bad}); not measured", ref.path)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}
    for p in probes:
        name = p.probe.name
        model.eval()
        t0 = time.perf_counter()
        try:
            checked = p.probe.measure(model, cctx)  # numpy, checked against outputs()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            error = None
        except CkptError as exc:
            error = str(exc) if str(exc).startswith(f"probe '{name}'") else f"probe '{name}': {exc}"
        except (Exception, SystemExit) as exc:
            error = f"probe '{name}' failed: {_one_line(exc)}"
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        changed = _changed(model, snapshot)
        if changed:
            with torch.no_grad():
                model.load_state_dict(snapshot, strict=True)
            if error is None:
                error = (f"probe '{name}' changed the model's '{changed}' (a probe must not "
                         "modify the model); its result is discarded")
        if error is None:
            out[name] = checked
            continue
        if failures is None or strict:
            raise CheckpointError(error, ref.path)
        failures[name] = error
    return out


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return first_line(exc)


def _non_finite(model: nn.Module) -> str:
    """``'<n> NaN/Inf values in <tensor>'`` for the first non-finite floating tensor, or ''."""
    for key, t in model.state_dict().items():
        if t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                return f"{n} NaN/Inf value(s) in '{key}'"
    return ""


def _changed(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> str:
    """The first tensor of the model's state that differs from ``snapshot`` (or '')."""
    state = model.state_dict()
    if set(state) != set(snapshot):
        return sorted(set(state) ^ set(snapshot))[0]
    for key, t in state.items():
        ref = snapshot[key]
        if t.shape != ref.shape or t.dtype != ref.dtype or not torch.equal(t, ref):
            return key
    return ""


@dataclass
class RunSummary:
    cube: str
    checkpoints: int = 0
    computed: int = 0
    skipped_done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    probes: list[str] = field(default_factory=list)
    probe_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Terminated(Exception):
    pass


@dataclass
class Analysis:
    """Everything ``ckpt-analyze run`` needs; :meth:`run` does the work."""

    run_dir: str
    probes: Sequence[str]
    output: str | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    batch_size: str | int = "auto"
    widths: Sequence[int] | None = None
    epochs: Sequence[int] | None = None
    seed: int = 0
    overwrite: bool = False
    strict: bool = False
    model: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    pattern: str | None = None
    allow_pt: bool = False
    prefix: str | None = None
    width: int = 1
    progress: Callable[[str, Any], None] | None = None

    def run(self) -> RunSummary:
        from .cube import Cube
        from .util import resolve_device

        t0 = time.perf_counter()
        probes = make_probes(self.probes, self.settings)
        dev = resolve_device(self.device)
        run_dir = Path(self.run_dir)
        if not run_dir.is_dir():
            raise CkptError("no such run folder", run_dir)
        run = read_run_json(run_dir)
        if run is None and self.model is None:
            raise UsageError(f"{run_dir}: no run.json, so this is a foreign folder: pass "
                             "--model MODULE:FACTORY (and --dataset, --pattern)")
        if self.pattern and not self.allow_pt and self.pattern.endswith(PICKLE_EXTS):
            raise UsageError(f"--pattern '{self.pattern}' names pickle-based files: pass "
                             "--allow-pt (read with torch.load(weights_only=True) only)")
        notes: list[str] = []
        all_refs = discover(run_dir, self.pattern, self.allow_pt, self.width, notes)
        unplanned = _unplanned(all_refs, run)
        all_refs = [r for r in all_refs if r not in unplanned]
        refs = [r for r in all_refs
                if (self.widths is None or r.width in self.widths)
                and (self.epochs is None or r.epoch in self.epochs)]
        if not refs:
            where = "" if len(all_refs) == 0 else f" matching --widths/--epochs (found {len(all_refs)})"
            hint = "" if run is not None or self.pattern else " (foreign folder? pass --pattern)"
            pt = next((n.split(": ", 1)[1] for n in notes if "--allow-pt" in n), "")
            raise CkptError(f"no checkpoints{where}{hint}{'; ' + pt if pt else ''}", run_dir)
        data = load_run_data(run_dir, dev, self.dataset, self.data_root)
        meta_of = self._metadata_factory(run, data)
        output = Path(self.output) if self.output else run_dir / "analysis.h5"
        refs, rejected = screen_widths(refs, meta_of, self.model)
        summary = RunSummary(cube=str(output), probes=[p.name for p in probes],
                             checkpoints=len(refs) + len(rejected), warnings=notes)
        if not refs:
            raise CkptError(rejected[0].error or "no checkpoints", rejected[0].path)
        all_refs = [r for r in all_refs if r not in rejected]

        widths = sorted({r.width for r in refs})
        width_meta = {r.width: meta_of(r) for r in all_refs if r.error is None}
        for w in widths:
            width_meta.setdefault(w, meta_of(next(r for r in refs if r.width == w)))

        def build(width: int) -> nn.Module:
            meta = dict(width_meta.get(width) or width_meta[widths[0]])
            meta["width"] = width
            return build_model_for(meta, self.model).to(dev).eval()

        initial = {r.width: r for r in all_refs if r.epoch == 0 and r.error is None}

        def initial_state(width: int) -> Mapping[str, torch.Tensor] | None:
            r = initial.get(width)
            if r is None:
                return None
            return strip_prefix(read_state_dict(r.path, dev, self.allow_pt),
                                build(width).state_dict(), self.prefix, r.path)

        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            bs = auto_batch_size(build(widths[-1]), data.x_train, dev)
        else:
            bs = int(self.batch_size)
            if bs < 1:
                raise UsageError(f"--batch-size: must be a positive integer or auto (got {bs})")
        ctx = Context(data=data, device=dev, batch_size=bs, seed=self.seed, run=run or {},
                      widths=tuple(widths), epochs=tuple(sorted({r.epoch for r in refs})),
                      build_model=build, initial_state=initial_state)

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
                           "run_json": (run_dir / "run.json").read_text() if run else ""})
            prepared = []
            for p in probes:
                try:
                    inputs = {k: np.asarray(v) for k, v in p.prepare(ctx).items()}
                    outs = p.outputs()
                    cube.begin_probe(p.name, p.version, config_to_dict(p.resolved_config()),
                                     self.seed, outs, inputs, overwrite=self.overwrite)
                except UsageError:
                    raise
                except (Exception, SystemExit) as exc:  # this probe is out; the others go on
                    err = (f"probe '{p.name}' failed to prepare: "
                           f"{exc if isinstance(exc, CkptError) else _one_line(exc)}")
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
            done = {p.probe.name: cube.done(p.probe.name) for p in prepared}
            todo = []
            for r in refs:
                missing = [p for p in prepared if (r.epoch, r.width) not in done[p.probe.name]]
                if missing:
                    todo.append((r, missing))
                else:
                    summary.skipped_done += 1
            all_epochs = sorted({r.epoch for r in refs})
            self._stream(cube, todo, ctx, build, summary, all_epochs, widths)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _metadata_factory(self, run: Mapping[str, Any] | None,
                          data: RunData) -> Callable[[CheckpointRef], dict[str, Any]]:
        in_channels = int(data.x_train.shape[1])

        def meta_of(ref: CheckpointRef) -> dict[str, Any]:
            meta = dict(ref.metadata)
            if "arch" not in meta or run is None:
                meta.update(arch=self.model, width=ref.width, epoch=ref.epoch,
                            num_classes=data.num_classes, in_channels=in_channels)
            return meta

        return meta_of

    def _stream(self, cube: Any, todo: list[tuple[CheckpointRef, list[PreparedProbe]]],
                ctx: Context, build: Callable[[int], nn.Module], summary: RunSummary,
                epochs: list[int], widths: list[int]) -> None:
        dev = ctx.device
        models: dict[int, nn.Module] = {}
        last_flush = time.monotonic()
        old_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise _Terminated()

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            old_term = None

        def load(item: tuple[CheckpointRef, list[PreparedProbe]]) -> dict[str, torch.Tensor]:
            ref = item[0]
            if ref.error:
                raise CheckpointError(ref.error.split(": ", 1)[-1], ref.path)
            return read_state_dict(ref.path, "cpu", self.allow_pt)

        if self.progress:
            self.progress("start", len(todo))
        try:
            for (ref, plist), state in prefetch(todo, load):
                try:
                    if isinstance(state, BaseException):
                        raise state
                    if ref.width not in models:
                        models.clear()  # one width's model alive at a time
                        models[ref.width] = build(ref.width)
                    model = models[ref.width]
                    load_state_into(model, state, ref.path, self.prefix)
                    model.to(dev)
                    probe_failures: dict[str, str] = {}
                    results = measure(model, ref, plist, ctx, summary.probe_seconds,
                                      probe_failures, self.strict)
                except CheckpointError as exc:
                    summary.failed.append({"path": ref.path, "width": ref.width,
                                           "epoch": ref.epoch, "error": str(exc)})
                    cube.record_failure(ref.epoch, ref.width, ref.path, str(exc))
                    if self.strict:
                        raise
                    if self.progress:
                        self.progress("fail", str(exc))
                    continue
                for name, res in results.items():
                    cube.record(name, ref.epoch, ref.width, res)
                for name, err in probe_failures.items():
                    summary.failed.append({"path": ref.path, "width": ref.width,
                                           "epoch": ref.epoch, "probe": name, "error": err})
                    cube.record_failure(ref.epoch, ref.width, ref.path, err, probe=name)
                    if self.progress:
                        self.progress("fail", err)
                summary.computed += 1
                if self.progress:
                    self.progress("advance", ref)
                if time.monotonic() - last_flush > MATERIALIZE_EVERY_S:
                    cube.materialize(epochs, widths)
                    last_flush = time.monotonic()
        except _Terminated:
            raise CkptError("terminated: finished checkpoints are kept; re-run to resume",
                            summary.cube) from None
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            in_flight = sys.exc_info()[1]
            try:
                cube.materialize(epochs, widths)  # the journal holds every finished cell
            except CkptError:
                if in_flight is None:  # else the first cause (e.g. a full journal) is the line
                    raise


def _unplanned(refs: Sequence[CheckpointRef], run: Mapping[str, Any] | None) -> list[CheckpointRef]:
    """Checkpoints of widths that run.json does not plan (none when it plans no widths)."""
    planned = (run or {}).get("widths")
    if not isinstance(planned, list):
        return []
    return [r for r in refs if r.width not in planned]


def run_analysis(**kwargs: Any) -> RunSummary:
    return Analysis(**kwargs).run()

