"""Writing the HDF5 file of a cube: probe groups, dimension scales, fixed inputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .schema import AXES, Decl

if TYPE_CHECKING:
    import h5py

NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."


COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


#: ``done`` is small (one byte per cell) and rewritten where cells are added, so its chunks are
#: not compressed: a chunk overwritten in place keeps its size and no space is lost in the file
#: (a rewritten compressed chunk moves to the end of the file and the old one stays unused).
DONE_CHUNKS = (64, 16)


#: A block of cells: its index (an epoch run at one width, or a width run at one epoch, as
#: ``(slice, int)`` or ``(int, slice)``) and ``{metric: array}`` shaped ``(run, *cell)``.
Block = tuple[tuple[int | slice, int | slice], dict[str, np.ndarray]]


def write_probe(f: h5py.File, name: str, version: str, config: str, seed: int, decl: Decl,
                grid: dict[str, np.ndarray], blocks: Iterable[Block],
                inputs: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a probe group afresh: coordinates, metrics (NaN outside ``blocks``: chunks are
    allocated only where cells are written), ``done``, inputs."""
    import h5py

    g = f.create_group(name, track_order=True)
    g.attrs["probe_version"] = version
    g.attrs["config"] = config
    g.attrs["seed"] = np.int64(seed)
    scales = write_axes(g, grid)
    for cname, kind, values in decl.coords:
        if kind == "str":
            ds = g.create_dataset(cname, data=np.array(values, dtype=object),
                                  dtype=h5py.string_dtype())
        else:
            ds = g.create_dataset(cname, data=np.array(
                values, dtype=np.int64 if kind == "int" else np.float64))
        ds.make_scale(cname)
        scales[cname] = ds
    shape = (len(grid["epoch"]), len(grid["width"]))
    for m, d, t, desc in decl.metrics:
        cell = decl.shape(d)
        ds = g.create_dataset(m, shape=(*shape, *cell), dtype=t, chunks=(1, 1, *cell),
                              maxshape=(None, None, *cell), fillvalue=np.nan, **COMPRESSION)
        for axis, dim in enumerate((*AXES, *d)):
            ds.dims[axis].attach_scale(scales[dim])
        if desc:
            ds.attrs["description"] = desc
    ds = g.create_dataset("done", shape=shape, dtype=np.uint8, chunks=DONE_CHUNKS,
                          maxshape=(None, None), fillvalue=0)
    ds.attrs["description"] = "1 where the cell was computed"
    for axis, dim in enumerate(AXES):
        ds.dims[axis].attach_scale(scales[dim])
    inp = g.create_group("inputs", track_order=True)
    for key, arr in inputs:
        write_input(inp, key, arr)
    for index, cells in blocks:
        write_block(g, index, cells)


def update_probe(g: h5py.Group, decl: Decl, grid: dict[str, np.ndarray],
                 blocks: Iterable[Block]) -> None:
    """Grow a probe group of a copied cube to ``grid`` (coordinates only grow at their ends)
    and write the newer cells in place."""
    write_axes(g, grid)
    shape = (len(grid["epoch"]), len(grid["width"]))
    for m, d, _, _ in decl.metrics:
        if g[m].shape[:2] != shape:
            g[m].resize((*shape, *decl.shape(d)))
    if g["done"].shape != shape:
        g["done"].resize(shape)
    for index, cells in blocks:
        write_block(g, index, cells)


def write_block(g: h5py.Group, index: tuple[int | slice, int | slice],
                values: dict[str, np.ndarray]) -> None:
    """Write a contiguous block of cells (``index``: an epoch run at one width, or a width run
    at one epoch) of every metric in one hyperslab each, and mark them done."""
    for m, v in values.items():
        g[m][index] = v
    g["done"][index] = 1


