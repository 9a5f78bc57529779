"""A cube's measured cells as blocks and as one tidy table (``to_dataframe``, CSV, Parquet).

Reading is chunked: one probe metric, one width and at most ``max_bytes`` of epochs at a time,
and only the epochs whose cell is ``done`` (a cell never computed is not a row; a computed
value that is NaN, such as the ``alpha`` of a layer too small for a fit, stays NaN).

The tidy table has the columns ``run, width, <time>, probe, metric``, one column per
coordinate name used by the exported probes (``subset``, ``k``, ``layer``, ``lambda`` …; empty
where a metric lacks that dimension) and ``value``. ``<time>`` is ``epoch``, or ``step`` when
the cube's root ``time_unit`` is ``step``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cube.read import check_cube, is_probe, read_cube_info, read_group
from ..errors import CkptError, UsageError, did_you_mean

if TYPE_CHECKING:
    import pandas

#: The most bytes of one metric a block holds (a slab of epochs of one width).
BLOCK_BYTES = 64 * 2**20

#: The fixed columns of the tidy table, before the coordinates (``epoch`` may be ``step``).
FIXED = ("run", "width", "epoch", "probe", "metric")


@dataclass(frozen=True)
class Block:
    """One metric of one probe at one width over some done epochs: ``values`` is shaped
    ``(len(epochs), *[len(coords[d]) for d in dims])``."""

    probe: str
    metric: str
    dims: tuple[str, ...]
    coords: dict[str, tuple[Any, ...]]  # the values of each of ``dims``
    width: int
    epochs: np.ndarray
    values: np.ndarray


def _probe_list(path: Path, present: Sequence[str], probes: Sequence[str] | None) -> list[str]:
    if probes is None:
        return list(present)
    for p in probes:
        if p not in present:
            raise UsageError(f"{path}: no probe '{p}' in this cube{did_you_mean(p, present)}")
    return [p for p in present if p in probes]


#: ``select(probe, metric, dims, coords)``: whether :func:`iter_blocks` reads a metric.
Select = Callable[[str, str, tuple[str, ...], dict[str, tuple[Any, ...]]], bool]


def iter_blocks(path: str | os.PathLike[str], probes: Sequence[str] | None = None,
                widths: Sequence[int] | None = None, max_bytes: int = BLOCK_BYTES,
                select: Select | None = None) -> Iterator[Block]:
    """Every measured cell of the cube, in blocks: probe by probe, width by width, metric by
    metric, epochs in order. ``probes``/``widths`` restrict what is read (an unknown probe is
    a UsageError; a width the probe lacks is skipped), and ``select`` which metrics are (the
    others are never read)."""
    import h5py

    p = Path(path)
    check_cube(p)
    with h5py.File(p, "r") as f:
        present = [n for n, g in f.items() if is_probe(g)]
        for name in _probe_list(p, present, probes):
            g = f[name]
            decl, _ = read_group(g)
            coords = {n: v for n, _, v in decl.coords}
            epochs = np.asarray(g["epoch"][()], dtype=np.int64)
            wcoord = np.asarray(g["width"][()], dtype=np.int64)
            done = np.asarray(g["done"][()], dtype=bool)
            chosen = [(m, tuple(dims)) for m, dims, _, _ in decl.metrics
                      if select is None or select(name, m, tuple(dims),
                                                  {d: coords[d] for d in dims})]
            for j, w in enumerate(wcoord.tolist()):
                if widths is not None and w not in widths:
                    continue
                rows = np.flatnonzero(done[:, j])
                if not rows.size:
                    continue
                for metric, dims in chosen:
                    ds = g[metric]
                    cell = max(1, math.prod(ds.shape[2:]) * ds.dtype.itemsize)
                    step = max(1, max_bytes // cell)
                    for a in range(0, rows.size, step):
                        r = rows[a:a + step]
                        if r[-1] - r[0] + 1 == r.size:  # contiguous epochs: one hyperslab
                            vals = ds[int(r[0]):int(r[-1]) + 1, j]
                        else:
                            vals = ds[r.tolist(), j]
                        yield Block(name, metric, dims, {d: coords[d] for d in dims}, int(w),
                                    epochs[r], np.asarray(vals, dtype=np.float64))


def coordinate_kinds(paths: Sequence[str | os.PathLike[str]],
                     probes: Sequence[str] | None = None) -> dict[str, str]:
    """``{coordinate: "int" | "float" | "str"}`` of every coordinate a metric of the exported
    probes uses, in order of first use; a name with different kinds in two probes is ``str``."""
    import h5py

    kinds: dict[str, str] = {}
    for path in paths:
        p = Path(path)
        check_cube(p)
        with h5py.File(p, "r") as f:
            present = [n for n, g in f.items() if is_probe(g)]
            for name in _probe_list(p, present, probes):
                decl, _ = read_group(f[name])
                used = {d for _, dims, _, _ in decl.metrics for d in dims}
                for n, kind, _ in decl.coords:
                    if n in used:
                        kinds[n] = kind if kinds.get(n, kind) == kind else "str"
    return kinds


def time_column(paths: Sequence[str | os.PathLike[str]]) -> str:
    """``epoch`` or ``step``: the time axis of the cubes (refuses a mix)."""
    units = {str(p): read_cube_info(p).time_unit for p in paths}
    if len(set(units.values())) > 1:
        raise UsageError("cubes on different time axes (" + ", ".join(
            f"{p}: {u}" for p, u in units.items()) + "); export them separately")
    return next(iter(units.values()), "epoch")


def block_columns(block: Block, run: str) -> dict[str, np.ndarray]:
    """The tidy rows of a block as columns (``epoch`` for the time column; coordinates of the
    block's dims only), in C order of ``(epoch, *dims)``."""
    shape = block.values.shape
    n = block.values.size
    cols: dict[str, Any] = {
        "run": np.full(n, run, dtype=object),
        "width": np.full(n, block.width, dtype=np.int64),
        "epoch": np.broadcast_to(block.epochs.reshape((-1,) + (1,) * len(block.dims)),
                                 shape).reshape(-1),
        "probe": np.full(n, block.probe, dtype=object),
        "metric": np.full(n, block.metric, dtype=object),
    }
    for axis, d in enumerate(block.dims, start=1):
        vals = np.asarray(block.coords[d], dtype=object if isinstance(block.coords[d][0], str)
                          else None)
        view = vals.reshape((1,) * axis + (-1,) + (1,) * (len(block.dims) - axis))
        cols[d] = np.broadcast_to(view, shape).reshape(-1)
    cols["value"] = block.values.reshape(-1)
    return cols


def frame(blocks: Sequence[tuple[Block, str]], kinds: dict[str, str],
          time: str = "epoch") -> pandas.DataFrame:
    """The tidy rows of ``(block, run label)`` pairs with every column of ``kinds``."""
    import pandas as pd

    n = sum(b.values.size for b, _ in blocks)
    parts: dict[str, list[Any]] = {c: [] for c in (*FIXED, *kinds, "value")}
    for b, run in blocks:
        cols = block_columns(b, run)
        for c in parts:
            if c in cols:
                parts[c].append(cols[c])
            else:
                parts[c].append(np.full(b.values.size, None, dtype=object))
    data: dict[str, Any] = {}
    for c, arrs in parts.items():
        a = np.concatenate(arrs) if arrs else np.zeros(0, dtype=object)
        if c in ("width", "epoch"):
            data[c] = pd.array(a.astype(np.int64), dtype="int64")
        elif c == "value":
            data[c] = pd.array(a.astype(np.float64), dtype="float64")
        elif c in kinds and kinds[c] == "int":
            data[c] = pd.array(a, dtype="Int64")
        elif c in kinds and kinds[c] == "float":
            data[c] = pd.array(np.where(pd.isna(a), np.nan, a).astype(np.float64),
                               dtype="float64")
        else:  # run, probe, metric and string coordinates (a mixed-kind name as text)
            data[c] = pd.array([None if v is None else str(v) for v in a], dtype="string")
    df = pd.DataFrame(data)
    assert len(df) == n
    return df.rename(columns={"epoch": time}) if time != "epoch" else df


def run_labels(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A distinct name per cube: its file's stem, or for the default ``analysis.h5`` its run
    folder's name (the cube's ``source``); repeats get ``-2``, ``-3`` … in order."""
    out: list[str] = []
    for path in paths:
        p = Path(path)
        base = p.stem
        if base == "analysis":  # the default name: call it after its run
            base = read_cube_info(p).name
            if base == p.name:  # no source recorded: the folder holding the cube
                base = p.resolve().parent.name or p.stem
        label, i = base, 2
        while label in out:
            label, i = f"{base}-{i}", i + 1
        out.append(label)
    return out


def _pandas() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise CkptError("to_dataframe and the csv/parquet export need pandas: "
                        "pip install 'ckpt-analyzer[parquet]'") from None


def to_dataframe(cube: str | os.PathLike[str], probe: str | Sequence[str] | None = None
                 ) -> pandas.DataFrame:
    """Every measured cell of ``cube`` (of ``probe``, a name or several, if given) as one tidy
    :class:`pandas.DataFrame`: ``run, width, epoch (or step), probe, metric, <coordinates>,
    value``; one row per value of a done cell."""
    _pandas()
    paths = [Path(cube)]
    probes = [probe] if isinstance(probe, str) else None if probe is None else list(probe)
    kinds = coordinate_kinds(paths, probes)
    label = run_labels(paths)[0]
    blocks = [(b, label) for b in iter_blocks(paths[0], probes)]
    return frame(blocks, kinds, time_column(paths))
