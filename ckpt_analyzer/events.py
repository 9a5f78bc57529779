"""Double-descent events and correlations on measured curves (pure numpy/scipy, no I/O).

Zhang & Wu, "Rethink the Connections among Generalization, Memorization and the Spectral Bias
of DNNs" (IJCAI 2021), §3.2 and App. A; model-wise events as in Gamba et al. (TMLR 2023).

Conventions shared by every function here:

* **Time is counted in epochs** (or steps, when a run's time axis is steps), never in saved
  checkpoints, on any save grid (every epoch, ``--save log:N``, irregular). Epochs are
  integers, strictly increasing. The defaults are the paper's: patience T = 30 epochs
  (:data:`DEFAULT_PATIENCE`), ΔT = 5 epochs (:data:`DEFAULT_WINDOW`), short-time PCC window
  l = 100 epochs (:data:`DEFAULT_PCC_WINDOW`).
* **Irregular grids: linear interpolation in epoch.** Every epoch-based search works on the
  curve interpolated linearly onto *every* integer epoch between its first and last finite
  saved epoch (``np.interp`` through the finite saved points). On an every-epoch grid this is
  the curve itself; on a sparser grid that contains the curve's turning points (it is
  monotone between consecutive saved epochs) it gives the same events as the every-epoch
  grid. The patience search on such a piecewise-linear curve always stops on a saved epoch,
  so T_min and T_peak are saved epochs; T_ΔP,peak and the short-time PCC are per epoch.
  Memory is one float per epoch of the span (fine for epochs; ~8 MB per curve at 10⁶ steps).
* Non-finite entries (NaN: cell not computed; ±inf) are *absent*: they are skipped (the
  interpolation bridges them) and never become an event. A curve without any finite entry
  has no event (``None``).
* **Not found is** ``None``: an event whose patience window (T epochs after the candidate)
  runs past the curve's last finite saved epoch is not reported, rather than placed at the
  last epoch; so is a ΔP̄ whose window does not fit in the run.
* Ties go to the earliest epoch (the smallest width for model-wise events).
* Bad arguments raise :class:`AnalysisValueError` / :class:`AnalysisTypeError`, which are
  ``ValueError`` / ``TypeError`` and also :class:`~ckpt_analyzer.config.ConfigError` (the CLI
  prints them as one line, exit code 2).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .config import ConfigError

__all__ = [
    "DEFAULT_PATIENCE",
    "DEFAULT_PCC_WINDOW",
    "DEFAULT_WINDOW",
    "EVENT_KEYS",
    "AnalysisTypeError",
    "AnalysisValueError",
    "EpochSeries",
    "LinearFit",
    "ThresholdDistance",
    "WidthPeak",
    "combined_R",
    "decrease_rate",
    "decrease_rate_peak",
    "events_for_width",
    "interpolation_threshold",
    "last_finite",
    "linear_fit",
    "model_wise_peak",
    "peak_epochs",
    "peak_width",
    "peak_with_patience",
    "pearson",
    "short_time_pearson",
    "threshold_distance",
]

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


# ----------------------------------------------------------------------------- helpers


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


# ----------------------------------------------------------------------------- peaks


def peak_epochs(
    epochs: ArrayLike, values: ArrayLike, patience: int | None = DEFAULT_PATIENCE
) -> tuple[int | None, int | None] | None:
    """Zhang & Wu §3.2, "early stopping twice", with the patience T in **epochs**.

    1. T_min: scan forward for the minimum; an epoch *improves* if its value is strictly lower
       than at every earlier epoch; the search stops once no improvement came within T epochs
       after the current best. T_min (T_E,min / T_R,min) is that best epoch.
    2. T_peak: from T_min, the same search for the maximum (strictly higher than the value at
       T_min and every epoch since): T_E,peak / T_R,peak.

    The search runs on the curve interpolated linearly onto every epoch between the first and
    last finite saved epoch (see the module docstring); a saved checkpoint is within patience
    exactly when its epoch is. Both events land on saved epochs.

    Returns ``(T_min, T_peak)`` as epochs, each ``None`` when **not found**: the T epochs after
    the candidate are not all inside the curve (the run, or its computed part, is too short to
    confirm it), so a curve still falling at its end has no T_min instead of T_min = the last
    epoch. ``T_peak == T_min`` means *no rise*: nothing after T_min exceeded it within the
    patience. ``patience=None`` searches the whole curve (global minimum, then the global
    maximum after it; never "not found"). The result is ``None`` when no value is finite.

    Args:
        epochs: the checkpoints' epochs, integers, strictly increasing (any spacing).
        values: the curve, one value per checkpoint (non-finite entries are skipped).
        patience: T, in epochs (>= 1), or ``None``.
    """
    v = _curve(values, "values")
    e = _epochs(epochs, v.shape[0])
    patience = _check_patience(patience)
    dense = _dense(e, v)
    if dense is None:
        return None
    grid, d = dense
    knots = e[np.isfinite(v)]

    def on_knot(i: int) -> int:
        # Guard against rounding in np.interp: the best value of a piecewise-linear curve is
        # on a saved epoch; if rounding stopped inside a segment, move to its end.
        t = int(grid[i])
        j = int(np.searchsorted(knots, t))
        return int(knots[j]) if j < knots.size else t

    i_min = _stop(d, patience)
    if i_min is None:
        return None, None
    t_min = on_knot(i_min)
    i_min = int(t_min - grid[0])
    i_peak = _stop(-d[i_min:], patience)
    t_peak = None if i_peak is None else on_knot(i_min + i_peak)
    return t_min, t_peak


def peak_with_patience(
    values: ArrayLike, patience: int | None = DEFAULT_PATIENCE, epochs: ArrayLike | None = None
) -> tuple[int | None, int | None] | None:
    """:func:`peak_epochs` returning positions in ``values`` instead of epochs.

    ``epochs`` defaults to one checkpoint per epoch (0, 1, 2, ...); pass the real epochs of a
    sparser save grid, otherwise the patience counts checkpoints. Each position is ``None``
    when its event is not found; the result is ``None`` when no value is finite.
    """
    v = _curve(values, "values")
    e = _epochs(np.arange(v.shape[0]) if epochs is None else epochs, v.shape[0])
    found = peak_epochs(e, v, patience)
    if found is None:
        return None
    return tuple(None if t is None else int(np.searchsorted(e, t))  # type: ignore[return-value]
                 for t in found)


def combined_R(
    R: ArrayLike, alphas: ArrayLike | None = None, k_min: int = 1
) -> NDArray[np.float64]:
    """Zhang & Wu §3.2: R_t = Σ_{k ≥ k_min} α_k R_{k,t} (α_k = 1 and k ≥ 1 in the paper).

    Args:
        R: the spectrum ratios R_k (eq. 3), shape (..., K) with column k = frequency k
            (e.g. (T, K) for one width); R_0 = log(A_0/A_0) = 0 is excluded by ``k_min=1``.
        alphas: weights α_k, length K, indexed by k like R's columns (entries below
            ``k_min`` are ignored); default all ones.
        k_min: the lowest frequency summed.

    Returns R_t, shape (...,). A NaN in any summed R_{k,t} makes R_t NaN (partial sums would be
    a different quantity).
    """
    r = np.asarray(R, dtype=np.float64)
    if r.ndim < 1:
        raise AnalysisValueError("R must have a trailing frequency axis k")
    n_k = r.shape[-1]
    if isinstance(k_min, bool) or not isinstance(k_min, numbers.Integral):
        raise AnalysisTypeError(f"k_min must be an integer, got {k_min!r}")
    if not 0 <= k_min < n_k:
        raise AnalysisValueError(f"k_min must be an integer in [0, {n_k - 1}], got {k_min!r}")
    if alphas is None:
        a = np.ones(n_k)
    else:
        a = np.asarray(alphas, dtype=np.float64)
        if a.shape != (n_k,):
            raise AnalysisValueError(
                f"alphas must have length K={n_k} (one per k), got shape {a.shape}")
    return np.asarray(r[..., k_min:] @ a[k_min:], dtype=np.float64)


class EpochSeries(NamedTuple):
    """A series on every epoch of a span: ``epochs`` (int, consecutive) and ``values``
    (axis 0 along ``epochs``)."""

    epochs: NDArray[np.int64]
    values: NDArray[np.float64]


def decrease_rate(
    epochs: ArrayLike, perturbed_error: ArrayLike, window: int = DEFAULT_WINDOW
) -> EpochSeries:
    """Zhang & Wu §3.2: smoothed decrease rate ΔP̄ of the perturbed (noisy-subset) error.

    P is interpolated linearly onto every epoch between its first and last finite saved epoch
    (module docstring); then ΔP_t = −(P_t − P_{t−1}) per epoch and the centred moving average
    ΔP̄_t = (1 / (2ΔT + 1)) Σ_{i=−ΔT..ΔT} ΔP_{t+i} with ``window`` = ΔT **epochs**
    (= (P_{t−ΔT−1} − P_{t+ΔT}) / (2ΔT + 1)). The value at epoch t is centred on the drop that
    ends at t.

    Only full windows are used: ΔP̄_t is NaN for the first ΔT + 1 and last ΔT epochs of the
    span, where the paper's sum is not defined. Returns an :class:`EpochSeries` over every
    epoch from the first to the last saved epoch (empty when P has no finite entry).
    """
    p = _curve(perturbed_error, "perturbed_error")
    e = _epochs(epochs, p.shape[0])
    dt = _int_arg(window, "window (ΔT)", 0)
    dense = _dense(e, p)
    if dense is None:
        return EpochSeries(np.zeros(0, dtype=np.int64), np.zeros(0))
    grid, d = dense
    out = np.full(grid.shape, np.nan)
    width = 2 * dt + 1
    m = grid.size
    if m - 1 >= width:
        out[dt + 1 : m - dt] = (d[: m - width] - d[width:]) / width
    full = EpochSeries(np.arange(e[0], e[-1] + 1, dtype=np.int64), np.full(e[-1] - e[0] + 1,
                                                                            np.nan))
    full.values[grid[0] - e[0] : grid[-1] - e[0] + 1] = out
    return full


def decrease_rate_peak(
    epochs: ArrayLike, perturbed_error: ArrayLike, window: int = DEFAULT_WINDOW
) -> int | None:
    """Zhang & Wu §3.2: T_ΔP,peak, the epoch of the largest smoothed decrease rate ΔP̄.

    The argmax of :func:`decrease_rate` (``window`` = ΔT in epochs); values within a relative
    1e-9 of the maximum (interpolation rounding) are ties and the earliest epoch wins. On a
    sparse grid the epoch need not be a saved one. ``None`` (not found) when the finite part
    of P spans fewer than 2ΔT + 2 epochs (no full window).
    """
    s = decrease_rate(epochs, perturbed_error, window)
    ok = np.isfinite(s.values)
    if not ok.any():
        return None
    best = float(np.max(s.values[ok]))
    tol = _TIE_RTOL * max(abs(best), float(np.max(np.abs(s.values[ok]))))
    hit = np.flatnonzero(ok & (s.values >= best - tol))
    return int(s.epochs[hit[0]])


# ----------------------------------------------------------------------------- correlations


def _masked_pcc(x: NDArray[np.float64], y: NDArray[np.float64], min_pairs: int) -> Any:
    """PCC along the last axis over pairs where both are finite (eq. 4)."""
    m = np.isfinite(x) & np.isfinite(y)
    n = m.sum(axis=-1)
    safe_n = np.maximum(n, 1)
    x0 = np.where(m, x, 0.0)
    y0 = np.where(m, y, 0.0)
    dx = np.where(m, x0 - (x0.sum(axis=-1) / safe_n)[..., None], 0.0)
    dy = np.where(m, y0 - (y0.sum(axis=-1) / safe_n)[..., None], 0.0)
    sxx = (dx * dx).sum(axis=-1)
    syy = (dy * dy).sum(axis=-1)
    sxy = (dx * dy).sum(axis=-1)
    # A constant series (up to rounding) has no correlation: NaN, like np.corrcoef.
    eps = 64.0 * np.finfo(np.float64).eps
    tiny_x = sxx <= n * (eps * np.abs(x0).max(axis=-1, initial=0.0)) ** 2
    tiny_y = syy <= n * (eps * np.abs(y0).max(axis=-1, initial=0.0)) ** 2
    bad = (n < min_pairs) | tiny_x | tiny_y
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    try:
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise AnalysisTypeError("series must be numeric arrays") from None
    if x.shape != y.shape or x.ndim < 1:
        raise AnalysisValueError(f"cannot correlate series of shapes {x.shape} and {y.shape}")
    return x, y


def _min_pairs(min_pairs: int) -> int:
    return _int_arg(min_pairs, "min_pairs", 2, "pairs")


def pearson(a: ArrayLike, b: ArrayLike, min_pairs: int = 3) -> Any:
    """Zhang & Wu App. A eq. (4): Pearson correlation coefficient of two series.

    Correlates along axis 0 (time) over the saved checkpoints as they are (no interpolation);
    trailing axes are independent series, e.g. R_k on the train and test sets, shape (T, K) ->
    K coefficients. Pairs where either value is non-finite are dropped; the result is NaN with
    fewer than ``min_pairs`` pairs left (two points always correlate ±1) or when a series is
    constant. Returns a float for 1-D input.
    """
    x, y = _pair(a, b)
    r = _masked_pcc(np.moveaxis(x, 0, -1), np.moveaxis(y, 0, -1), _min_pairs(min_pairs))
    return float(r) if np.ndim(r) == 0 else r


def _dense_columns(e: NDArray[np.int64], v: NDArray[np.float64]
                   ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Each trailing series of ``v`` (axis 0 on epochs ``e``) interpolated onto every epoch
    from ``e[0]`` to ``e[-1]`` (NaN outside its own finite span), and the mask of epochs that
    are saved with a finite value."""
    span = int(e[-1] - e[0] + 1)
    flat = v.reshape(v.shape[0], -1)
    out = np.full((span, flat.shape[1]), np.nan)
    saved = np.zeros((span, flat.shape[1]), dtype=bool)
    for j in range(flat.shape[1]):
        dense = _dense(e, flat[:, j])
        if dense is None:
            continue
        grid, d = dense
        out[grid - e[0], j] = d
        saved[e[np.isfinite(flat[:, j])] - e[0], j] = True
    return out.reshape(span, *v.shape[1:]), saved.reshape(span, *v.shape[1:])


