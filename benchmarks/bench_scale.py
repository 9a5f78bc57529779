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
3. Writer: ``runner.writer.Writer`` fed outcomes that are ready at once (no probe work),
   committed with the default durable journal (fsync per transaction), in groups of 1, 8 and
   32 checkpoints (``max_cells``; the run's own group commit adds a 0.2 s bound).
4. Scheduling overhead: a probe that returns at once over the 33 checkpoints; the mean time per
   checkpoint from the first result to the last, per executor (x workers for the pool/Ray: the
   time one worker spends per checkpoint outside the probe).
5. ``--threads-vs-workers`` (issue 22): when do worker processes pay off? The same analyzer job
   in this process with one torch thread, in this process with all cores' threads (what
   ``ckpt-analyze run`` does by default), with ``--workers N`` (N = cores, one thread each) and
   with ``--workers auto``; wall seconds and the ratios, one run each in turn.
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


def width_cpu(out: Path, widths: tuple[int, ...], epochs: int, save: str) -> dict[int, float]:
    from ckpt_analyzer.train.loop import TrainConfig, Trainer

    cfg = TrainConfig(widths=widths, epochs=epochs, label_noise=0.2, lr=1e-3, seed=0, save=save)
    tr = Trainer(cfg, out, torch.device("cpu"))
    tr.prepare()
    cpu = {}
    for w in widths:
        c0 = time.process_time()
        tr.train_width(w)
        cpu[w] = time.process_time() - c0
    return cpu


def analyze(run: Path, out: Path, probes: list[str], settings: dict[str, Any],
            **kw: Any) -> tuple[float, Any, list[float]]:
    from ckpt_analyzer.runner import Runner

    stamps: list[float] = []

    def progress(kind: str, arg: Any) -> None:
        if kind == "advance":
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    s = Runner(run_dir=str(run), probes=probes, output=str(out), settings=settings,
                 worker_threads=1, progress=progress, **kw).run()
    return time.perf_counter() - t0, s, stamps


