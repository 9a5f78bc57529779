"""Model-wise events: the interpolation threshold and peaks over width by prominence."""

from __future__ import annotations

import numbers
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .common import AnalysisTypeError, AnalysisValueError, _curve, _scalar


def last_finite(values: ArrayLike) -> NDArray[np.float64]:
    """The last finite value along axis 0 (time) of each trailing series; NaN if none.

    E.g. the final train error per width from an (epoch, width) array whose late cells are
    not yet computed.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 1:
        raise AnalysisValueError("last_finite needs a time axis")
    ok = np.isfinite(v)
    n = v.shape[0]
    last = n - 1 - np.argmax(ok[::-1], axis=0)
    picked = np.take_along_axis(v, np.expand_dims(last, 0), axis=0)[0]
    return np.where(ok.any(axis=0), picked, np.nan)


def _widths(widths: ArrayLike, n: int) -> NDArray[Any]:
    w = np.asarray(widths)
    if w.ndim != 1 or w.shape[0] != n:
        raise AnalysisValueError(f"widths has shape {w.shape}, the values have {n} widths")
    if w.dtype.kind not in "iuf" or w.dtype == np.bool_:
        raise AnalysisTypeError(f"widths must be numbers, got dtype {w.dtype}")
    if np.unique(w).size != n:
        raise AnalysisValueError("widths must be distinct")
    return w


def interpolation_threshold(
    widths: ArrayLike, final_train_error: ArrayLike, tol: float = 0.0
) -> Any:
    """Model-wise interpolation threshold (Gamba et al. §4; Zhang & Wu §3): the smallest width
    whose final train error is ``<= tol`` (0: fits every label, noisy ones included).

    ``widths`` need not be sorted; NaN errors are skipped. ``None`` if no width interpolates.
    """
    e = _curve(final_train_error, "final_train_error")
    w = _widths(widths, e.shape[0])
    if not isinstance(tol, numbers.Real) or isinstance(tol, bool):
        raise AnalysisTypeError(f"tol must be a number, got {tol!r}")
    if not tol >= 0:
        raise AnalysisValueError(f"tol must be >= 0, got {tol!r}")
    ok = np.isfinite(e) & (e <= tol)
    if not ok.any():
        return None
    return _scalar(w[ok].min())


class WidthPeak(NamedTuple):
    """Result of :func:`model_wise_peak`; all fields ``None`` but ``kind`` when there is no
    interior extremum."""

    width: Any
    value: float | None
    prominence: float | None
    kind: str


def model_wise_peak(
    widths: ArrayLike, values: ArrayLike, kind: Literal["max", "min"] = "max"
) -> WidthPeak:
    """The model-wise peak (Gamba et al. Fig. 2-3, 5): the interior local maximum of
    ``values`` over width with the largest prominence (``kind="max"``: test error, loss,
    Jacobian, Hessian), or the interior local minimum of largest prominence (``kind="min"``:
    accuracy), with that prominence.

    * The curve is the finite values **ordered by width**; peaks are found over that ordered
      index, not over the width value (widths 1, 2, 3, 4, 8, 16, 32 are unevenly spaced, but
      each is one step). NaN widths are dropped first.
    * Interior: the smallest and the largest width are never a peak. A local maximum is a
      sample higher than both neighbours; a flat top (equal neighbours) is one peak reported
      at its smallest width. A monotone (or constant) curve has **no peak**: ``width=None``.
    * Prominence as :func:`scipy.signal.peak_prominences`: the height of the peak above the
      higher of the two lowest points between it and the nearest higher sample (or the curve's
      end) on either side. For ``kind="min"`` it is the same for ``-values`` (a depth, > 0).
    * Ties in prominence go to the smallest width.

    E.g. final test errors 0.66 0.52 0.41 0.44 0.49 0.45 0.38 over widths 1 2 3 4 8 16 32
    peak at width 8 with prominence 0.49 − max(0.41, 0.38) = 0.08 (the global maximum, width 1,
    is an underfitting end, not a peak).
    """
    from scipy.signal import find_peaks, peak_prominences

    v = _curve(values, "values")
    w = _widths(widths, v.shape[0])
    if kind not in ("max", "min"):
        raise AnalysisValueError(f"kind must be 'max' or 'min', got {kind!r}")
    none = WidthPeak(None, None, None, kind)
    ok = np.isfinite(v)
    order = np.argsort(w[ok], kind="stable")
    ws, vs = w[ok][order], v[ok][order]
    if vs.size < 3:
        return none
    x = vs if kind == "max" else -vs
    peaks, props = find_peaks(x, plateau_size=(None, None))
    if peaks.size == 0:
        return none
    prom = peak_prominences(x, peaks)[0]
    best = int(np.argmax(prom))  # first of equal prominences: the smallest width
    i = int(props["left_edges"][best])
    return WidthPeak(_scalar(ws[i]), float(vs[i]), float(prom[best]), kind)


def peak_width(widths: ArrayLike, values: ArrayLike,
               kind: Literal["max", "min"] = "max") -> Any:
    """The width of :func:`model_wise_peak` (``None`` when the curve has no interior peak)."""
    return model_wise_peak(widths, values, kind).width


class ThresholdDistance(NamedTuple):
    """Where a model-wise peak sits relative to the interpolation threshold."""

    ratio: float  #: peak width / threshold width
    difference: Any  #: peak width − threshold width
    steps: int  #: position of the peak − position of the threshold in the sorted widths


def threshold_distance(widths: ArrayLike, width: Any, threshold: Any) -> ThresholdDistance | None:
    """How far a model-wise peak at ``width`` sits from the interpolation ``threshold``:
    the width ratio, the width difference, and ``steps``, the signed number of positions in
    the sorted list ``widths`` (0: at the threshold, −1: the next smaller width, +2: two widths
    wider; |steps| − 1 widths lie strictly between). ``None`` if either is ``None`` or not
    one of ``widths``."""
    w = np.asarray(widths)
    _widths(w, w.shape[0] if w.ndim == 1 else 0)
    if width is None or threshold is None:
        return None
    ws = np.sort(w)
    hit_p, hit_t = np.flatnonzero(ws == width), np.flatnonzero(ws == threshold)
    if not hit_p.size or not hit_t.size:
        return None
    return ThresholdDistance(float(width) / float(threshold), _scalar(width - threshold),
                             int(hit_p[0] - hit_t[0]))
