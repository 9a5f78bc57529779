"""Names shared by the probes and the cube: the subsets and a probe's declaration of outputs.

A probe declares its outputs once, in one of two forms of the same declaration:

* :class:`Outputs` (with :class:`Metric`) is the form a probe author writes in
  :meth:`~ckpt_analyzer.probes.base.Probe.outputs`: coordinates as any 1-D sequences, metrics
  with their extra dimensions (after epoch and width) and dtype;
* :class:`Decl` is the canonical form derived from it by :meth:`Outputs.declare` (coordinate
  values as ``str``/``int``/``float`` tuples with their kind, dtype names normalized, every name
  and dimension validated). It is what the journal stores (``probe.outputs`` as JSON, the
  on-disk format of ``ckpt-analyzer.journal/1``) and what the HDF5 writer lays out.

There is one check of a probe's results, :meth:`Decl.check`: the probe base class
(:meth:`~ckpt_analyzer.probes.base.Probe.measure`) runs it on what a probe returns, and the
journal (:meth:`ckpt_analyzer.cube.Cube.record`) on what it records. :meth:`Outputs.check` is
the same check, for tests and notebooks that hold an :class:`Outputs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CkptError, ProbeError, did_you_mean

SUBSETS = ("train", "clean", "noisy", "test")

#: Names a probe's coordinates and metrics may not take (the cube's axes, mask and inputs group).
RESERVED = frozenset({"epoch", "width", "done", "inputs"})


@dataclass(frozen=True)
class Metric:
    """One output array: its dimensions after (epoch, width), dtype and a description.

    ``dims`` name coordinates of the same :class:`Outputs`; ``dtype`` must be a float type (NaN
    marks the cells not computed)."""

    dims: tuple[str, ...] = ()
    dtype: str = "float64"
    description: str = ""


@dataclass(frozen=True)
class Outputs:
    """Everything a probe writes per checkpoint: extra coordinates and metrics.

    ``coords`` maps each extra dimension to its coordinate values (non-empty, 1-D: all strings,
    all integers or all floats); ``metrics`` maps each metric to its :class:`Metric`. Names
    are free except ``epoch``, ``width``, ``done``, ``inputs`` and names with ``/``. For
    example, a metric per subset and frequency::

        Outputs(coords={"subset": ["train", "test"], "k": list(range(65))},
                metrics={"A": Metric(("subset", "k"), description="mean |F_k|")})

    A probe then returns ``{"A": array of shape (2, 65)}`` per checkpoint.
    """

    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)

    def shape(self, metric: str) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.metrics[metric].dims)

    def declare(self, probe: str) -> Decl:
        """The canonical :class:`Decl` of this declaration for ``probe``; a one-line
        :class:`~ckpt_analyzer.errors.CkptError` naming the probe if it is invalid (a reserved
        or clashing name, an undeclared or repeated dimension, an empty or mixed coordinate, a
        non-float dtype, no metric)."""
        return declaration(probe, self)

    def check(self, results: Mapping[str, Any], probe: str) -> dict[str, np.ndarray]:
        """``self.declare(probe).check(results, probe)``: the one check (:meth:`Decl.check`)."""
        return self.declare(probe).check(results, probe)


@dataclass(frozen=True)
class Decl:
    """A probe's declared outputs in canonical, JSON-able form (see the module docstring).

    ``coords`` holds ``(name, kind, values)`` with kind ``str``, ``int`` or ``float``;
    ``metrics`` holds ``(name, dims, dtype, description)``, in declaration order. Build one with
    :meth:`Outputs.declare` (or read one back with :meth:`from_json`)."""

    coords: tuple[tuple[str, str, tuple[Any, ...]], ...]  # (name, kind, values)
    metrics: tuple[tuple[str, tuple[str, ...], str, str], ...]  # (name, dims, dtype, description)

    def coord(self, name: str) -> tuple[Any, ...]:
        return next(v for n, _, v in self.coords if n == name)

    def shape(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(len(self.coord(d)) for d in dims)

    def check(self, results: Mapping[str, Any], probe: str) -> dict[str, np.ndarray]:
        """One checkpoint's results as declared: every declared metric and no other, each
        converted to its declared dtype and of its declared shape; ``{name: array}`` in
        declaration order. Anything else is a one-line
        :class:`~ckpt_analyzer.errors.ProbeError` naming the probe and the metric."""
        names = [m[0] for m in self.metrics]
        missing = sorted(set(names) - set(results))
        extra = sorted(set(results) - set(names), key=str)
        if missing or extra:
            what = "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                         f"undeclared {', '.join(map(str, extra))}" if extra else "") if p)
            raise ProbeError(f"probe '{probe}' returned the wrong metrics ({what}; declared "
                             f"{', '.join(names)})")
        out = {}
        for name, dims, dtype, _ in self.metrics:
            try:
                arr = np.asarray(results[name], dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise ProbeError(f"probe '{probe}' metric '{name}' is not a {dtype} array "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            if arr.shape != self.shape(dims):
                raise ProbeError(
                    f"probe '{probe}' metric '{name}' has shape {arr.shape}, declared "
                    f"{self.shape(dims)} for dims {dims}"
                )
            out[name] = arr
        return out

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
    """:meth:`Outputs.declare`: the canonical form of ``outputs``, validated."""
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


TIME_UNITS = ("epoch", "step")


def time_unit(attrs: Mapping[str, Any] | None) -> str:
    """The time axis of a cube from its root attributes: ``"epoch"`` (default, also for cubes
    written before the attribute existed) or ``"step"``. The coordinate is named ``epoch`` in
    the file either way."""
    raw = (attrs or {}).get("time_unit", "epoch")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return str(raw) if str(raw) in TIME_UNITS else "epoch"


def time_label(unit: str, plural: bool = False) -> str:
    """``epoch``/``epochs`` or ``step``/``steps``: for report text and axis labels."""
    return unit + ("s" if plural else "")
