"""Whether a cube is complete: every planned cell of every probe done (``cube/plan.py``).

A probe restricted to some epochs or widths by design (the demo's ``sharpness`` on 4 epochs)
is complete when those cells are done; the other cells of the cube's grid are not missing.
Cubes without a recorded plan count every cell of the grid as planned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cube.plan import planned_cells
from ..cube.read import check_cube, is_probe, scalar


def coverage(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Per probe: ``done`` (cells measured), ``total`` (cells of the grid), ``planned`` (cells
    the runs asked for that lie on the grid) and ``planned_done`` (those measured)."""
    import h5py

    p = Path(path)
    check_cube(p)
    out: dict[str, dict[str, int]] = {}
    with h5py.File(p, "r") as f:
        root = {k: scalar(v) for k, v in f.attrs.items()}
        epochs = [int(v) for v in f["epoch"][()].tolist()]
        widths = [int(v) for v in f["width"][()].tolist()]
        for name, g in f.items():
            if not is_probe(g):
                continue
            done = g["done"][()].astype(bool)
            cells = {(e, w) for e in epochs for w in widths}
            plan = planned_cells(root, name)
            planned = cells if plan is None else plan & cells
            measured = {(epochs[i], widths[j]) for i, j in zip(*done.nonzero(), strict=True)}
            out[name] = {"done": len(measured), "total": len(cells), "planned": len(planned),
                         "planned_done": len(planned & measured)}
    return out


def is_complete(cov: dict[str, dict[str, Any]]) -> bool:
    """True when every probe of :func:`coverage` has all its planned cells done."""
    return all(c["planned_done"] >= c["planned"] for c in cov.values())
