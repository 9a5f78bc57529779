"""Reading cubes: format check, probe groups, summaries and xarray datasets (pure h5py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import flatten
from ..errors import CkptError, UsageError, did_you_mean
from ..schema import time_unit
from .hdf5 import IDENTITIES, NOT_A_VARIABLE
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


#: The most bytes of cells :func:`iter_cells` reads at once, and the writer's block
#: (``journal.BLOCK_BYTES``): 32 MiB was no faster and peaked at 2-3x the block.
READ_BLOCK_BYTES = 4 * 2**20


#: The most chunks one read of :func:`read_rows` selects: HDF5 keeps a few kB of bookkeeping
#: per chunk of a selection (61 MiB to read a 16k-cell metric of 24-byte cells at once).
READ_CHUNKS = 512


def read_rows(ds: h5py.Dataset, col: slice = slice(None)) -> np.ndarray:
    """``ds[:, col]`` read in slabs of epochs of at most :data:`READ_CHUNKS` chunks, so the
    memory it takes is the result's, not HDF5's per-chunk bookkeeping of the whole cube's."""
    if ds.ndim < 2 or ds.chunks is None:
        return np.asarray(ds[:, col] if ds.ndim >= 2 else ds[()])
    width = len(range(*col.indices(ds.shape[1])))
    per_row = max(1, -(-width // ds.chunks[1]))
    step = max(ds.chunks[0], READ_CHUNKS // per_row * ds.chunks[0])
    out = np.empty((ds.shape[0], width, *ds.shape[2:]), dtype=ds.dtype)
    for a in range(0, ds.shape[0], step):
        out[a:a + step] = ds[a:a + step, col]
    return out


def iter_cells(g: h5py.Group, names: Sequence[str], cells: Any = None,
               max_bytes: int = READ_BLOCK_BYTES
               ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(epoch, width, {metric: array})`` of every done cell of a probe group (or of the
    ``(epoch index, width index)`` pairs of ``cells``), read width by width in contiguous runs of
    epochs of at most ``max_bytes``: memory does not grow with the cube."""
    epochs, widths = g["epoch"][()].tolist(), g["width"][()].tolist()
    if cells is None:
        ii, jj = np.nonzero(g["done"][()])
    else:
        pairs = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        ii, jj = pairs[:, 0], pairs[:, 1]
    if not len(ii):
        return
    cell = sum(max(1, int(np.prod(g[m].shape[2:], dtype=np.int64))) * g[m].dtype.itemsize
               for m in names)
    step = max(1, max_bytes // max(1, cell))
    order = np.lexsort((ii, jj))
    ii, jj = ii[order], jj[order]
    cuts = np.flatnonzero((np.diff(jj) != 0) | (np.diff(ii) != 1)) + 1
    for s, e in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ii)].tolist(), strict=True):
        for a in range(s, e, step):
            b = min(a + step, e)
            i0, j = int(ii[a]), int(jj[a])
            data = {m: g[m][i0:i0 + b - a, j] for m in names}
            for k in range(b - a):
                yield int(epochs[i0 + k]), int(widths[j]), {m: data[m][k] for m in names}


def read_identities(f: h5py.File) -> dict[str, list[Any]]:
    """``{"<width>/<epoch>": [size, mtime_ns, digest, ctime_ns, inode]}`` from a cube's
    ``checkpoints/`` group (:func:`~.hdf5.write_identities`); empty for cubes without one."""
    import h5py

    g = f.get(IDENTITIES)
    if not isinstance(g, h5py.Group) or is_probe(g) or "digest" not in g:
        return {}
    cols = {k: g[k][()].tolist() for k in ("width", "epoch", "size", "mtime_ns", "ctime_ns",
                                            "inode") if k in g}
    digests = g["digest"].asstr()[()].tolist()
    n = len(digests)
    if any(len(v) != n for v in cols.values()) or not {"width", "epoch", "size"} <= set(cols):
        raise CkptError(f"its '{IDENTITIES}' group is malformed (columns of unequal length or "
                        "missing)", f.filename)
    zeros = [0] * n
    return {f"{int(w)}/{int(e)}": [int(s), int(m), str(d), int(c), int(i)]
            for w, e, s, m, d, c, i in zip(cols["width"], cols["epoch"], cols["size"],
                                           cols.get("mtime_ns", zeros), digests,
                                           cols.get("ctime_ns", zeros), cols.get("inode", zeros),
                                           strict=True)}


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


#: ``open_cube`` loads a probe's group into memory up to this many bytes of metrics; a larger
#: group is opened lazily (read chunk by chunk as it is indexed).
LOAD_LIMIT = 256 * 2**20


def open_cube(path: str | os.PathLike[str], probe: str,
              lazy: bool | None = None) -> xarray.Dataset:
    """The probe's group as an :class:`xarray.Dataset` with labeled dims (epoch, width, the
    probe's coordinates), ``done`` as a boolean mask, and in ``attrs`` the root attributes
    (format, version, source, run_json, failures), the group's (probe_version, config as JSON
    text, seed) and each config entry as ``config.<key>``.

    In memory, unless ``lazy`` (default: when its metrics exceed :data:`LOAD_LIMIT`): then the
    arrays stay in the file and are read as they are indexed (``ds["A"].isel(width=3)`` reads
    that width only); close the dataset (``with open_cube(...) as ds:``) when done."""
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
        if lazy is None:
            g = f[probe]
            _, names = read_group(g)
            lazy = sum(g[m].size * g[m].dtype.itemsize for m in names) > LOAD_LIMIT
    ds = xr.open_dataset(p, group=probe, engine="h5netcdf")
    if not lazy:
        with ds:
            ds = ds.load()
    ds["done"] = ds["done"].astype(bool)
    attrs: dict[str, Any] = dict(root)
    attrs.update(ds.attrs)
    for k, v in flatten(json.loads(attrs["config"]), "config.").items():
        attrs[k] = json.dumps(v) if v is None or isinstance(v, dict) else v
    ds.attrs = attrs
    return ds


@dataclass(frozen=True)
class CubeInfo:
    """Root facts of a cube: where it came from and its coordinates."""

    path: Path
    source: str | None
    run: dict[str, Any] | None
    epochs: np.ndarray
    widths: np.ndarray
    probes: tuple[str, ...]
    time_unit: str = "epoch"  # the time axis: "epoch" or "step" (root attribute time_unit)

    @property
    def name(self) -> str:
        """The run's folder name (or the cube's file name when the source is unknown)."""
        return Path(self.source).name if self.source else self.path.name

    def describe(self) -> str:
        """``digits-run: mcnn on digits, 20% symmetric noise`` (what is known of it)."""
        run = self.run or {}
        parts = []
        ds = run.get("dataset")
        arch = run.get("arch")
        if arch or ds:
            dname = ds.get("name") if isinstance(ds, dict) else ds
            parts.append(" on ".join(str(p) for p in (arch, dname) if p))
        noise = run.get("label_noise")
        if isinstance(noise, dict) and noise.get("fraction"):
            parts.append(f"{float(noise['fraction']):.0%} {noise.get('kind', '')} noise"
                         .replace("  ", " "))
        return f"{self.name}: {', '.join(parts)}" if parts else self.name

    def rerun_hint(self, probe: str) -> str:
        """The command that computes ``probe`` into this cube."""
        src = self.source or "RUN_DIR"
        return f"ckpt-analyze run {src} --probe {probe} -o {self.path}"


@dataclass(frozen=True)
class ProbeData:
    """One probe group read into memory: metrics shaped (epoch, width, *extra dims)."""

    name: str
    epochs: np.ndarray
    widths: np.ndarray
    coords: dict[str, tuple[Any, ...]]
    dims: dict[str, tuple[str, ...]]
    values: dict[str, np.ndarray]
    done: np.ndarray
    config: dict[str, Any]

    def has(self, metric: str, **sel: Any) -> bool:
        return self.get(metric, **sel) is not None

    def get(self, metric: str, **sel: Any) -> np.ndarray | None:
        """``values[metric]`` with the named coordinates picked (e.g. ``subset="test"``);
        ``None`` when the metric or a requested coordinate value is not in the cube."""
        if metric not in self.values:
            return None
        dims = self.dims[metric]
        extra = set(sel) - set(dims)
        if extra:
            return None
        index: list[Any] = [slice(None), slice(None)]
        for d in dims:
            if d in sel:
                values = list(self.coords.get(d, ()))
                if sel[d] not in values:
                    return None
                index.append(values.index(sel[d]))
            else:
                index.append(slice(None))
        return np.asarray(self.values[metric][tuple(index)], dtype=np.float64)

    def column(self, width: Any) -> int | None:
        hit = np.flatnonzero(self.widths == width)
        return int(hit[0]) if hit.size else None


def read_cube_info(path: str | os.PathLike[str]) -> CubeInfo:
    """Root attributes and coordinates of a cube (raises CkptError if it is not one)."""
    import h5py

    p = Path(path)
    probes = tuple(probe_names(p))  # checks the format
    with h5py.File(p, "r") as f:
        source = text(f.attrs.get("source"))
        run = None
        raw = text(f.attrs.get("run_json"))
        if isinstance(raw, str):
            try:
                run = json.loads(raw)
            except ValueError:
                run = None
        epochs = f["epoch"][()] if "epoch" in f else np.zeros(0, dtype=np.int64)
        widths = f["width"][()] if "width" in f else np.zeros(0, dtype=np.int64)
        unit = time_unit(dict(f.attrs))
    return CubeInfo(p, str(source) if source else None, run if isinstance(run, dict) else None,
                    np.asarray(epochs), np.asarray(widths), probes, unit)


def read_probe_group(f: h5py.File, name: str, metrics: Sequence[str] | None,
                     width: int | None = None) -> ProbeData | None:
    """The probe group ``name`` (only ``metrics`` if given) read into memory; with ``width``
    only that width's column (``widths == [width]``), so a large metric costs one width."""
    import h5py

    g = f.get(name)
    if not isinstance(g, h5py.Group) or "probe_version" not in g.attrs:
        return None
    widths = np.asarray(g["width"][()])
    col: slice = slice(None)
    if width is not None:
        hit = np.flatnonzero(widths == width)
        if not hit.size:
            return None
        col = slice(int(hit[0]), int(hit[0]) + 1)
        widths = widths[col]
    coords: dict[str, tuple[Any, ...]] = {}
    datasets = [(k, ds) for k, ds in g.items() if isinstance(ds, h5py.Dataset)]
    for key, ds in datasets:
        if key in ("epoch", "width", "done") or not h5py.h5ds.is_scale(ds.id):
            continue
        if h5py.check_string_dtype(ds.dtype):
            coords[key] = tuple(ds.asstr()[()].tolist())
        else:
            coords[key] = tuple(ds[()].tolist())
    dims: dict[str, tuple[str, ...]] = {}
    values: dict[str, np.ndarray] = {}
    for key, ds in datasets:
        if key in ("epoch", "width", "done") or key in coords or ds.ndim < 2:
            continue
        if metrics is not None and key not in metrics:
            continue
        extra = []
        for axis in range(2, ds.ndim):
            scales = ds.dims[axis]
            extra.append(scales[0].name.rsplit("/", 1)[-1] if len(scales) else f"dim{axis}")
        dims[key] = tuple(extra)
        values[key] = read_rows(ds, col)
    done = read_rows(g["done"], col).astype(bool) if "done" in g else np.zeros(0, dtype=bool)
    try:
        config = json.loads(text(g.attrs.get("config", "{}")))
    except ValueError:
        config = {}
    return ProbeData(name, np.asarray(g["epoch"][()]), widths, coords, dims,
                     values, done, config if isinstance(config, dict) else {})


def load_probe(path: str | os.PathLike[str], probe: str,
               metrics: Sequence[str] | None = None, width: int | None = None
               ) -> ProbeData | None:
    """The probe's group of a cube (only ``metrics`` if given, only ``width``'s column if
    given), or ``None`` if it (or that width) is absent."""
    import h5py

    with h5py.File(Path(path), "r") as f:
        return read_probe_group(f, probe, metrics, width)
