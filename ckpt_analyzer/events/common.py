"""Defaults, argument checks and the dense (every-epoch) curve that every event search uses."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..config import ConfigError

#: Patience T of the peak search, in epochs (Zhang & Wu §3.2: T = 30).
DEFAULT_PATIENCE = 30


#: Half-width ΔT of the decrease-rate moving average, in epochs (Zhang & Wu §3.2: ΔT = 5).
DEFAULT_WINDOW = 5


#: Window length l of the short-time PCC, in epochs (Zhang & Wu App. A: l = 100).
DEFAULT_PCC_WINDOW = 100


#: Keys of :func:`events_for_width`'s result, in report order.
EVENT_KEYS = ("T_E_min", "T_E_peak", "T_R_min", "T_R_peak", "T_dP_peak")


#: Relative tolerance under which two smoothed decrease rates count as a tie (rounding of the
#: interpolation; the earliest epoch wins).
_TIE_RTOL = 1e-9


class AnalysisValueError(ConfigError, ValueError):
    """A bad argument value (shape, range, ordering): a ``ValueError`` and a ConfigError."""


class AnalysisTypeError(ConfigError, TypeError):
    """A bad argument type (e.g. a float patience): a ``TypeError`` and a ConfigError."""


def _curve(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise AnalysisTypeError(f"{name} must be numeric, got {type(values).__name__}") from None
    if v.ndim != 1:
        raise AnalysisValueError(
            f"{name} must be a 1-D curve over checkpoints, got shape {v.shape}")
    return v


def _int_arg(value: Any, name: str, low: int, unit: str = "epochs") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AnalysisTypeError(f"{name} must be an integer number of {unit}, got {value!r}")
    if value < low:
        raise AnalysisValueError(f"{name} must be >= {low} ({unit}), got {value!r}")
    return int(value)


def _check_patience(patience: int | None) -> int | None:
    return None if patience is None else _int_arg(patience, "patience", 1)


def _epochs(epochs: ArrayLike, n: int) -> NDArray[np.int64]:
    """The epoch coordinate of ``n`` checkpoints: 1-D, integer-valued, strictly increasing."""
    try:
        e = np.asarray(epochs)
    except (TypeError, ValueError):
        raise AnalysisTypeError("epochs must be an array of integers") from None
    if e.ndim != 1 or e.shape[0] != n:
        raise AnalysisValueError(f"epochs has shape {e.shape}, the curves have {n} checkpoints")
    if e.dtype.kind not in "iuf" or e.dtype == np.bool_:
        raise AnalysisTypeError(f"epochs must be integers, got dtype {e.dtype}")
    if e.dtype.kind == "f":
        if not np.all(np.isfinite(e)) or np.any(e != np.round(e)):
            raise AnalysisValueError("epochs must be whole numbers (epochs or steps)")
    e = e.astype(np.int64)
    if n > 1 and not np.all(np.diff(e) > 0):
        raise AnalysisValueError("epochs must be strictly increasing")
    return e


def _dense(e: NDArray[np.int64], v: NDArray[np.float64]
           ) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
    """``v`` (1-D, on epochs ``e``) interpolated linearly onto every epoch between its first
    and last finite entry; ``None`` if no entry is finite."""
    ok = np.isfinite(v)
    if not ok.any():
        return None
    ef, vf = e[ok], v[ok]
    grid = np.arange(ef[0], ef[-1] + 1, dtype=np.int64)
    return grid, np.interp(grid, ef, vf)


def _stop(v: NDArray[np.float64], patience: int | None) -> int | None:
    """Early stopping on a finite curve with one value per epoch: the index of the best value
    when the search stops, or ``None`` if it cannot be confirmed.

    An epoch improves when it is strictly below every earlier one; the search stops at the
    first improvement that is followed by ``patience`` epochs without one. If the curve ends
    before those ``patience`` epochs have passed, the result is ``None`` (not found).
    ``patience=None`` gives the (earliest) global minimum.
    """
    n = v.shape[0]
    prev_best = np.concatenate(([np.inf], np.minimum.accumulate(v)[:-1]))
    improving = np.flatnonzero(v < prev_best)  # always contains 0
    if patience is None:
        return int(improving[-1])
    gaps = np.diff(improving)
    stops = np.flatnonzero(gaps > patience)
    if stops.size:
        return int(improving[stops[0]])
    last = int(improving[-1])
    return last if n - 1 - last >= patience else None


def _scalar(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _floats(values: ArrayLike | Sequence[float | None]) -> NDArray[np.float64]:
    """Array of floats with ``None`` as NaN."""
    obj = np.array(values, dtype=object)
    obj[np.frompyfunc(lambda v: v is None, 1, 1)(obj).astype(bool)] = np.nan
    try:
        return obj.astype(np.float64)
    except (TypeError, ValueError):
        raise AnalysisTypeError("linear_fit takes numbers or None") from None
