"""Zhang & Wu's early stopping twice (T_min, T_peak) and the decrease rate ΔP̄, in epochs."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .common import (
    _TIE_RTOL,
    DEFAULT_PATIENCE,
    DEFAULT_WINDOW,
    AnalysisTypeError,
    AnalysisValueError,
    _check_patience,
    _curve,
    _dense,
    _epochs,
    _int_arg,
    _stop,
)


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

    One exception to "earliest", a property of the save grid rather than of P: when the
    window of that epoch lies inside one gap between two saved epochs a < b, P there is the
    straight line through them and ΔP̄ is the same at every epoch from a + ΔT + 1 to b − ΔT;
    the steepest drop is somewhere in (a, b), so the result is that plateau's centre
    ⌊(a + b + 1) / 2⌋ (earliest would place it ΔT + 1 epochs after a, earlier the sparser the
    grid). On an every-epoch grid this never applies (a gap of 1 holds no window but ΔT = 0's,
    whose plateau is one epoch).
    """
    s = decrease_rate(epochs, perturbed_error, window)
    ok = np.isfinite(s.values)
    if not ok.any():
        return None
    best = float(np.max(s.values[ok]))
    tol = _TIE_RTOL * max(abs(best), float(np.max(np.abs(s.values[ok]))))
    hit = np.flatnonzero(ok & (s.values >= best - tol))
    t = int(s.epochs[hit[0]])
    p = _curve(perturbed_error, "perturbed_error")
    knots = _epochs(epochs, p.shape[0])[np.isfinite(p)]
    j = int(np.searchsorted(knots, t - window - 1, side="right")) - 1
    if 0 <= j < knots.size - 1 and knots[j + 1] >= t + window:
        return int((knots[j] + knots[j + 1] + 1) // 2)
    return t
