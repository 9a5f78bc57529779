"""ckpt_analyzer.events: peak search with patience, decrease rate, PCCs, model-wise events.

Synthetic curves with known answers plus slow explicit-loop references.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.typing import ArrayLike

from ckpt_analyzer import events as A
from ckpt_analyzer.config import ConfigError
from ckpt_analyzer.errors import CkptError

# ----------------------------------------------------------------------------- references


def ref_dense(epochs: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every epoch from the first to the last finite saved one, linear in between (loop)."""
    pts = [(int(e), float(x)) for e, x in zip(epochs, v, strict=True) if math.isfinite(x)]
    grid = np.arange(pts[0][0], pts[-1][0] + 1)
    out = []
    for t in grid:
        for (e0, x0), (e1, x1) in zip(pts, [*pts[1:], pts[-1]], strict=True):
            if e0 <= t <= e1:
                out.append(x0 if e1 == e0 else x0 + (x1 - x0) * (t - e0) / (e1 - e0))
                break
    return grid, np.array(out)


def ref_peak_epochs(epochs: np.ndarray, values: np.ndarray, patience: int | None
                    ) -> tuple[int | None, int | None] | None:
    """Early stopping twice on the every-epoch curve, written out as a loop (Zhang & Wu
    §3.2, patience in epochs): a search whose patience window is cut by the end is None."""
    if not np.isfinite(values).any():
        return None
    grid, d = ref_dense(epochs, values)

    def search(start: int, better) -> int | None:  # type: ignore[no-untyped-def]
        best, wait = start, 0
        for i in range(start + 1, len(d)):
            if better(d[i], d[best]):
                best, wait = i, 0
            else:
                wait += 1
                if patience is not None and wait >= patience:
                    return best
        return best if patience is None or wait >= patience else None

    i_min = search(0, lambda a, b: a < b)
    if i_min is None:
        return None, None
    i_peak = search(i_min, lambda a, b: a > b)
    return int(grid[i_min]), None if i_peak is None else int(grid[i_peak])


def ref_peak(values: list[float], patience: int | None
             ) -> tuple[int | None, int | None] | None:
    """Positions, one checkpoint per epoch."""
    return ref_peak_epochs(np.arange(len(values)), np.asarray(values, float), patience)


def ref_decrease_rate(p: list[float], dt: int) -> list[float]:
    """ΔP̄ per epoch (one checkpoint per epoch, NaN bridged linearly) as a loop."""
    a = np.asarray(p, float)
    grid, d = ref_dense(np.arange(len(a)), a)
    out = [math.nan] * len(a)
    for j in range(len(d)):
        if j - dt >= 1 and j + dt <= len(d) - 1:
            drops = [-(d[j + i] - d[j + i - 1]) for i in range(-dt, dt + 1)]
            out[int(grid[j])] = sum(drops) / (2 * dt + 1)
    return out


def ref_pcc(x: np.ndarray, y: np.ndarray, min_pairs: int = 3) -> float:
    m = np.isfinite(x) & np.isfinite(y)
    if m.sum() < min_pairs or np.ptp(x[m]) == 0 or np.ptp(y[m]) == 0:
        return math.nan
    return float(np.corrcoef(x[m], y[m])[0, 1])


def ref_short_time(x: np.ndarray, y: np.ndarray, l_: int) -> np.ndarray:
    """Every-epoch series, NaN bridged linearly; a window needs 3 saved pairs."""
    ep = np.arange(len(x))
    gx, dx = ref_dense(ep, x)
    gy, dy = ref_dense(ep, y)
    fx = np.full(len(x), np.nan)
    fy = np.full(len(y), np.nan)
    fx[gx] = dx
    fy[gy] = dy
    saved = np.isfinite(x) & np.isfinite(y)
    out = np.full(len(x), np.nan)
    for t in range(len(x) - l_ + 1):
        if saved[t : t + l_].sum() >= 3:
            out[t] = ref_pcc(fx[t : t + l_], fy[t : t + l_])
    return out


def ref_prominence(x: np.ndarray, i: int) -> float:
    """scipy.signal.peak_prominences' definition, written out."""
    lo = i
    left_min = x[i]
    while lo > 0 and x[lo - 1] <= x[i]:
        lo -= 1
        left_min = min(left_min, x[lo])
    hi = i
    right_min = x[i]
    while hi < len(x) - 1 and x[hi + 1] <= x[i]:
        hi += 1
        right_min = min(right_min, x[hi])
    return float(x[i] - max(left_min, right_min))