def short_time_pearson(
    epochs: ArrayLike, a: ArrayLike, b: ArrayLike, window: int = DEFAULT_PCC_WINDOW,
    min_pairs: int = 3,
) -> EpochSeries:
    """Zhang & Wu App. A eq. (5): short-time PCC p_l(t) over sliding windows of l epochs.

    Both series are interpolated linearly onto every epoch from the first to the last saved
    epoch (each series on its own finite points); p_l(t) is the PCC (eq. 4, means over the
    window) of epochs t, ..., t + l − 1 with ``window`` = l **epochs**, aligned at the
    window's **start** as in eq. (5). It is NaN where the window runs past the last epoch,
    and where the window holds fewer than ``min_pairs`` *saved* epochs with both values
    finite: a window spanned by interpolation alone would correlate two straight lines (±1)
    and say nothing, which happens late on log-spaced grids when the gaps exceed l.

    Axis 0 of ``a`` and ``b`` follows ``epochs``; trailing axes are independent series.
    Returns an :class:`EpochSeries` over every epoch of the span, values shaped like the
    inputs with axis 0 along those epochs.
    """
    x, y = _pair(a, b)
    e = _epochs(epochs, x.shape[0])
    l_ = _int_arg(window, "window (l)", 2)
    mp = _min_pairs(min_pairs)
    if e.size == 0:
        return EpochSeries(np.zeros(0, dtype=np.int64), np.full(x.shape, np.nan))
    dx, sx = _dense_columns(e, x)
    dy, sy = _dense_columns(e, y)
    grid = np.arange(e[0], e[-1] + 1, dtype=np.int64)
    out = np.full(dx.shape, np.nan)
    n = grid.size
    if n < l_:
        return EpochSeries(grid, out)
    xs = np.lib.stride_tricks.sliding_window_view(dx, l_, axis=0)  # (n-l+1, ..., l)
    ys = np.lib.stride_tricks.sliding_window_view(dy, l_, axis=0)
    r = _masked_pcc(xs, ys, mp)
    both = (sx & sy).astype(np.int64)
    csum = np.concatenate((np.zeros((1, *both.shape[1:]), dtype=np.int64),
                           np.cumsum(both, axis=0)))
    saved_in_window = csum[l_:] - csum[: n - l_ + 1]
    out[: n - l_ + 1] = np.where(saved_in_window >= mp, r, np.nan)
    return EpochSeries(grid, out)