def writer_rate(tmp: Path, n: int, batch: int) -> float:
    from ckpt_analyzer.checkpoints import CheckpointRef
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.executors.work import Outcome, Task
    from ckpt_analyzer.runner import RunSummary
    from ckpt_analyzer.runner.writer import Writer
    from ckpt_analyzer.schema import Metric, Outputs

    path = tmp / f"writer-{batch}.h5"
    widths = list(range(1, 11))
    with Cube(path) as cube:
        cube.begin_probe("p", "1", {}, 0, Outputs(coords={"k": list(range(64))},
                                                   metrics={"a": Metric(dims=("k",)),
                                                            "b": Metric(dims=())}), {})

        def outcomes() -> Any:
            for i in range(n):
                ref = CheckpointRef(width=widths[i % 10], epoch=i // 10, path=f"x{i}")
                yield [Outcome(Task(i, ref, ("p",)),
                               results={"p": {"a": np.full(64, i, float), "b": np.array(1.0)}})]

        t0 = time.perf_counter()
        writer = Writer(cube, RunSummary(cube=str(path)), None, delay=1e9, max_cells=batch)
        writer.consume(outcomes(), list(range(n // 10 + 1)), widths)
        return n / (time.perf_counter() - t0)


def threads_vs_workers(run: Path, tmp: Path) -> None:
    """Section 5: one thread, all threads, N processes, auto (wall s, one run each)."""
    from ckpt_analyzer.executors.base import available_cores
    from ckpt_analyzer.runner import Runner

    cores = available_cores()
    rows: dict[str, float] = {}
    for label, threads, kw in [("1 thread", 1, {}), (f"{cores} threads", cores, {}),
                               (f"--workers {cores}", 1, {"workers": cores}),
                               ("--workers auto", cores, {"workers": "auto"})]:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        s = Runner(run_dir=str(run), probes=PROBES, output=str(tmp / f"tvw-{len(rows)}.h5"),
                   settings=SETTINGS, **kw).run()
        rows[label] = time.perf_counter() - t0
        print(f"  {label:16s} wall {rows[label]:6.1f} s ({s.computed} checkpoints, "
              f"{s.executor} x{s.workers})")
    one, many = rows["1 thread"], rows[f"{cores} threads"]
    w = rows[f"--workers {cores}"]
    print(f"  --workers {cores} over 1 thread: {one / w:.2f}x; over {cores} threads: "
          f"{many / w:.2f}x; --workers auto over {cores} threads: "
          f"{many / rows['--workers auto']:.2f}x")
    torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="analyzer run (default: train one)")
    ap.add_argument("--skip-train", action="store_true", help="skip the trainer comparison")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--threads-vs-workers", action="store_true",
                    help="only section 5: this process's threads against worker processes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if args.threads_vs_workers:
            run = Path(args.run) if args.run else tmp / "run"
            if not args.run:
                print(f"training the analyzer's run: {train(run, (4, 8, 16), 10):.1f} s")
            print("\n5. threads against workers, spectrum + sharpness (wall s)")
            threads_vs_workers(run, tmp)
            return
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
        crit: dict[str, float] = {}
        print("\n1. analyzer, spectrum + sharpness (wall s; best of 2 rounds run in turn)")
        modes: list[tuple[str, dict[str, Any]]] = [
            ("local", {}), ("pool x2", {"executor": "pool", "workers": 2})]
        if ray is not None:
            t0 = time.perf_counter()
            ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
            print(f"  (ray.init(num_cpus=2): {time.perf_counter() - t0:.1f} s, not counted)")
            modes.append(("ray x2", {"executor": "ray", "workers": 2}))
        for rnd in range(2):
            for label, kw in [*modes, *([("pool x1", {"executor": "pool", "workers": 1})]
                                        if rnd == 0 else [])]:
                c0 = time.process_time()
                dt, s, _ = analyze(run, tmp / f"{label}-{rnd}.h5", PROBES, SETTINGS, **kw)
                cpu = max(s.worker_cpu_seconds.values(), default=time.process_time() - c0)
                rows[label] = min(rows.get(label, float("inf")), dt)
                crit[label] = min(crit.get(label, float("inf")), cpu)
                print(f"  round {rnd + 1} {label:8s} wall {dt:6.1f} s, {s.computed} checkpoints, "
                      f"busiest worker CPU {cpu:5.1f} s, per worker "
                      f"{ {k: round(v, 1) for k, v in s.worker_cpu_seconds.items()} }")
        print(f"  best wall: {rows}")
        print(f"  speed-up pool x2 over pool x1: {rows['pool x1'] / rows['pool x2']:.2f}, "
              f"over local: {rows['local'] / rows['pool x2']:.2f}; CPU of the busiest worker: "
              f"local {crit['local']:.1f} s, pool x2 {crit['pool x2']:.1f} s "
              f"(ratio {crit['local'] / crit['pool x2']:.2f})")
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
            widths = (6, 8, 10, 12)
            best1 = best2 = float("inf")
            for rnd in range(2):
                t1 = train(tmp / f"t1-{rnd}", widths, 40, "log:10")
                t2 = train(tmp / f"t2-{rnd}", widths, 40, "log:10", workers=2)
                best1, best2 = min(best1, t1), min(best2, t2)
                print(f"  round {rnd + 1}: serial {t1:.1f} s, --workers 2 {t2:.1f} s")
            print(f"  best: serial {best1:.1f} s, --workers 2 {best2:.1f} s: "
                  f"speed-up {best1 / best2:.2f}")
            cpu = width_cpu(tmp / "t3", widths, 40, "log:10")
            loads = [0.0, 0.0]
            for w in sorted(widths, reverse=True):  # the pool's order: widest first
                loads[loads.index(min(loads))] += cpu[w]
            print(f"  CPU s per width (serial, 1 thread): "
                  f"{ {w: round(c, 1) for w, c in cpu.items()} }; on 2 idle cores the two "
                  f"workers carry {loads[0]:.1f} / {loads[1]:.1f} s: bound "
                  f"{sum(cpu.values()) / max(loads):.2f} before the workers' start-up")
        if ray is not None:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
