"""The analyzer end to end: checkpoints per second, loading vs computing, and each probe's cost.

Run from the repo root::

    python benchmarks/bench_runner.py [--run RUN_DIR] [--threads 1] [--skip-run | --skip-probes]
        [--probes metrics,spectrum,interpolation,sharpness,normalization]

Without ``--run`` it first trains a small digits run into a temporary folder with
``ckpt-train TMP --widths 4,16 --epochs 10 --lr 1e-3 --label-noise 0.2 --quiet`` (22
checkpoints: widths 4 and 16, epochs 0-10), removed at the end.

Part 1: ``ckpt_analyzer.runner.Runner`` (what ``ckpt-analyze run RUN --probe metrics --probe
spectrum`` runs; CPU, batch size auto = 512) on every checkpoint into a temporary cube:
checkpoints per second, the time spent inside ``measure`` (the probes' computation, timed by
wrapping ``executors.measure.measure``), and, measured separately, ``read_state_dict`` of every checkpoint.
The runner reads the next checkpoint in a background thread while the probes run (prefetch),
so the wall time should be close to set-up + computation, not + loading.

Part 2: each probe alone with its default config on width 16, last epoch: the per-checkpoint
time (``measure``) and the whole ``Runner.run`` (data, ``prepare``, cube) around it.

Times are wall-clock and CPU time of this process (CPU time includes the prefetch thread).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import ckpt_analyzer.executors.measure as measure_mod
import ckpt_analyzer.runner as runner
from ckpt_analyzer.checkpoints import CheckpointRef, discover, read_state_dict

TRAIN_ARGS = ("--widths", "4,16", "--epochs", "10", "--lr", "1e-3", "--label-noise", "0.2",
              "--quiet")
ALL_PROBES = ("metrics", "spectrum", "interpolation", "sharpness", "normalization")


class MeasureTimer:
    """Wraps ``executors.measure.measure`` (looked up by name in the worker) and records its times."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._orig: Callable[..., Any] = measure_mod.measure

    def __enter__(self) -> MeasureTimer:
        orig = self._orig

        def timed(*args: Any, **kwargs: Any) -> Any:
            c, w = time.process_time(), time.perf_counter()
            out = orig(*args, **kwargs)
            self.cpu.append(time.process_time() - c)
            self.wall.append(time.perf_counter() - w)
            return out

        measure_mod.measure = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        measure_mod.measure = self._orig  # type: ignore[assignment]


def run_analysis(run_dir: Path, probes: Sequence[str], out: Path, widths: Sequence[int] | None = None,
                 epochs: Sequence[int] | None = None) -> tuple[runner.RunSummary, float, float,
                                                                 MeasureTimer]:
    """One ``Runner.run`` into a fresh cube: (summary, wall s, CPU s, measure times)."""
    if out.exists():
        out.unlink()
    analysis = runner.Runner(run_dir=str(run_dir), probes=list(probes), output=str(out),
                               device="cpu", widths=widths, epochs=epochs, overwrite=True)
    with MeasureTimer() as timer:
        c, w = time.process_time(), time.perf_counter()
        summary = analysis.run()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    return summary, wall, cpu, timer


def train_run(out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t = time.perf_counter()
    subprocess.run(["ckpt-train", str(out), *TRAIN_ARGS], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def part1(run_dir: Path, refs: Sequence[CheckpointRef], widths: Sequence[int], tmp: Path) -> None:
    """metrics + spectrum over the whole run; loading timed separately."""
    summary, wall, cpu, timer = run_analysis(run_dir, ["metrics", "spectrum"], tmp / "a.h5")
    n = summary.computed
    c_wall, c_cpu = sum(timer.wall), sum(timer.cpu)
    load_wall, load_cpu, nbytes = [], [], 0
    for r in refs:
        c, w = time.process_time(), time.perf_counter()
        state = read_state_dict(r.path)
        load_wall.append(time.perf_counter() - w)
        load_cpu.append(time.process_time() - c)
        nbytes += sum(t.numel() * t.element_size() for t in state.values())
    l_wall, l_cpu = sum(load_wall), sum(load_cpu)
    print("\nAnalysis.run --probe metrics --probe spectrum (defaults), every checkpoint")
    print(f"{'':34} {'wall s':>8} {'CPU s':>8}")
    print(f"{'whole run (' + str(n) + ' checkpoints)':34} {wall:8.2f} {cpu:8.2f}")
    print(f"{'  computing (sum of measure)':34} {c_wall:8.2f} {c_cpu:8.2f}")
    for name, secs in getattr(summary, "probe_seconds", {}).items():  # runner's own split
        print(f"{'    ' + name + ' (runner timing)':34} {secs:8.2f}")
    print(f"{'  rest (set-up, cube, waits)':34} {wall - c_wall:8.2f} {cpu - c_cpu:8.2f}")
    print(f"{'loading alone (read_state_dict)':34} {l_wall:8.3f} {l_cpu:8.3f}   "
          f"({nbytes / len(refs) / 1e3:.0f} kB/checkpoint, "
          f"{1e3 * l_wall / len(refs):.2f} ms each)")
    print(f"checkpoints/s: {n / wall:.2f} (wall), {n / cpu:.2f} (CPU); per checkpoint "
          f"{wall / n:.2f} s wall")
    print(f"loading share of load + compute: {100 * l_wall / (l_wall + c_wall):.2f}% (wall); "
          f"run wall - compute = {wall - c_wall:.2f} s vs loading {l_wall:.3f} s")
    for w in widths:
        idx = [i for i, r in enumerate(refs) if r.width == w]
        # measure is called in refs order (sorted by width, epoch), all checkpoints computed
        if len(timer.wall) == len(refs):
            per = sum(timer.wall[i] for i in idx) / len(idx)
            print(f"  width {w:3d}: {per:.3f} s/checkpoint computing (wall)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run folder (default: train one into a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probes", default=",".join(ALL_PROBES), help="probes timed alone (part 2)")
    ap.add_argument("--skip-run", action="store_true", help="only part 2")
    ap.add_argument("--skip-probes", action="store_true", help="only part 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_runner_"))
    try:
        if args.run:
            run_dir = Path(args.run)
        else:
            run_dir = tmp / "run"
            secs = train_run(run_dir)
            print(f"trained ckpt-train RUN {' '.join(TRAIN_ARGS)} in {secs:.1f} s wall")
        refs = discover(run_dir)
        widths = sorted({r.width for r in refs})
        last = max(r.epoch for r in refs)
        print(f"run {run_dir}: {len(refs)} checkpoints, widths {widths}, epochs 0-{last}; "
              f"device cpu, threads {torch.get_num_threads()}")

        # ---- part 1: metrics + spectrum over the whole run
        if not args.skip_run:
            part1(run_dir, refs, widths, tmp)
        # ---- part 2: each probe alone, width 16 (or the widest), last epoch
        if not args.skip_probes:
            w = 16 if 16 in widths else widths[-1]
            print(f"\neach probe alone, defaults, width {w}, epoch {last} (one checkpoint)")
            print(f"{'probe':14} {'measure wall s':>15} {'measure CPU s':>14} "
                  f"{'Runner.run wall s':>20}")
            for p in (s.strip() for s in args.probes.split(",") if s.strip()):
                _, wall_p, _, t = run_analysis(run_dir, [p], tmp / f"{p}.h5", widths=[w],
                                               epochs=[last])
                print(f"{p:14} {sum(t.wall):15.3f} {sum(t.cpu):14.3f} {wall_p:20.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