class LinearFit(NamedTuple):
    """Result of :func:`linear_fit`: unpacks as ``slope, intercept, r``."""

    slope: float
    intercept: float
    r: float


def linear_fit(
    x: ArrayLike | Sequence[float | None], y: ArrayLike | Sequence[float | None]
) -> LinearFit:
    """Least-squares line y ≈ slope·x + intercept and Pearson r (Zhang & Wu Fig. 6).

    Used for T_R,peak against T_E,peak (or T_ΔP,peak) across widths/runs. ``None`` and NaN
    entries (undefined events) drop their pair; with fewer than 2 pairs, or constant x, slope
    and intercept are NaN; r is NaN with fewer than 3 pairs or a constant series.
    """
    xa, ya = _pair(_floats(x), _floats(y))
    if xa.ndim != 1:
        raise AnalysisValueError(f"linear_fit takes 1-D series, got shape {xa.shape}")
    m = np.isfinite(xa) & np.isfinite(ya)
    xv, yv = xa[m], ya[m]
    r = pearson(xa, ya)
    if xv.size < 2:
        return LinearFit(np.nan, np.nan, r)
    dx = xv - xv.mean()
    sxx = float(dx @ dx)
    if sxx <= xv.size * (64.0 * np.finfo(np.float64).eps * np.abs(xv).max()) ** 2:
        return LinearFit(np.nan, np.nan, r)
    slope = float(dx @ (yv - yv.mean())) / sxx
    return LinearFit(slope, float(yv.mean() - slope * xv.mean()), r)


