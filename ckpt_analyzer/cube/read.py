"""Reading cubes: format check, probe groups, summaries and xarray datasets (pure h5py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import flatten
from ..errors import CkptError, UsageError, did_you_mean
from .hdf5 import NOT_A_VARIABLE
from .schema import CUBE_FORMAT, RESERVED, Decl

if TYPE_CHECKING:
    import h5py
    import xarray

def check_cube(path: Path) -> None:
    """Raise CkptError unless ``path`` is a cube of format 1."""
    import h5py

    if not path.is_file():
        raise CkptError("no such cube file" if not path.exists() else "is not a file", path)
    if not h5py.is_hdf5(path):
        raise CkptError("is not a ckpt-analyzer cube (not an HDF5 file); refusing to touch it",
                        path)
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError as exc:
        hint = ("; its journal is intact: re-run 'ckpt-analyze run' on its run to rebuild it"
                if Path(f"{path}.journal").is_file() else "")
        raise CkptError(f"cannot read the cube ({str(exc).splitlines()[0]}){hint}", path) from None
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != CUBE_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("ckpt-analyzer.cube/"):
            raise CkptError(f"cube format '{fmt}' is not supported (expected {CUBE_FORMAT})",
                            path)
        raise CkptError("is an HDF5 file but not a ckpt-analyzer cube; refusing to touch it",
                        path)


def is_probe(obj: Any) -> bool:
    import h5py

    return isinstance(obj, h5py.Group) and "probe_version" in obj.attrs


def text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def scalar(v: Any) -> Any:
    v = text(v)
    return v.item() if isinstance(v, np.generic) else v


def read_group(g: h5py.Group) -> tuple[Decl, list[str]]:
    """The declaration of a probe group, rebuilt from its layout."""
    import h5py

    coords, metrics = [], []
    for name, ds in g.items():
        if not isinstance(ds, h5py.Dataset) or name in RESERVED:
            continue
        if h5py.h5ds.is_scale(ds.id):
            if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype):
                coords.append((name, "str", tuple(ds.asstr()[()].tolist())))
            elif ds.dtype.kind in "iu":
                coords.append((name, "int", tuple(int(v) for v in ds[()].tolist())))
            else:
                coords.append((name, "float", tuple(float(v) for v in ds[()].tolist())))
        else:
            dims = tuple(d[0].name.rsplit("/", 1)[-1] for d in list(ds.dims)[2:])
            metrics.append((name, dims, ds.dtype.name, str(text(ds.attrs.get("description",
                                                                               "")))))
    return Decl(tuple(coords), tuple(metrics)), [m[0] for m in metrics]


def walk_inputs(g: h5py.Group, prefix: str = "", read: bool = True
                 ) -> Iterator[tuple[str, Any]]:
    """``(key, array)`` of every input under ``g`` (``(key, dataset)`` without ``read``)."""
    import h5py

    for name, obj in g.items():
        if isinstance(obj, h5py.Group):
            yield from walk_inputs(obj, f"{prefix}{name}/", read)
        elif NOT_A_VARIABLE not in str(text(obj.attrs.get("NAME", b""))):
            if not read:
                yield f"{prefix}{name}", obj
            elif h5py.check_string_dtype(obj.dtype):
                yield f"{prefix}{name}", np.asarray(obj.asstr()[()])
            else:
                yield f"{prefix}{name}", np.asarray(obj[()])


def probe_names(path: str | os.PathLike[str]) -> list[str]:
    """Names of the probe groups in a cube."""
    import h5py

    p = Path(path)
    check_cube(p)
    with h5py.File(p, "r") as f:
        return [n for n, g in f.items() if is_probe(g)]


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``ckpt-analyze inspect`` shows (pure h5py, JSON-able)::

        {"path", "root": {format, version, source, run_json, ...}, "run": parsed run.json or None,
         "epochs": [...], "widths": [...],
         "probes": {name: {"version", "seed", "config": {...},
                           "coverage": {"done": cells computed, "total": epochs x widths},
                           "coords": {dim: values}, "metrics": {metric: [dims]},
                           "dtypes": {metric: dtype}, "inputs": {key: {"shape", "dtype"}}}},
         "failures": [{"path", "epoch", "width", "probe", "error"}]}
    """
    import h5py

    p = Path(path)
    check_cube(p)
    with h5py.File(p, "r") as f:
        attrs = {k: scalar(v) for k, v in f.attrs.items() if k != "failures"}
        epochs = [int(v) for v in f["epoch"][()].tolist()]
        widths = [int(v) for v in f["width"][()].tolist()]
        probes = {}
        for name, g in f.items():
            if not is_probe(g):
                continue
            decl, _ = read_group(g)
            done = g["done"][()]
            inputs = {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                      for k, a in walk_inputs(g["inputs"], read=False)} if "inputs" in g else {}
            probes[name] = {
                "version": str(text(g.attrs["probe_version"])),
                "seed": int(g.attrs["seed"]),
                "config": json.loads(text(g.attrs["config"])),
                "coverage": {"done": int(done.astype(bool).sum()), "total": int(done.size)},
                "coords": {n: list(v) for n, _, v in decl.coords},
                "metrics": {n: ["epoch", "width", *d] for n, d, _, _ in decl.metrics},
                "dtypes": {n: t for n, _, t, _ in decl.metrics},
                "inputs": inputs,
            }
        failures = json.loads(text(f.attrs.get("failures", "[]")))
    run = None
    if isinstance(attrs.get("run_json"), str):
        try:
            run = json.loads(attrs["run_json"])
        except ValueError:
            run = None
    return {"path": str(p), "root": attrs, "run": run, "epochs": epochs, "widths": widths,
            "probes": probes, "failures": failures}


def open_cube(path: str | os.PathLike[str], probe: str) -> xarray.Dataset:
    """The probe's group as an in-memory :class:`xarray.Dataset` with labeled dims (epoch,
    width, the probe's coordinates), ``done`` as a boolean mask, and in ``attrs`` the root
    attributes (format, version, source, run_json, failures), the group's (probe_version,
    config as JSON text, seed) and each config entry as ``config.<key>``."""
    try:
        import h5netcdf  # noqa: F401
        import xarray as xr
    except ImportError:
        raise CkptError("open_cube needs xarray and h5netcdf: "
                        "pip install 'ckpt-analyzer[xarray]'") from None
    import h5py

    p = Path(path)
    names = probe_names(p)
    if probe not in names:
        raise UsageError(f"{p}: no probe '{probe}' in this cube{did_you_mean(probe, names)}")
    with h5py.File(p, "r") as f:
        root = {k: scalar(v) for k, v in f.attrs.items()}
    with xr.open_dataset(p, group=probe, engine="h5netcdf") as ds:
        ds = ds.load()
    ds["done"] = ds["done"].astype(bool)
    attrs: dict[str, Any] = dict(root)
    attrs.update(ds.attrs)
    for k, v in flatten(json.loads(attrs["config"]), "config.").items():
        attrs[k] = json.dumps(v) if v is None or isinstance(v, dict) else v
    ds.attrs = attrs
    return ds
