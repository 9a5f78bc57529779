"""The cube writer at scale: seconds per checkpoint and peak memory at N checkpoints.

A synthetic run written straight through :class:`ckpt_analyzer.cube.Cube` (no model: the probe
is a stand-in with a large result per cell, a 51 x 51 loss landscape on 2 subsets, float64 =
41.6 kB per checkpoint), committed in groups of 16 (one fsync each) and materialized every
``--every`` seconds as the runner does (every 30 s there) and at the end. Each N runs in a fresh
process, so its peak RSS is its own. Then the readers on the result: ``inspect``
(read_summary), ``open_cube`` (lazy) reading one width, and the journal's rebuild.

    python benchmarks/bench_cube_scale.py            # N = 256, 2048, 16384
    python benchmarks/bench_cube_scale.py --quick    # N = 256, 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = 16
GRID = 51


def child(n: int, folder: Path, every: float) -> dict[str, float]:
    from ckpt_analyzer.cube import Cube, open_cube, read_summary
    from ckpt_analyzer.schema import Metric, Outputs

    path = folder / "cube.h5"
    outs = Outputs(coords={"subset": ["train", "test"], "x": list(range(GRID)),
                           "y": list(range(GRID))},
                   metrics={"loss": Metric(("subset", "x", "y"))})
    xs = np.linspace(-1, 1, GRID)
    bowl = (xs[:, None] ** 2 + xs[None, :] ** 2)[None] * np.array([1.0, 1.5])[:, None, None]
    epochs = list(range(n // WIDTHS))
    widths = [2 ** k for k in range(WIDTHS)]
    t0 = time.perf_counter()
    spent, count = 0.0, 0
    with Cube(path) as cube:
        cube.set_root({"source": "synthetic"})
        cube.begin_probe("landscape", "1", {}, 0, outs, {})
        last = time.monotonic()
        batch = []
        for e in epochs:  # a sweep: every width's epoch e, then e + 1 ...
            for w in widths:
                batch.append(("landscape", e, w, {"loss": bowl * (1 + 1 / (1 + e)) + w * 1e-3}))
                if len(batch) == 16:
                    cube.record_many(batch)
                    batch = []
            if time.monotonic() - last > every:
                s = time.perf_counter()
                cube.materialize(epochs, widths)
                spent += time.perf_counter() - s
                count += 1
                last = time.monotonic()
        cube.record_many(batch)
        s = time.perf_counter()
        cube.materialize(epochs, widths)
        final = time.perf_counter() - s
    total = time.perf_counter() - t0
    rss_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = time.perf_counter()
    summary = read_summary(path)
    t_inspect = time.perf_counter() - s
    assert summary["probes"]["landscape"]["coverage"]["done"] == len(epochs) * WIDTHS
    s = time.perf_counter()
    with open_cube(path, "landscape", lazy=True) as ds:
        m = float(ds["loss"].isel(width=3).mean())
    t_open = time.perf_counter() - s
    assert np.isfinite(m)
    journal = Path(f"{path}.journal")
    s = time.perf_counter()
    journal.unlink()
    with Cube(path):  # the journal rebuilt from the cube, in blocks
        pass
    t_rebuild = time.perf_counter() - s
    return {"n": len(epochs) * WIDTHS, "seconds": total, "s_per_ckpt": total / (len(epochs) * WIDTHS),
            "materializations": count + 1, "materialize_s": spent + final, "final_s": final,
            "peak_rss_mib_write": rss_write,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cube_mib": path.stat().st_size / 2**20, "inspect_s": t_inspect,
            "open_cube_one_width_s": t_open, "rebuild_journal_s": t_rebuild}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=None)
    ap.add_argument("--quick", action="store_true", help="N = 256, 2048 only")
    ap.add_argument("--every", type=float, default=10.0, help="materialize every S seconds")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.dir), a.every)))
        return
    sizes = a.n or ([256, 2048] if a.quick else [256, 2048, 16384])
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=".") as d:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--dir", d,
                                  "--every", str(a.every)], capture_output=True, text=True,
                                 check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"N={r['n']:>6}: {r['s_per_ckpt'] * 1e3:6.2f} ms/ckpt ({r['seconds']:.1f} s; "
              f"{r['materializations']} materializations {r['materialize_s']:.2f} s, the last "
              f"{r['final_s']:.2f} s), peak RSS {r['peak_rss_mib_write']:.0f} MiB writing, "
              f"{r['peak_rss_mib']:.0f} MiB reading; cube {r['cube_mib']:.0f} MiB; inspect "
              f"{r['inspect_s']:.2f} s, open_cube+one width {r['open_cube_one_width_s']:.2f} s, "
              f"journal rebuild {r['rebuild_journal_s']:.1f} s", flush=True)
    if len(rows) > 1:
        print(f"ratio s/ckpt N={rows[-1]['n']} / N={rows[0]['n']}: "
              f"{rows[-1]['s_per_ckpt'] / rows[0]['s_per_ckpt']:.2f}")


if __name__ == "__main__":
    main()
