"""Reading a cube in a notebook: xarray for labeled arrays, h5py for the raw layout.

    python examples/read_cube.py demo-run/noise0.2-seed0/analysis.h5
"""

import sys

import h5py

import ckpt_analyzer

path = sys.argv[1] if len(sys.argv) > 1 else "demo-run/noise0.2-seed0/analysis.h5"

# labeled: dims (epoch, width, subset, k), coordinates, config in attrs
spec = ckpt_analyzer.open_cube(path, "spectrum")
R = spec["R"].sel(subset="train")
print(R.sel(width=R.width.max()).isel(k=slice(1, None)).sum("k").to_series())

metrics = ckpt_analyzer.open_cube(path, "metrics")
print(metrics["error"].sel(subset="test").isel(epoch=-1).to_series())  # final test error per width

# raw: the same arrays, the done mask and the fixed inputs of each probe
with h5py.File(path, "r") as f:
    print(dict(f.attrs))
    print(f["spectrum/done"][()].sum(), "cells done")
    print(f["spectrum/inputs/train/index"][:10])
