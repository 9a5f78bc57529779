"""The cube's schema (format 1): names, size limits, array codecs.

A probe's declaration of outputs (:class:`~ckpt_analyzer.schema.Decl`, its one check and its
JSON form) lives in :mod:`ckpt_analyzer.schema`, shared with the probes; it is re-exported here
for the cube's modules."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CkptError
from ..schema import RESERVED, Decl, check_name, declaration

if TYPE_CHECKING:
    from ..schema import Outputs

__all__ = ["AXES", "CUBE_FORMAT", "INPUT_ATOL", "INPUT_RTOL", "JOURNAL_FORMAT", "MAX_GROUP_BYTES",
           "RESERVED", "Decl", "as_int", "check_name", "declaration", "decode", "encode",
           "group_size_problem", "jsonable", "same_array", "same_inputs"]

CUBE_FORMAT = "ckpt-analyzer.cube/1"


JOURNAL_FORMAT = "ckpt-analyzer.journal/1"


AXES = ("epoch", "width")


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
    decl = outputs.declare(probe)
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
