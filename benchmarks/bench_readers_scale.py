"""The readers on a big cube: seconds and peak memory of merge, inspect, report, plot and open_cube.

Two shards of a synthetic sweep (64 widths split 32/32, ``--epochs`` epochs each) are written
straight through :class:`ckpt_analyzer.cube.Cube`: the ``metrics`` probe (error and loss on
train/test/noisy), ``spectrum`` (R on train/test, k = 0..9) and a ``landscape`` whose cell is a
51 x 51 loss surface on 2 subsets plus the barrier (float64 with noise, so gzip keeps ~all of
its 41.6 kB). At the default 1,563 epochs that is 100,032 checkpoints and a cube of about
4 GB. Then each reader runs as the CLI in its own process (its peak RSS is its own, read by
``/usr/bin/time``):

    merge a.h5 b.h5 -o all.h5 | inspect all.h5 | report all.h5 |
    plot all.h5 --kind landscape|spectrum|double_descent | open_cube(all.h5, "landscape") one width

    python benchmarks/bench_readers_scale.py               # 100,032 cells (~15 min, ~20 GB disk)
    python benchmarks/bench_readers_scale.py --epochs 64   # 4,096 cells, a minute
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = [int(w) for w in range(1, 65)]
GRID = 51
K = 10


def build(path: Path, widths: list[int], epochs: int, seed: int) -> float:
    """One shard: every epoch of ``widths``; its seconds."""
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.schema import Metric, Outputs

    rng = np.random.default_rng(seed)
    alpha = np.linspace(-1, 1, GRID)
    bowl = (alpha[:, None] ** 2 + alpha[None, :] ** 2)[None] * np.array([1.0, 1.5])[:, None, None]
    probes = {
        "metrics": Outputs(coords={"subset": ["train", "test", "noisy"]},
                           metrics={"error": Metric(("subset",)), "loss": Metric(("subset",))}),
        "spectrum": Outputs(coords={"subset": ["train", "test"], "k": list(range(K))},
                            metrics={"R": Metric(("subset", "k"))}),
        "landscape": Outputs(coords={"subset": ["train", "test"], "alpha": alpha.tolist(),
                                     "beta": alpha.tolist()},
                             metrics={"loss": Metric(("subset", "alpha", "beta")),
                                      "barrier": Metric(("subset",))}),
    }
    t0 = time.perf_counter()
    with Cube(path, fsync=False) as cube:
        cube.set_root({"source": "synthetic:readers", "time_unit": "epoch"})
        for name, outs in probes.items():
            cube.begin_probe(name, "1", {}, 0, outs, {})
        batch: list[tuple[str, int, int, dict[str, np.ndarray]]] = []
        for e in range(epochs):
            t = 1 + 1 / (1 + e)
            for w in widths:
                err = np.clip(np.array([0.5 / t / w, 0.2 + 0.1 * np.sin(e / 50 + w), 0.9 / t])
                              + 0.01 * rng.standard_normal(3), 0, 1)
                batch += [
                    ("metrics", e, w, {"error": err, "loss": 2 * err}),
                    ("spectrum", e, w, {"R": np.abs(rng.standard_normal((2, K))) + 1 / t}),
                    ("landscape", e, w, {"loss": bowl * t + 0.1 * rng.random(bowl.shape),
                                         "barrier": np.array([0.1, 0.2]) * t}),
                ]
                if len(batch) >= 3 * 64:
                    cube.record_many(batch)
                    batch = []
        cube.record_many(batch)
        cube.materialize(range(epochs), widths)
    return time.perf_counter() - t0


def timed(cmd: list[str], folder: Path) -> dict[str, float]:
    out = folder / "time.txt"
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(out), *cmd],
                          capture_output=True, text=True, cwd=folder)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[2:])}: exit {done.returncode}: {done.stderr.strip()}")
    wall, kib = out.read_text().split()[-2:]
    return {"s": float(wall), "peak_mib": int(kib) / 1024}


OPEN_ONE_WIDTH = """
import sys
from ckpt_analyzer import open_cube
ds = open_cube(sys.argv[1], "landscape")
print(float(ds["loss"].sel(width=32).mean()))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=1563, help="epochs per width (1,563: 100k cells)")
    ap.add_argument("--dir", default=".", help="where the cubes go (needs ~5x the cube's size)")
    a = ap.parse_args()
    cli = [sys.executable, "-m", "ckpt_analyzer.cli"]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        folder = Path(d).resolve()
        for name, part, seed in (("a.h5", WIDTHS[:32], 0), ("b.h5", WIDTHS[32:], 1)):
            s = build(folder / name, part, a.epochs, seed)
            print(f"built {name}: {len(part) * a.epochs:,} checkpoints in {s:.0f} s, "
                  f"{(folder / name).stat().st_size / 2**30:.2f} GiB", flush=True)
        steps = {
            "merge": [*cli, "merge", "a.h5", "b.h5", "-o", "all.h5"],
            "inspect": [*cli, "inspect", "all.h5"],
            "report": [*cli, "report", "all.h5", "--json"],
            "plot landscape": [*cli, "plot", "all.h5", "--kind", "landscape", "-o", "l.png"],
            "plot spectrum": [*cli, "plot", "all.h5", "--kind", "spectrum", "-o", "s.png"],
            "plot double-descent": [*cli, "plot", "all.h5", "--kind", "double-descent", "-o",
                                    "d.png"],
            "open_cube, one width": [sys.executable, "-c", OPEN_ONE_WIDTH, "all.h5"],
        }
        for step, cmd in steps.items():
            rows[step] = timed(cmd, folder)
            print(f"{step:>22}: {rows[step]['s']:7.1f} s, peak RSS {rows[step]['peak_mib']:6.0f} MiB",
                  flush=True)
        size = (folder / "all.h5").stat().st_size
    print(json.dumps({"cells": len(WIDTHS) * a.epochs, "cube_gib": size / 2**30, **rows}))


if __name__ == "__main__":
    main()