def write_axes(g: h5py.Group, grid: dict[str, np.ndarray]) -> dict[str, Any]:
    """Create (or grow, in a copied cube) the epoch and width scales of ``g``."""
    scales = {}
    for a in AXES:
        if a in g:
            ds = g[a]
            ds.resize(grid[a].shape)
            ds[...] = grid[a]
        else:
            ds = g.create_dataset(a, data=grid[a], maxshape=(None,), chunks=(1024,))
            ds.make_scale(a)
        scales[a] = ds
    return scales


def write_input(inp: h5py.Group, key: str, arr: np.ndarray) -> None:
    import h5py

    *parents, leaf = key.split("/")
    g = inp
    for p in parents:
        g = g.require_group(p)
    if arr.dtype.kind in "USO":
        ds = g.create_dataset(leaf, data=arr.astype(object), dtype=h5py.string_dtype())
    else:
        ds = g.create_dataset(leaf, data=arr)
    for axis, n in enumerate(arr.shape):
        dim = f"{leaf}_dim{axis}"
        while dim in g:
            dim += "_"
        sc = g.create_dataset(dim, shape=(n,), dtype=">f4")
        sc.make_scale(f"{NOT_A_VARIABLE}{n:10d}")
        ds.dims[axis].attach_scale(sc)


#: The group holding the identity of every measured checkpoint (one row each).
IDENTITIES = "checkpoints"
_DIGEST = np.dtype("S80")  # "st1:" or "file1:" and 64 hex digits
_ID_CHUNK = 256


def write_identities(f: h5py.File, identities: dict[str, list[Any]]) -> None:
    """Write group ``checkpoints/``: 1-D datasets ``width``, ``epoch``, ``size``, ``mtime_ns``,
    ``ctime_ns`` (int64), ``inode`` (uint64) and ``digest`` (ASCII, 80 bytes) along one
    dimension ``checkpoint``, a row per ``"<width>/<epoch>"`` identity, sorted by width, epoch.
    In a copied cube the datasets are resized and overwritten in place (deleting and recreating
    them would leave the old ones' space unused in the file at every materialization)."""
    rows = sorted((int(k.split("/")[0]), int(k.split("/")[1]), v) for k, v in identities.items())
    n = len(rows)
    cols = {"width": np.array([r[0] for r in rows], dtype=np.int64),
            "epoch": np.array([r[1] for r in rows], dtype=np.int64),
            "size": np.array([r[2][0] for r in rows], dtype=np.int64),
            "mtime_ns": np.array([r[2][1] for r in rows], dtype=np.int64),
            "ctime_ns": np.array([r[2][3] for r in rows], dtype=np.int64),
            "inode": np.array([r[2][4] for r in rows], dtype=np.uint64),
            "digest": np.array([str(r[2][2]).encode() for r in rows], dtype=_DIGEST)}
    g = f.get(IDENTITIES)
    if g is not None and (not n or not all(
            k in g and g[k].maxshape == (None,) and g[k].dtype == v.dtype
            for k, v in cols.items())):
        del f[IDENTITIES]
        g = None
    if not n:
        return
    dim_name = f"{NOT_A_VARIABLE}{n:10d}"
    if g is None:
        g = f.create_group(IDENTITIES, track_order=True)
        g.attrs["description"] = ("the checkpoint each cell was measured from, as it was then; "
                                  "digest: see docs/cube.md")
        dim = g.create_dataset("checkpoint", shape=(n,), dtype=">f4", maxshape=(None,),
                               chunks=(_ID_CHUNK,))
        dim.make_scale(dim_name)
        for name, arr in cols.items():
            # not compressed: a chunk rewritten in place keeps its size, so no space is lost
            ds = g.create_dataset(name, data=arr, maxshape=(None,), chunks=(_ID_CHUNK,))
            ds.dims[0].attach_scale(dim)
        return
    g["checkpoint"].resize((n,))
    g["checkpoint"].attrs["NAME"] = np.bytes_(dim_name.encode())
    for name, arr in cols.items():
        ds = g[name]
        if ds.shape == arr.shape and np.array_equal(ds[()], arr):
            continue
        ds.resize(arr.shape)
        ds[...] = arr

