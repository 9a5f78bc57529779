"""``ckpt-analyze merge A.h5 B.h5 ... -o ALL.h5``: shards of one analysis into one cube.

The output is written by the ordinary single writer (:class:`~.journal.Cube`): the first cube
is copied and its journal rebuilt from it (bit-exact), the other cubes' cells and failures are
recorded, and the cube is materialized. Before anything is written every input is checked
against the first: the same run (root attrs ``source`` and ``run_json``), the same probes with
the same version, config, seed, declared outputs and fixed inputs. A cell present in two cubes
must hold equal values (NaN equal to NaN). Each refusal is one line naming the file and the key.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .read import check_cube, is_probe, read_group, scalar, text, walk_inputs
from .schema import Decl, same_array, same_inputs

IDENTITY = ("source", "run_json")


@dataclass
class _ProbeInfo:
    version: str
    config: Any
    seed: int
    decl: Decl
    inputs: dict[str, np.ndarray]


def _read_identity(path: Path) -> tuple[dict[str, Any], dict[str, _ProbeInfo]]:
    import h5py

    with h5py.File(path, "r") as f:
        root = {k: scalar(f.attrs[k]) for k in IDENTITY if k in f.attrs}
        probes = {}
        for name, g in f.items():
            if not is_probe(g):
                continue
            decl, _ = read_group(g)
            probes[name] = _ProbeInfo(
                str(text(g.attrs["probe_version"])), json.loads(text(g.attrs["config"])),
                int(g.attrs["seed"]), decl,
                dict(walk_inputs(g["inputs"])) if "inputs" in g else {})
    return root, probes


def _cells(path: Path, probe: str) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    import h5py

    with h5py.File(path, "r") as f:
        g = f[probe]
        _, names = read_group(g)
        epochs, widths = g["epoch"][()].tolist(), g["width"][()].tolist()
        data = {m: g[m][()] for m in names}
        return {(int(epochs[i]), int(widths[j])): {m: data[m][i, j] for m in names}
                for i, j in zip(*np.nonzero(g["done"][()]))}


def _failures(path: Path) -> list[dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        return list(json.loads(text(f.attrs.get("failures", "[]"))))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}")
            else:
                out += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "config"]


def check_compatible(first: Path, other: Path) -> None:
    """Raise a one-line :class:`UsageError` naming the first key on which the cubes differ."""
    root_a, probes_a = _read_identity(first)
    root_b, probes_b = _read_identity(other)
    why = f"cannot merge {other} with {first}"
    for k in IDENTITY:
        if root_a.get(k) != root_b.get(k):
            raise UsageError(f"{why}: they are analyses of different runs (root attribute "
                             f"'{k}' differs)")
    for name in sorted(set(probes_a) | set(probes_b)):
        if name not in probes_a or name not in probes_b:
            raise UsageError(f"{why}: probe '{name}' is only in "
                             f"{first if name in probes_a else other} (shards must run the "
                             "same probes)")
        a, b = probes_a[name], probes_b[name]
        if a.version != b.version:
            raise UsageError(f"{why}: probe '{name}' version differs ({a.version} vs "
                             f"{b.version})")
        if a.seed != b.seed:
            raise UsageError(f"{why}: probe '{name}' seed differs ({a.seed} vs {b.seed})")
        keys = _diff_keys(a.config, b.config)
        if keys:
            raise UsageError(f"{why}: probe '{name}' config differs ({', '.join(keys)})")
        if a.decl.key() != b.decl.key():
            raise UsageError(f"{why}: probe '{name}' declares different outputs")
        differ = sorted(k for k in set(a.inputs) | set(b.inputs)
                        if k not in a.inputs or k not in b.inputs
                        or not same_inputs(a.inputs[k], b.inputs[k]))
        if differ:
            raise UsageError(f"{why}: probe '{name}' fixed input '{differ[0]}' differs")


def merge_cubes(inputs: Sequence[str | os.PathLike[str]],
                output: str | os.PathLike[str]) -> dict[str, int]:
    """Merge cubes into ``output`` (which must not exist); return counts of the work done."""
    from .journal import Cube

    paths = [Path(p) for p in inputs]
    out = Path(output)
    if not paths:
        raise UsageError("merge: give at least one cube")
    for p in paths:
        check_cube(p)
    for i, p in enumerate(paths):
        for q in paths[:i]:
            if os.path.samefile(p, q):
                raise UsageError(f"{p}: given twice (it is {q}); merging a cube with itself "
                                 "adds nothing")
    if out.exists() or Path(f"{out}.journal").exists():
        for p in paths:
            if out.exists() and os.path.samefile(p, out):
                raise UsageError(f"-o {out}: is one of the inputs; write the merge to a new file")
        raise UsageError(f"-o {out}: exists (or its journal does); choose a new file")
    for p in paths[1:]:
        check_compatible(paths[0], p)

    _, probes = _read_identity(paths[0])
    cells: dict[str, dict[tuple[int, int], dict[str, np.ndarray]]] = {n: {} for n in probes}
    origin: dict[tuple[str, int, int], Path] = {}
    duplicates = 0
    for p in paths:
        for name in probes:
            for key, values in _cells(p, name).items():
                old = cells[name].get(key)
                if old is not None:
                    for m in values:
                        if not same_array(np.asarray(old[m]), np.asarray(values[m])):
                            raise UsageError(
                                f"cannot merge {p} with {origin[(name, *key)]}: probe '{name}' "
                                f"cell epoch {key[0]} width {key[1]} differs (metric '{m}')")
                    duplicates += 1
                    continue
                cells[name][key] = values
                origin[(name, *key)] = p
    import h5py

    axes: dict[str, set[int]] = {"epoch": set(), "width": set()}
    for p in paths:
        with h5py.File(p, "r") as f:
            for a, vals in axes.items():
                if a in f:
                    vals.update(int(v) for v in f[a][()])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".merging")
    for leftover in (tmp, Path(f"{tmp}.journal"), Path(f"{tmp}.journal-wal")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(paths[0], tmp)
    n_fail = 0
    try:
        with Cube(tmp, fsync=False) as cube:  # the journal is rebuilt from the copy, bit-exact
            seen_fail = {(f["path"], f.get("probe") or "") for f in cube.failures()}
            for p in paths[1:]:
                for fl in _failures(p):
                    if (fl["path"], fl.get("probe") or "") not in seen_fail:
                        cube.record_failure(fl.get("epoch"), fl.get("width"), fl["path"],
                                            fl["error"], fl.get("probe"))
            done = {n: cube.done(n) for n in probes}
            for name, by_cell in cells.items():
                for (e, w), values in by_cell.items():
                    if (e, w) not in done[name]:
                        cube.record(name, e, w, values)
            cube.materialize(sorted(axes["epoch"]), sorted(axes["width"]), rewrite=True)
            n_fail = len(cube.failures())
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, Path(f"{tmp}.journal"), Path(f"{tmp}.journal-wal")):
            leftover.unlink(missing_ok=True)
    return {"cells": sum(len(c) for c in cells.values()), "probes": len(probes),
            "duplicates": duplicates, "failures": n_fail}

