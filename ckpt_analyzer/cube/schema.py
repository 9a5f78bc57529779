"""The cube's schema (format 1): names, a probe's declared outputs in canonical form, array codecs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CkptError, did_you_mean

if TYPE_CHECKING:
    from ..schema import Outputs

CUBE_FORMAT = "ckpt-analyzer.cube/1"


JOURNAL_FORMAT = "ckpt-analyzer.journal/1"


AXES = ("epoch", "width")


RESERVED = frozenset({"epoch", "width", "done", "inputs"})


@dataclass(frozen=True)
class Decl:
    """A probe's declared outputs in a canonical, JSON-able form."""

    coords: tuple[tuple[str, str, tuple[Any, ...]], ...]  # (name, kind, values)
    metrics: tuple[tuple[str, tuple[str, ...], str, str], ...]  # (name, dims, dtype, description)

    def coord(self, name: str) -> tuple[Any, ...]:
        return next(v for n, _, v in self.coords if n == name)

    def shape(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(len(self.coord(d)) for d in dims)

    def to_json(self) -> str:
        return json.dumps({"coords": [list(c) for c in self.coords],
                           "metrics": [list(m) for m in self.metrics]})

    @classmethod
    def from_json(cls, text: str) -> Decl:
        raw = json.loads(text)
        return cls(tuple((n, k, tuple(v)) for n, k, v in raw["coords"]),
                   tuple((n, tuple(d), t, s) for n, d, t, s in raw["metrics"]))

    def key(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What must match between two runs: coordinates and metric dims/dtypes (not order,
        not descriptions)."""
        return ({n: (k, list(v)) for n, k, v in self.coords},
                {n: (list(d), t) for n, d, t, _ in self.metrics})


def _coord_kind(name: str, probe: str, values: Any) -> tuple[str, tuple[Any, ...]]:
    arr = np.asarray(list(values))
    if arr.ndim != 1 or arr.size == 0:
        raise CkptError(f"probe '{probe}' coordinate '{name}' must be a non-empty 1-D list")
    if arr.dtype.kind in "USO":
        if not all(isinstance(v, (str, bytes)) for v in arr.tolist()):
            raise CkptError(f"probe '{probe}' coordinate '{name}' mixes strings and non-strings")
        return "str", tuple(v.decode() if isinstance(v, bytes) else v for v in arr.tolist())
    if arr.dtype.kind in "biu":
        return "int", tuple(int(v) for v in arr.tolist())
    if arr.dtype.kind == "f":
        return "float", tuple(float(v) for v in arr.astype(np.float64).tolist())
    raise CkptError(f"probe '{probe}' coordinate '{name}' has unsupported type {arr.dtype}")


def check_name(name: str, what: str, probe: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise CkptError(f"probe '{probe}': invalid {what} name '{name}'")


def declaration(probe: str, outputs: Outputs) -> Decl:
    coords = []
    for name, values in outputs.coords.items():
        check_name(name, "coordinate", probe)
        if name in RESERVED:
            raise CkptError(f"probe '{probe}': coordinate name '{name}' is reserved")
        kind, vals = _coord_kind(name, probe, values)
        coords.append((name, kind, vals))
    names = {c[0] for c in coords}
    metrics = []
    for name, m in outputs.metrics.items():
        check_name(name, "metric", probe)
        if name in RESERVED or name in names:
            raise CkptError(f"probe '{probe}': metric name '{name}' clashes with a coordinate "
                            "or a reserved name (epoch, width, done, inputs)")
        dims = tuple(m.dims)
        for d in dims:
            if d not in names:
                raise CkptError(f"probe '{probe}' metric '{name}' uses undeclared dimension "
                                f"'{d}'{did_you_mean(d, names)}")
        if len(set(dims)) != len(dims):
            raise CkptError(f"probe '{probe}' metric '{name}' repeats a dimension {dims}")
        dtype = np.dtype(m.dtype)
        if dtype.kind != "f":
            raise CkptError(f"probe '{probe}' metric '{name}' must have a float dtype "
                            f"(NaN marks cells not computed), not {dtype}")
        metrics.append((name, dims, dtype.name, m.description))
    if not metrics:
        raise CkptError(f"probe '{probe}' declares no metrics")
    return Decl(tuple(coords), tuple(metrics))


#: The most bytes one probe's group of a cube may take (epoch × width × the metric's own
#: dimensions). The writer streams cells in blocks (memory does not grow with the cube), so this
#: bounds the disk, not the memory: a size parameter set far too high (a typo) is refused before
#: any checkpoint is read, while a real sweep (256k checkpoints × a 40 kB landscape = 10 GB) runs.
MAX_GROUP_BYTES = 1 * 2**40


def group_size_problem(probe: str, outputs: Outputs, epochs: int, widths: int,
                       limit: int = MAX_GROUP_BYTES) -> str | None:
    """``None``, or one line saying why ``probe``'s group over ``epochs`` × ``widths`` cells
    would be larger than ``limit`` bytes, naming its largest metric and that metric's
    dimensions (whose sizes come from the probe's parameters)."""
    decl = declaration(probe, outputs)
    total = 0
    largest: tuple[int, str, tuple[str, ...], tuple[int, ...]] = (0, "", (), ())
    for name, dims, dtype, _ in decl.metrics:
        shape = decl.shape(dims)
        size = epochs * widths * math.prod(shape) * np.dtype(dtype).itemsize
        total += size
        if size > largest[0]:
            largest = (size, name, dims, shape)
    if total <= limit:
        return None
    _, name, dims, shape = largest
    sizes = ", ".join(f"{d} {n:,}" for d, n in zip(dims, shape)) or "a scalar"
    return (f"probe '{probe}': its results would take {total / 2**30:,.0f} GiB ({epochs} "
            f"epoch(s) x {widths} width(s); largest metric '{name}': {sizes} per cell), more "
            f"than the {limit / 2**30:g} GiB a probe's group may take; lower the {probe} "
            "parameters behind those sizes")


def encode(arr: np.ndarray) -> tuple[str, str, bytes]:
    """(dtype, shape, bytes) of an input array; strings as JSON, numbers little-endian raw."""
    shape = json.dumps(list(arr.shape))
    if arr.dtype.kind in "USO":
        items = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
        return "str", shape, json.dumps(items).encode()
    if arr.dtype.kind not in "biuf":
        raise CkptError(f"unsupported input dtype {arr.dtype}")
    le = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    return le.str, shape, np.ascontiguousarray(arr, dtype=le).tobytes()


def decode(dtype: str, shape: str, data: bytes) -> np.ndarray:
    shp = tuple(json.loads(shape))
    if dtype == "str":
        return np.array(json.loads(data.decode()), dtype=object).reshape(shp).astype(str)
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shp).copy()


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "USO" or b.dtype.kind in "USO":
        return bool((a.astype(str) == b.astype(str)).all())
    nan = a.dtype.kind == "f" and b.dtype.kind == "f"
    return bool(np.array_equal(a, b, equal_nan=nan))


#: Float fixed inputs of a cube and of a re-run agree within these: inputs measured on a
#: device (sharpness's anchor distances, from an SVD in float32, rounded to 1e-6) differ by
#: float32 rounding on another device or BLAS; draws from other seeds and inputs of other data
#: never come this close. Integer, boolean and string inputs (indices, masks) compare exactly.
INPUT_RTOL, INPUT_ATOL = 1e-5, 2e-6


def same_inputs(a: np.ndarray, b: np.ndarray) -> bool:
    """Two fixed inputs are the same: exactly, or for floats within INPUT_RTOL/INPUT_ATOL."""
    if a.shape == b.shape and a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.allclose(a, b, rtol=INPUT_RTOL, atol=INPUT_ATOL, equal_nan=True))
    return same_array(a, b)


def jsonable(config: Mapping[str, Any]) -> Any:
    try:
        return json.loads(json.dumps(dict(config), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise CkptError(f"probe config is not JSON-serializable: {exc}") from None


def as_int(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise CkptError(f"{what} must be an integer, not {v!r}")
    try:
        return int(np.int64(v.__index__()))  # type: ignore[union-attr]
    except (AttributeError, TypeError, OverflowError):
        raise CkptError(f"{what} must be an integer, not {v!r}") from None
