"""Scaling out: the pool and Ray executors against one process, the trainer's widths in
parallel, the writer's sustained rate and the per-checkpoint scheduling overhead.

Run from the repo root (Ray parts are skipped without the ``[ray]`` extra)::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py [--run RUN_DIR] [--skip-train] [--no-ray]

Every computation runs with ONE torch thread (the serial run sets it, each worker gets
``worker_threads=1``), so ``--workers 2`` on 2 cores can at best halve the wall time. Wall-clock
times, one run each in the same process (the parent's torch import is paid once, before).

1. Analyzer: ``spectrum`` (points=100) + ``sharpness`` (samples=128, paths=2) over a digits sweep
   (``ckpt-train --widths 4,8,16 --epochs 10``: 33 checkpoints), ``local`` (1 process) vs
   ``--workers 1`` vs ``--workers 2`` vs ``--executor ray --workers 2`` (on a local cluster
   started before, its start-up time reported apart).
2. Trainer: ``--widths 6,8,10,12 --epochs 40 --save log:10``, serial vs ``--workers 2``.
3. Writer: ``Analysis._stream`` fed outcomes that are ready at once (no probe work), committed
   with the default durable journal (fsync per transaction), in batches of 1, 8 and 32 ready
   checkpoints (the group commit: a batch is what arrived while the last commit synced).
4. Scheduling overhead: a probe that returns at once over the 33 checkpoints; the mean time per
   checkpoint from the first result to the last, per executor (x workers for the pool/Ray: the
   time one worker spends per checkpoint outside the probe).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

INSTANT = '''
import numpy as np
from ckpt_analyzer.probes.base import Metric, Outputs, Probe


class Instant(Probe):
    name = "instant"

    def outputs(self):
        return Outputs(coords={}, metrics={"one": Metric(dims=())})

    def __call__(self, model, ctx):
        return {"one": np.array(1.0)}
'''

PROBES = ["spectrum", "sharpness"]
SETTINGS = {"spectrum": {"points": 100}, "sharpness": {"samples": 128, "paths": 2}}


def train(out: Path, widths: tuple[int, ...], epochs: int, save: str = "every",
          workers: int | None = None) -> float:
    from ckpt_analyzer.train.loop import TrainConfig, Trainer
    from ckpt_analyzer.train.parallel import train_widths

    cfg = TrainConfig(widths=widths, epochs=epochs, label_noise=0.2, lr=1e-3, seed=0, save=save)
    t0 = time.perf_counter()
    tr = Trainer(cfg, out, torch.device("cpu"))
    tr.prepare()
    if workers is None:
        tr.run()
    else:
        train_widths(cfg, out, "cpu", workers=workers, threads=1)
    return time.perf_counter() - t0


def analyze(run: Path, out: Path, probes: list[str], settings: dict[str, Any],
            **kw: Any) -> tuple[float, Any, list[float]]:
    from ckpt_analyzer.runner import Analysis

    stamps: list[float] = []

    def progress(kind: str, arg: Any) -> None:
        if kind == "advance":
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    s = Analysis(run_dir=str(run), probes=probes, output=str(out), settings=settings,
                 worker_threads=1, progress=progress, **kw).run()
    return time.perf_counter() - t0, s, stamps


def writer_rate(tmp: Path, n: int, batch: int) -> float:
    from ckpt_analyzer.checkpoints import CheckpointRef
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.executors.work import Outcome, Task
    from ckpt_analyzer.runner import Analysis, RunSummary
    from ckpt_analyzer.schema import Metric, Outputs

    path = tmp / f"writer-{batch}.h5"
    widths = list(range(1, 11))
    with Cube(path) as cube:
        cube.begin_probe("p", "1", {}, 0, Outputs(coords={"k": list(range(64))},
                                                   metrics={"a": Metric(dims=("k",)),
                                                            "b": Metric(dims=())}), {})

        def outcomes() -> Any:
            items = []
            for i in range(n):
                ref = CheckpointRef(width=widths[i % 10], epoch=i // 10, path=f"x{i}")
                items.append(Outcome(Task(i, ref, ("p",)),
                                     results={"p": {"a": np.full(64, i, float),
                                                    "b": np.array(1.0)}}))
                if len(items) == batch:
                    yield items
                    items = []
            if items:
                yield items

        t0 = time.perf_counter()
        Analysis(run_dir=".", probes=["metrics"])._stream(
            cube, outcomes(), RunSummary(cube=str(path)), list(range(n // 10 + 1)), widths, n)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="analyzer run (default: train one)")
    ap.add_argument("--skip-train", action="store_true", help="skip the trainer comparison")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        ray = None
        if not args.no_ray:
            try:
                import ray
            except ImportError:
                print("ray not installed: Ray rows skipped")
        run = Path(args.run) if args.run else tmp / "run"
        if not args.run:
            print(f"training the analyzer's run: {train(run, (4, 8, 16), 10):.1f} s")
        rows: dict[str, float] = {}
        print("\n1. analyzer, spectrum + sharpness (wall s)")
        for label, kw in (("local", {}), ("pool x1", {"executor": "pool", "workers": 1}),
                          ("pool x2", {"executor": "pool", "workers": 2})):
            dt, s, _ = analyze(run, tmp / f"{label}.h5", PROBES, SETTINGS, **kw)
            rows[label] = dt
            print(f"  {label:8s} {dt:7.1f} s  {s.computed} checkpoints  "
                  f"probe s {sum(s.probe_seconds.values()):.1f}")
        if ray is not None:
            t0 = time.perf_counter()
            ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
            print(f"  (ray.init(num_cpus=2): {time.perf_counter() - t0:.1f} s, not counted)")
            dt, s, _ = analyze(run, tmp / "ray.h5", PROBES, SETTINGS, executor="ray", workers=2)
            rows["ray x2"] = dt
            print(f"  ray x2   {dt:7.1f} s  {s.computed} checkpoints")
        print(f"  speed-up pool x2 / pool x1: {rows['pool x1'] / rows['pool x2']:.2f}   "
              f"pool x2 / local: {rows['local'] / rows['pool x2']:.2f}")
        if "ray x2" in rows:
            print(f"  ray x2 vs pool x2 (pool time / ray time): "
                  f"{rows['pool x2'] / rows['ray x2']:.2f}")

        print("\n4. scheduling overhead, a probe that returns at once")
        plugin = tmp / "instant_probe.py"
        plugin.write_text(INSTANT)
        from ckpt_analyzer.probes import load_plugin

        load_plugin(str(plugin))
        kinds: list[tuple[str, dict[str, Any], int]] = [
            ("local", {}, 1), ("pool x2", {"executor": "pool", "workers": 2}, 2)]
        if ray is not None:
            kinds.append(("ray x2", {"executor": "ray", "workers": 2}, 2))
        for label, kw, n in kinds:
            dt, s, st = analyze(run, tmp / f"instant-{label}.h5", ["instant"], {},
                                plugins=[str(plugin)], **kw)
            per = (st[-1] - st[0]) / (len(st) - 1) * 1e3
            print(f"  {label:8s} whole run {dt:5.1f} s; {per:6.2f} ms between results, "
                  f"{per * n:6.2f} ms per checkpoint per worker")

        print("\n3. writer, durable journal, cells (checkpoints) per second")
        for b in (1, 8, 32):
            print(f"  batches of {b:2d}: {writer_rate(tmp, 2000, b):8.0f} /s")

        if not args.skip_train:
            print("\n2. trainer, widths 6,8,10,12, 40 epochs, save log:10 (wall s)")
            t1 = train(tmp / "t1", (6, 8, 10, 12), 40, "log:10")
            t2 = train(tmp / "t2", (6, 8, 10, 12), 40, "log:10", workers=2)
            print(f"  serial {t1:.1f} s, --workers 2 {t2:.1f} s: speed-up {t1 / t2:.2f}")
        if ray is not None:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
