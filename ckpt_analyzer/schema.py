"""Names shared by the probes and the cube: the subsets and a probe's declared outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ProbeError

SUBSETS = ("train", "clean", "noisy", "test")


@dataclass(frozen=True)
class Metric:
    """One output array: its dimensions after (epoch, width), dtype and a description."""

    dims: tuple[str, ...] = ()
    dtype: str = "float64"
    description: str = ""


@dataclass(frozen=True)
class Outputs:
    """Everything a probe writes per checkpoint: extra coordinates and metrics."""

    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)

    def shape(self, metric: str) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.metrics[metric].dims)

    def check(self, results: Mapping[str, Any], probe: str) -> dict[str, np.ndarray]:
        """Validate one checkpoint's results against the declaration (one-line ProbeError)."""
        missing = sorted(set(self.metrics) - set(results))
        extra = sorted(set(results) - set(self.metrics))
        if missing or extra:
            what = "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                         f"undeclared {', '.join(map(str, extra))}" if extra else "") if p)
            raise ProbeError(f"probe '{probe}' returned the wrong metrics ({what}; declared "
                             f"{', '.join(self.metrics)})")
        out = {}
        for name, metric in self.metrics.items():
            try:
                arr = np.asarray(results[name], dtype=metric.dtype)
            except (TypeError, ValueError) as exc:
                raise ProbeError(f"probe '{probe}' metric '{name}' is not a {metric.dtype} array "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            if arr.shape != self.shape(name):
                raise ProbeError(
                    f"probe '{probe}' metric '{name}' has shape {arr.shape}, declared "
                    f"{self.shape(name)} for dims {metric.dims}"
                )
            out[name] = arr
        return out


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