def _floats(values: ArrayLike | Sequence[float | None]) -> NDArray[np.float64]:
    """Array of floats with ``None`` as NaN."""
    obj = np.array(values, dtype=object)
    obj[np.frompyfunc(lambda v: v is None, 1, 1)(obj).astype(bool)] = np.nan
    try:
        return obj.astype(np.float64)
    except (TypeError, ValueError):
        raise AnalysisTypeError("linear_fit takes numbers or None") from None


# ----------------------------------------------------------------------------- model-wise


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


# ----------------------------------------------------------------------------- per width


def events_for_width(
    epochs: ArrayLike,
    test_error: ArrayLike | None,
    R: ArrayLike | None,
    noisy_error: ArrayLike | None = None,
    patience: int | None = DEFAULT_PATIENCE,
    window: int = DEFAULT_WINDOW,
    alphas: ArrayLike | None = None,
    k_min: int = 1,
    same_epochs: bool = True,
) -> dict[str, Any]:
    """Zhang & Wu §3.2 events of one width's curves, as epochs (``None`` when not found).

    Keys (:data:`EVENT_KEYS`): ``T_E_min``, ``T_E_peak`` (:func:`peak_epochs` of the test
    error), ``T_R_min``, ``T_R_peak`` (of R_t = :func:`combined_R` of R, shape (T, K)),
    ``T_dP_peak`` (:func:`decrease_rate_peak` of the noisy-subset error). ``patience`` (T) and
    ``window`` (ΔT) are in **epochs**. A missing curve gives ``None`` events.

    With ``same_epochs`` (default) the curves given are searched on the **same epochs**: those
    where every given curve that has any finite value is finite (e.g. when the spectrum was
    computed on fewer epochs than the metrics, the test error is restricted to the spectrum's
    epochs too), so T_R and T_E share one grid and one interpolation.
    """
    e = np.asarray(epochs)
    if e.ndim != 1:
        raise AnalysisValueError(f"epochs must be 1-D, got shape {e.shape}")
    n = e.shape[0]
    e = _epochs(e, n)
    patience = _check_patience(patience)
    _int_arg(window, "window (ΔT)", 0)
    out: dict[str, Any] = dict.fromkeys(EVENT_KEYS)

    def curve(values: ArrayLike, name: str) -> NDArray[np.float64]:
        c = _curve(values, name)
        if c.shape[0] != n:
            raise AnalysisValueError(f"{name} has {c.shape[0]} checkpoints, epochs has {n}")
        return c

    curves: dict[str, NDArray[np.float64]] = {}
    if test_error is not None:
        curves["E"] = curve(test_error, "test_error")
    if R is not None:
        r = np.asarray(R, dtype=np.float64)
        if r.ndim != 2:
            raise AnalysisValueError(f"R must be shaped (checkpoint, k), got {r.shape}")
        curves["R"] = curve(combined_R(r, alphas, k_min), "R")
    if noisy_error is not None:
        curves["P"] = curve(noisy_error, "noisy_error")
    if same_epochs:
        present = [c for c in curves.values() if np.isfinite(c).any()]
        if len(present) > 1:
            common = np.logical_and.reduce([np.isfinite(c) for c in present])
            curves = {k: np.where(common, c, np.nan) for k, c in curves.items()}
    for key, name in (("E", "E"), ("R", "R")):
        if key in curves:
            found = peak_epochs(e, curves[key], patience)
            if found is not None:
                out[f"T_{name}_min"], out[f"T_{name}_peak"] = found
    if "P" in curves:
        out["T_dP_peak"] = decrease_rate_peak(e, curves["P"], window)
    return out