def u_then_bump() -> np.ndarray:
    """Down 1 -> 0.2 (index 15), up to 0.6 (index 30), second descent to 0.1 (index 59)."""
    return np.concatenate(
        [np.linspace(1.0, 0.2, 16), np.linspace(0.2, 0.6, 16)[1:], np.linspace(0.6, 0.1, 30)[1:]]
    )


# ----------------------------------------------------------------------------- peak search


def test_u_then_bump_min_and_peak() -> None:
    v = u_then_bump()
    assert v.shape == (60,) and np.argmin(v[:30]) == 15 and np.argmax(v[15:]) + 15 == 30
    assert A.peak_with_patience(v, 10) == (15, 30)
    assert A.peak_with_patience(v, 10) == ref_peak(list(v), 10)
    # Without patience the search runs to the global minimum (the end): no peak after it.
    assert A.peak_with_patience(v, None) == (59, 59)


@pytest.mark.parametrize("patience", [3, 5, 8])
def test_noise_shorter_than_patience_does_not_stop(patience: int) -> None:
    def curve(plateau: int) -> np.ndarray:
        # 10..7 (min 7 at index 3), `plateau` non-improving points, then 6..3, then a rise.
        return np.array(
            [10, 9, 8, 7] + [8] * plateau + [6, 5, 4, 3] + [4, 5, 6, 5, 4, 4, 4, 4, 4, 4, 4, 4],
            dtype=float,
        )

    short = curve(patience - 1)
    t_min, t_peak = A.peak_with_patience(short, patience)  # type: ignore[misc]
    assert t_min == 3 + (patience - 1) + 4 and short[t_min] == 3
    assert short[t_peak] == 6 and t_peak == t_min + 3
    long = curve(patience)
    t_min, t_peak = A.peak_with_patience(long, patience)  # type: ignore[misc]
    assert t_min == 3
    assert long[t_peak] == 8 and t_peak == 4  # the first plateau point, earliest tie


def test_monotone_and_constant_curves() -> None:
    down = np.linspace(1, 0, 25)
    up = np.linspace(0, 1, 25)
    # Still falling at the end: the minimum is not confirmed within the run -> not found
    # (the old rule reported the last checkpoint).
    assert A.peak_with_patience(down, 5) == (None, None)
    assert A.peak_with_patience(up, 5) == (0, None)  # still rising at the end: no T_peak
    assert A.peak_with_patience(np.full(25, 0.3), 5) == (0, 0)  # confirmed: no rise
    assert A.peak_with_patience([0.7], 5) == (None, None)
    # A falling curve that flattens for >= T epochs before the end is found.
    flat_end = np.r_[np.linspace(1, 0, 20), np.zeros(5)]
    assert A.peak_with_patience(flat_end, 5) == (19, 19)
    assert A.peak_with_patience(flat_end, 6) == (None, None)


def test_ties_go_to_earliest() -> None:
    assert A.peak_with_patience([3, 1, 1, 2, 2, 1], 2) == (1, 3)
    assert A.peak_with_patience([3, 1, 1, 2, 2, 1], 10) == (None, None)  # run too short


def test_nan_entries_are_bridged_like_unsaved_epochs() -> None:
    v = u_then_bump()
    w = v.copy()
    w[[2, 9, 22, 40]] = np.nan
    assert A.peak_with_patience(w, 10) == (15, 30)
    # A long NaN run is an unsaved stretch: interpolated 4 -> 3, every epoch improves.
    x = np.array([5, 4, 4] + [np.nan] * 20 + [3, 4, 5, 4, 4, 4], dtype=float)
    assert A.peak_with_patience(x, 3) == (23, 25)
    # ... and it is the same as leaving those epochs out of the save grid.
    keep = np.isfinite(x)
    assert A.peak_epochs(np.arange(x.size)[keep], x[keep], 3) == (23, 25)
    # NaN at the true minimum: the minimum moves to the best finite checkpoint.
    y = u_then_bump()
    y[15] = np.nan
    assert y[16] < y[14]  # the rise (0.4/15 per step) is gentler than the fall (0.8/15)
    assert A.peak_with_patience(y, 10) == (16, 30)
    assert A.peak_with_patience([np.nan, np.inf, -np.inf], 3) is None
    assert A.peak_with_patience([], 3) is None


