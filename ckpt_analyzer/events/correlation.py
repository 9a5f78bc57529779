"""Pearson correlation, short-time PCC over a window of epochs, and the least-squares fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .common import DEFAULT_PCC_WINDOW, AnalysisTypeError, AnalysisValueError, _dense, _epochs, _floats, _int_arg
from .peaks import EpochSeries


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

    Correlates along axis 0 over the values as they are (no interpolation): across widths or
    runs. For curves over training time use :func:`epoch_pearson`, which weighs every epoch
    alike whatever the save grid. Trailing axes are independent series, e.g. R_k on the train
    and test sets, shape (T, K) -> K coefficients. Pairs where either value is non-finite are
    dropped; the result is NaN with fewer than ``min_pairs`` pairs left (two points always
    correlate ±1) or when a series is constant. Returns a float for 1-D input.
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


def epoch_pearson(epochs: ArrayLike, a: ArrayLike, b: ArrayLike, min_pairs: int = 3) -> Any:
    """Zhang & Wu App. A eq. (4) over **epochs**: the PCC of two curves over training time,
    the same on any save grid.

    Both series are interpolated linearly onto every epoch from the first to the last saved
    epoch (each on its own finite points, NaN outside its finite span, as ΔP̄ and the
    short-time PCC are), and eq. (4) is taken over the epochs where both are defined. So
    every epoch weighs alike: on a log save grid the saved checkpoints crowd the first epochs,
    and eq. (4) over the checkpoints would measure mostly the start of training. On an
    every-epoch grid this is :func:`pearson`. NaN with fewer than ``min_pairs`` *saved* epochs
    where both are finite, or when a series is constant.

    Axis 0 of ``a`` and ``b`` follows ``epochs``; trailing axes are independent series (e.g.
    R_k on train and test, shape (T, K) -> K coefficients). Returns a float for 1-D input.
    """
    x, y = _pair(a, b)
    e = _epochs(epochs, x.shape[0])
    mp = _min_pairs(min_pairs)
    if e.size == 0:
        r = np.full(x.shape[1:], np.nan)
        return float(r) if r.ndim == 0 else r
    dx, sx = _dense_columns(e, x)
    dy, sy = _dense_columns(e, y)
    r = _masked_pcc(np.moveaxis(dx, 0, -1), np.moveaxis(dy, 0, -1), mp)
    saved = (sx & sy).sum(axis=0)
    r = np.where(saved >= mp, r, np.nan)
    return float(r) if np.ndim(r) == 0 else r


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