def test_peak_matches_loop_reference_on_random_curves() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        v = rng.integers(0, 6, n).astype(float)  # few levels: many ties
        v[rng.random(n) < 0.2] = np.nan
        patience = None if rng.random() < 0.1 else int(rng.integers(1, 8))
        assert A.peak_with_patience(v, patience) == ref_peak(list(v), patience), (v, patience)


def test_peak_epochs_matches_loop_reference_on_irregular_grids() -> None:
    rng = np.random.default_rng(10)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        epochs = np.cumsum(rng.integers(1, 12, n)) - 1
        v = rng.integers(0, 6, n).astype(float)
        v[rng.random(n) < 0.15] = np.nan
        patience = None if rng.random() < 0.1 else int(rng.integers(1, 30))
        got = A.peak_epochs(epochs, v, patience)
        assert got == ref_peak_epochs(epochs, v, patience), (epochs, v, patience)
        if got is not None:  # events land on saved epochs with a finite value
            for t in got:
                assert t is None or (t in epochs and np.isfinite(v[epochs == t]).all())


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_patience(bad: object) -> None:
    with pytest.raises(ConfigError, match="patience"):
        A.peak_with_patience([1.0, 2.0], bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError if isinstance(bad, int) and not isinstance(bad, bool)
                       else TypeError, match="patience"):
        A.peak_epochs([0, 1], [1.0, 2.0], bad)  # type: ignore[arg-type]
    with pytest.raises(CkptError):
        A.peak_with_patience(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError):
        A.peak_with_patience(np.zeros((3, 2)), 3)


def test_peak_epochs_log_spaced() -> None:
    v = u_then_bump()
    epochs = np.unique(np.round(np.logspace(0, 3, 80)).astype(int))[: v.size]
    assert epochs.size == v.size
    assert A.peak_epochs(epochs, v, 10) == (int(epochs[15]), int(epochs[30]))
    assert A.peak_epochs(epochs, np.full(v.size, np.nan), 10) is None
    with pytest.raises(CkptError, match="increasing"):
        A.peak_epochs(epochs[::-1], v, 10)
    with pytest.raises(CkptError, match="checkpoints"):
        A.peak_epochs(epochs[:-1], v, 10)
    with pytest.raises(ValueError, match="whole numbers"):
        A.peak_epochs(epochs + 0.5, v, 10)
    with pytest.raises(TypeError, match="integers"):
        A.peak_epochs(epochs.astype(str), v, 10)


def test_defaults_are_the_papers_in_epochs() -> None:
    assert (A.DEFAULT_PATIENCE, A.DEFAULT_WINDOW, A.DEFAULT_PCC_WINDOW) == (30, 5, 100)


def turning_curve(t: np.ndarray) -> np.ndarray:
    """Test error over epochs 0..1000: down to 0.3 at 40, up to 0.6 at 160, down to 0.1."""
    return np.interp(t, [0, 40, 160, 1000], [0.9, 0.3, 0.6, 0.1])


#: A log-like save grid that contains the turning points 40 and 160 (gaps up to 400 epochs).
SPARSE = np.array([0, 1, 2, 3, 5, 8, 13, 20, 30, 40, 50, 64, 80, 100, 128, 160, 200, 260,
                   350, 500, 700, 1000])


def test_patience_in_epochs_same_events_on_every_epoch_and_log_grid() -> None:
    dense = np.arange(1001)
    want = (40, 160)
    assert A.peak_epochs(dense, turning_curve(dense)) == want
    # Gaps of 32..300 epochs exceed T = 30, yet the search does not stop early: patience
    # counts epochs, and the curve between saved epochs is the straight line through them.
    assert A.peak_epochs(SPARSE, turning_curve(SPARSE)) == want
    assert A.peak_epochs(SPARSE, turning_curve(SPARSE), 10) == want
    i_min, i_peak = A.peak_with_patience(turning_curve(SPARSE), epochs=SPARSE)  # type: ignore[misc]
    assert (SPARSE[i_min], SPARSE[i_peak]) == want
    # The same events from events_for_width, R_t included, on both grids.
    for grid in (dense, SPARSE):
        r = np.stack([np.zeros(grid.size), turning_curve(grid)], axis=1)
        noisy = np.interp(grid, [0, 100, 160, 1000], [0.9, 0.85, 0.1, 0.0])
        ev = A.events_for_width(grid, turning_curve(grid), r, noisy)
        # P falls at one rate from 100 to 160: ΔP̄ ties on 106..155. Every epoch saved, the
        # earliest wins; on SPARSE the window of 106 lies inside the saved gap [100, 128],
        # whose straight line says only that the drop is somewhere in it: its centre, 114.
        t_dp = 106 if grid.size == dense.size else 114
        assert ev == {"T_E_min": 40, "T_E_peak": 160, "T_R_min": 40, "T_R_peak": 160,
                      "T_dP_peak": t_dp}, grid.size


def test_patience_longer_than_the_run_is_not_found() -> None:
    e = np.arange(21)
    assert A.peak_epochs(e, turning_curve(e * 8), 30) == (None, None)
    # Min confirmed, but the rise still runs when the curve ends: no T_peak, not the last epoch.
    e = np.arange(120)
    assert A.peak_epochs(e, turning_curve(e), 30) == (40, None)
    ev = A.events_for_width(e, turning_curve(e), None, turning_curve(e), window=100)
    assert ev["T_E_min"] == 40 and ev["T_E_peak"] is None and ev["T_dP_peak"] is None


def test_t_r_and_t_e_are_searched_on_the_same_epochs() -> None:
    dense = np.arange(1001)
    test = turning_curve(dense)
    r = np.full((dense.size, 2), np.nan)
    on = np.isin(dense, SPARSE)
    r[on, 1] = turning_curve(dense[on]) + 0.05 * np.sin(dense[on])  # R on SPARSE only
    # A dip of the test error at an epoch where R was not measured is not seen by the
    # T_E search either (both curves on SPARSE); with same_epochs=False it is.
    test[[70, 71]] = 0.2
    ev = A.events_for_width(dense, test, r)
    assert ev["T_E_min"] == 40 and ev["T_E_peak"] == 160
    ev = A.events_for_width(dense, test, r, same_epochs=False)
    assert ev["T_E_min"] == 70  # the earliest of the tie


# ----------------------------------------------------------------------------- R_t


def test_combined_R_against_loop() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(7, 5))
    alphas = rng.random(5)
    got = A.combined_R(r, alphas, k_min=2)
    want = [sum(alphas[k] * r[t, k] for k in range(2, 5)) for t in range(7)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(A.combined_R(r), r[:, 1:].sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(A.combined_R(r, k_min=0), r.sum(axis=1), rtol=1e-12)
    r[3, 4] = np.nan
    out = A.combined_R(r)
    assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()
    # R_0 is not summed by default: changing it changes nothing.
    r2 = r.copy()
    r2[:, 0] = 100.0
    np.testing.assert_array_equal(A.combined_R(r2), A.combined_R(r))
    assert A.combined_R(np.ones((2, 3, 4))).shape == (2, 3)
    with pytest.raises(ConfigError, match="alphas"):
        A.combined_R(r, alphas=np.ones(4))
    with pytest.raises(ConfigError, match="k_min"):
        A.combined_R(r, k_min=5)


# ----------------------------------------------------------------------------- ΔP


def test_decrease_rate_against_loop() -> None:
    rng = np.random.default_rng(2)
    for dt in (0, 1, 3):
        p = np.cumsum(rng.normal(size=30))
        p[[4, 5, 17]] = np.nan
        np.testing.assert_allclose(
            dr(p, dt), ref_decrease_rate(list(p), dt), rtol=1e-9, atol=1e-14, equal_nan=True
        )


def dr(p: ArrayLike, dt: int) -> np.ndarray:
    """ΔP̄ on one checkpoint per epoch."""
    a = np.asarray(p, float)
    s = A.decrease_rate(np.arange(a.size), a, dt)
    assert s.epochs.tolist() == list(range(a.size))
    return s.values


def drp(p: ArrayLike, dt: int) -> int | None:
    return A.decrease_rate_peak(np.arange(len(p)), p, dt)  # type: ignore[arg-type]


def test_decrease_rate_full_windows_only() -> None:
    p = np.linspace(1, 0, 20)
    s = dr(p, 2)
    assert np.isnan(s[:3]).all() and np.isnan(s[-2:]).all() and np.isfinite(s[3:-2]).all()
    np.testing.assert_allclose(s[3:-2], 1 / 19, rtol=1e-12)
    assert drp(np.linspace(1, 0, 5), 2) is None  # 4 drops < 2ΔT+1 = 5
    assert drp(np.linspace(1, 0, 6), 2) == 3
    assert drp([np.nan] * 10, 1) is None
    with pytest.raises(ConfigError, match="window"):
        A.decrease_rate(np.arange(20), p, -1)
    with pytest.raises(TypeError, match="window"):
        A.decrease_rate(np.arange(20), p, 2.0)  # type: ignore[arg-type]


def test_decrease_rate_window_counts_epochs_on_a_sparse_grid() -> None:
    # P falls linearly by 0.8 between epochs 100 and 200, flat elsewhere; saved every 50.
    e = np.arange(0, 401, 50)
    p = np.interp(e, [0, 100, 200, 400], [0.9, 0.9, 0.1, 0.1])
    s = A.decrease_rate(e, p, 5)
    assert s.epochs[0] == 0 and s.epochs[-1] == 400 and s.values.shape == (401,)
    np.testing.assert_allclose(s.values[106:196], 0.008, rtol=1e-9)  # 0.8 / 100 per epoch
    # ΔP̄ ties on 106..195; on this grid the window of 106 lies inside the saved gap
    # [100, 150], whose straight line places the drop only somewhere in it: its centre.
    assert A.decrease_rate_peak(e, p, 5) == 125
    dense = np.arange(401)
    assert A.decrease_rate_peak(dense, np.interp(dense, e, p), 5) == 106
    assert A.decrease_rate_peak(e, p, 200) is None  # 2ΔT + 1 = 401 epochs > the 400 run


@pytest.mark.parametrize("dt", [0, 2, 5])
@pytest.mark.parametrize("scale", [2.0, 6.0])
def test_decrease_rate_peak_at_steepest_drop_of_sigmoid(dt: int, scale: float) -> None:
    t = np.arange(90, dtype=float)
    centre = 40.5  # steepest between checkpoints 40 and 41: the drop ending at 41
    p = 0.1 + 0.8 / (1 + np.exp((t - centre) / scale))
    assert drp(p, dt) == 41
    np.testing.assert_allclose(
        dr(p, dt), ref_decrease_rate(list(p), dt), rtol=1e-9, atol=1e-14, equal_nan=True
    )


def test_smoothing_removes_a_one_checkpoint_spike() -> None:
    t = np.arange(90, dtype=float)
    p = 0.1 + 0.8 / (1 + np.exp((t - 40.5) / 2.0))
    p[10] += 0.3  # one bad checkpoint: a rise then a large drop ending at 11
    assert drp(p, 0) == 11
    # The spike's +0.3 drop is spread over 2ΔT + 1 checkpoints (0.3/5 = 0.06) and falls below
    # the smoothed sigmoid drop (~0.09 at scale 2).
    assert drp(p, 2) == 41
    assert drp(p, 3) == 41


# ----------------------------------------------------------------------------- PCC


def test_pearson_known_values_and_reference() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    assert A.pearson(x, x) == pytest.approx(1.0, abs=1e-12)
    assert A.pearson(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert A.pearson(x, 3 * x + 7) == pytest.approx(1.0, abs=1e-12)
    assert A.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    y[[1, 7]] = np.nan
    x[30] = np.nan
    assert A.pearson(x, y) == pytest.approx(ref_pcc(x, y), abs=1e-12)
    # Constant series, including one whose mean is inexact (0.3 * 10 / 10 != 0.3 in floats).
    assert math.isnan(A.pearson(np.full(10, 0.3), np.arange(10.0)))
    assert math.isnan(A.pearson(np.arange(10.0), np.full(10, 0.1)))
    st = stp(np.r_[np.full(10, 0.3), np.arange(10.0)], np.arange(20.0) ** 2, 5)
    assert np.isnan(st[:6]).all() and np.isfinite(st[6:16]).all()
    assert math.isnan(A.pearson([1.0, 2.0], [3.0, 5.0]))  # fewer than 3 pairs
    assert A.pearson([1.0, 2.0], [3.0, 5.0], min_pairs=2) == pytest.approx(1.0)
    # (T, K): one coefficient per column.
    a = rng.normal(size=(40, 3))
    b = a * [1.0, -2.0, 0.0] + rng.normal(size=(40, 3)) * [0.0, 0.0, 1.0]
    got = A.pearson(a, b)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, [ref_pcc(a[:, k], b[:, k]) for k in range(3)], atol=1e-12)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(-1.0)
    with pytest.raises(CkptError, match="shapes"):
        A.pearson(np.zeros(3), np.zeros(4))


def stp(a: ArrayLike, b: ArrayLike, l_: int) -> np.ndarray:
    """Short-time PCC on one checkpoint per epoch."""
    n = np.asarray(a).shape[0]
    s = A.short_time_pearson(np.arange(n), a, b, l_)
    assert s.epochs.tolist() == list(range(n))
    return s.values


def test_short_time_pearson_identity_negation_reference() -> None:
    rng = np.random.default_rng(4)
    x = np.cumsum(rng.normal(size=60))
    l_ = 9
    same = stp(x, x, l_)
    neg = stp(x, -x, l_)
    assert same.shape == x.shape
    np.testing.assert_allclose(same[: 60 - l_ + 1], 1.0, atol=1e-12)
    np.testing.assert_allclose(neg[: 60 - l_ + 1], -1.0, atol=1e-12)
    assert np.isnan(same[60 - l_ + 1 :]).all()
    y = x + rng.normal(size=60) * 2
    y[[3, 20, 21, 22, 40]] = np.nan
    np.testing.assert_allclose(
        stp(x, y, l_), ref_short_time(x, y, l_), atol=1e-12, equal_nan=True
    )
    # Trailing axes are independent series.
    xy = np.stack([x, -x], axis=1)
    got = stp(xy, np.stack([y, y], axis=1), l_)
    np.testing.assert_allclose(got[:, 1], -got[:, 0], atol=1e-12, equal_nan=True)
    assert np.isnan(stp(x[:5], x[:5], 9)).all()


def test_short_time_pearson_is_local() -> None:
    """b = |t - 20| against a = t: -1 in windows before 20, +1 in windows after."""
    t = np.arange(50.0)
    b = np.abs(t - 20)
    st = stp(t, b, 6)
    np.testing.assert_allclose(st[: 20 - 6 + 1], -1.0, atol=1e-12)  # windows ending <= 20
    np.testing.assert_allclose(st[20:45], 1.0, atol=1e-12)  # windows starting >= 20
    assert abs(A.pearson(t, b)) < 0.9


def test_short_time_pearson_window_in_epochs_on_a_sparse_grid() -> None:
    """b = |t - 200| against t, saved every 10 epochs: windows of l = 60 epochs."""
    e = np.arange(0, 501, 10)
    st = A.short_time_pearson(e, e.astype(float), np.abs(e - 200.0), 60)
    assert st.epochs.tolist() == list(range(501)) and st.values.shape == (501,)
    np.testing.assert_allclose(st.values[: 200 - 60 + 1], -1.0, atol=1e-12)
    np.testing.assert_allclose(st.values[200 : 501 - 60 + 1], 1.0, atol=1e-12)
    assert np.isnan(st.values[501 - 60 + 1 :]).all()
    # A window holding fewer than 3 saved epochs (interpolation only) is NaN, not ±1.
    e = np.array([0, 1, 2, 3, 4, 100, 300])
    st = A.short_time_pearson(e, e.astype(float), e ** 0.5, 50)
    assert np.isfinite(st.values[0]) and np.isnan(st.values[5:]).all()
    with pytest.raises(ConfigError, match="window"):
        A.short_time_pearson(e, e, e, 1)


# ----------------------------------------------------------------------------- linear fit


def test_linear_fit() -> None:
    x = np.array([3.0, 10.0, 11.0, 40.0, 100.0])
    fit = A.linear_fit(x, 2.5 * x - 4.0)
    assert fit.slope == pytest.approx(2.5) and fit.intercept == pytest.approx(-4.0)
    assert fit.r == pytest.approx(1.0)
    slope, intercept, r = A.linear_fit([1, 2, None, 4, 5], [-1, -3, 99, -7, -9])
    assert (slope, intercept, r) == pytest.approx((-2.0, 1.0, -1.0))
    rng = np.random.default_rng(5)
    xs = rng.normal(size=30)
    ys = 0.7 * xs + rng.normal(size=30)
    fit = A.linear_fit(xs, ys)
    np.testing.assert_allclose([fit.slope, fit.intercept], np.polyfit(xs, ys, 1), rtol=1e-10)
    assert fit.r == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert all(math.isnan(v) for v in A.linear_fit([2, 2, 2], [1, 2, 3]))
    assert all(math.isnan(v) for v in A.linear_fit([1, None], [1, 2]))


# ----------------------------------------------------------------------------- model-wise


def test_interpolation_threshold() -> None:
    widths = [1, 2, 4, 8, 16]
    assert A.interpolation_threshold(widths, [0.4, 0.1, 0.0, 0.0, 0.0]) == 4
    assert A.interpolation_threshold(widths, [0.4, 0.1, 0.01, 0.0, 0.0], tol=0.01) == 4
    assert A.interpolation_threshold(widths, [0.4, 0.1, 0.02, 0.01, 0.03]) is None
    assert A.interpolation_threshold([16, 4, 8], [0.0, 0.0, 0.2]) == 4  # unsorted widths
    assert A.interpolation_threshold(widths, [0.4, np.nan, 0.0, 0.0, 0.0]) == 4
    with pytest.raises(CkptError, match="widths"):
        A.interpolation_threshold([1, 2], [0.0])
    with pytest.raises(ConfigError, match="tol"):
        A.interpolation_threshold([1], [0.0], tol=-1)


def test_model_wise_peak_is_the_interior_maximum_not_the_global_one() -> None:
    widths = [1, 2, 3, 4, 8, 16, 32]
    errs = [0.66, 0.52, 0.41, 0.44, 0.49, 0.45, 0.38]
    p = A.model_wise_peak(widths, errs)
    assert p.width == 8 and p.value == 0.49 and p.kind == "max"
    assert p.prominence == pytest.approx(0.08)
    assert A.peak_width(widths, errs) == 8  # the old rule gave width 1 (global maximum)
    # Unsorted input: peaks are found over the widths in order.
    order = [6, 0, 3, 5, 1, 4, 2]
    assert A.peak_width([widths[i] for i in order], [errs[i] for i in order]) == 8


def test_model_wise_peak_none_ties_plateaus_nan() -> None:
    widths = [1, 2, 4, 8, 16]
    assert A.model_wise_peak(widths, [0.5, 0.4, 0.3, 0.2, 0.1]).width is None  # monotone
    assert A.model_wise_peak(widths, [0.1, 0.2, 0.3, 0.4, 0.5]).width is None
    assert A.model_wise_peak(widths, [0.3] * 5) == A.WidthPeak(None, None, None, "max")
    assert A.peak_width(widths[:2], [0.1, 0.5]) is None  # no interior with two widths
    # Two peaks: the more prominent wins, not the higher one.
    p = A.model_wise_peak(widths, [0.9, 0.2, 0.6, 0.5, 0.55])
    assert p.width == 4 and p.prominence == pytest.approx(0.1)
    p = A.model_wise_peak([1, 2, 4, 8, 16, 32], [0.0, 0.5, 0.0, 0.9, 0.2, 1.0])
    assert p.width == 8 and p.prominence == pytest.approx(0.7)  # 0.9 - max(0.0, 0.2)
    # Equal prominence: the smallest width; a flat top: its smallest width.
    assert A.peak_width(widths, [0.1, 0.5, 0.1, 0.5, 0.1]) == 2
    assert A.peak_width(widths, [0.1, 0.5, 0.5, 0.2, 0.1]) == 2
    # NaN widths are dropped: 2 and 8 missing leaves 0.3, 0.5, 0.2 over 1, 4, 16.
    assert A.peak_width(widths, [0.3, np.nan, 0.5, np.nan, 0.2]) == 4
    assert A.peak_width(widths, [np.nan] * 5) is None
    # Accuracy: interior minimum (the widest model is not a "peak").
    acc = [0.34, 0.48, 0.59, 0.56, 0.51, 0.55, 0.62]
    p = A.model_wise_peak([1, 2, 3, 4, 8, 16, 32], acc, kind="min")
    assert p.width == 8 and p.value == 0.51 and p.prominence == pytest.approx(0.08)
    with pytest.raises(ValueError, match="kind"):
        A.model_wise_peak(widths, [0.1] * 5, kind="top")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        A.peak_width([1, 1, 2], [0.1, 0.2, 0.1])
    with pytest.raises(CkptError, match="widths"):
        A.peak_width([1, 2], [0.1])


def test_prominence_matches_scipy_and_a_loop() -> None:
    from scipy.signal import find_peaks, peak_prominences

    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(3, 12))
        v = rng.integers(0, 5, n).astype(float) + rng.random() * 0.1
        p = A.model_wise_peak(np.arange(1, n + 1) * 2, v)
        peaks, props = find_peaks(v, plateau_size=(None, None))
        if peaks.size == 0:
            assert p.width is None
            continue
        prom = peak_prominences(v, peaks)[0]
        loop = [ref_prominence(v, int(i)) for i in props["left_edges"]]
        np.testing.assert_allclose(prom, loop, atol=1e-12)
        best = int(np.argmax(prom))
        assert p.prominence == pytest.approx(prom.max())
        assert p.width == 2 * (int(props["left_edges"][best]) + 1)
        q = A.model_wise_peak(np.arange(1, n + 1), -v, kind="min")
        assert (q.width, q.prominence) == (p.width / 2, pytest.approx(p.prominence))


def test_threshold_distance() -> None:
    widths = [1, 2, 3, 4, 8, 16, 32]
    d = A.threshold_distance(widths, 8, 32)
    assert d == A.ThresholdDistance(0.25, -24, -2)
    assert A.threshold_distance(widths, 8, 8) == A.ThresholdDistance(1.0, 0, 0)
    assert A.threshold_distance([32, 1, 4], 4, 1) == A.ThresholdDistance(4.0, 3, 1)
    assert A.threshold_distance(widths, None, 8) is None
    assert A.threshold_distance(widths, 8, None) is None
    assert A.threshold_distance(widths, 5, 8) is None


def test_last_finite() -> None:
    v = np.array([[1.0, 5.0, np.nan], [2.0, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(A.last_finite(v), [2.0, 5.0, np.nan])
    assert A.last_finite([1.0, 3.0, np.nan]) == 3.0


# ----------------------------------------------------------------------------- events


def test_events_for_width() -> None:
    v = u_then_bump()  # 60 checkpoints
    epochs = np.unique(np.round(np.logspace(0, 3, 80)).astype(int))[: v.size]
    n = v.size
    # R_k: k = 0 column is junk (not summed), k >= 1 sum to a curve with min 20, peak 35.
    r_t = np.roll(v, 5)
    r_t[:5] = 1.0 + np.arange(5, 0, -1)
    r = np.stack([np.full(n, 9.0), 0.25 * r_t, 0.75 * r_t], axis=1)
    noisy = 0.1 + 0.8 / (1 + np.exp((np.arange(n) - 40.5) / 3))
    ev = A.events_for_width(epochs, v, r, noisy, patience=10, window=2)
    assert tuple(ev) == A.EVENT_KEYS
    # ΔP̄ is per epoch on the interpolated curve: the steepest 5-epoch fall, as a loop.
    grid, d = ref_dense(epochs, noisy)
    rate = [(d[j - 3] - d[j + 2]) / 5 for j in range(3, len(d) - 2)]
    t_dp = int(grid[3 + int(np.argmax(rate))])
    for a, b in itertools.pairwise(epochs):  # its window inside one saved gap:
        if a <= t_dp - 3 and t_dp + 2 <= b:  # the centre of that gap
            t_dp = (int(a) + int(b) + 1) // 2
            break
    assert ev == {
        "T_E_min": epochs[15],
        "T_E_peak": epochs[30],
        "T_R_min": epochs[20],
        "T_R_peak": epochs[35],
        "T_dP_peak": t_dp,
    }
    assert all(type(val) is int for val in ev.values())
    ev = A.events_for_width(epochs, v, None)
    assert ev["T_E_min"] == epochs[15] and ev["T_R_peak"] is None and ev["T_dP_peak"] is None
    nan = np.full(n, np.nan)
    assert set(A.events_for_width(epochs, nan, np.full((n, 3), np.nan), nan).values()) == {None}
    with pytest.raises(CkptError, match="noisy_error"):
        A.events_for_width(epochs, v, None, noisy[:-1])
    with pytest.raises(CkptError, match="R"):
        A.events_for_width(epochs, v, r[:, 0])
    with pytest.raises(ConfigError, match="patience"):
        A.events_for_width(epochs, None, None, patience=0)
