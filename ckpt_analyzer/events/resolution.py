"""Whether a save grid resolves an event: the spacing of saved epochs near it vs the patience.

An event is searched on the curve interpolated linearly in epoch (module docstring of
:mod:`ckpt_analyzer.events`). Between two saved epochs that interpolation is a straight line, so
when the saves near an event are further apart than the patience T the search cannot tell an
improvement within T epochs from a straight line drawn through the gap, and the event's epoch
is only known to within that gap. Such an event is **unresolved**: reported without a number,
with the spacing, instead of a number that moves with the save grid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .common import _check_patience, _curve, _epochs, _int_arg


class Unresolved(NamedTuple):
    """An event the save grid is too coarse to resolve.

    ``epoch`` is where the search found it on the interpolated curve (not reported as the
    event), ``spacing`` the largest gap between consecutive saved epochs near it, ``patience``
    the T it exceeds (all in epochs, or steps)."""

    epoch: int
    spacing: int
    patience: int
    #: not found, but the grid cannot rule it out: ``epoch`` starts a gap wider than the patience
    absent: bool = False

    def reason(self, unit: str = "epoch") -> str:
        """``unresolved (saves 40 epochs apart near epoch 120; patience 30)``; for an event not
        found: ``unresolved (none found, but saves 40 epochs apart after epoch 120 cannot rule
        one out; patience 30)``."""
        if self.absent:
            return (f"unresolved (none found, but saves {self.spacing} {unit}s apart after "
                    f"{unit} {self.epoch} cannot rule one out; patience {self.patience})")
        return (f"unresolved (saves {self.spacing} {unit}s apart near {unit} {self.epoch}; "
                f"patience {self.patience})")


def _gap_near(knots: NDArray[np.int64], lo: int, hi: int) -> int:
    """The largest gap between consecutive ``knots`` that touches the epoch ``lo`` (when
    ``lo == hi``: the gaps on either side of it) or overlaps the open span (lo, hi); 0 if
    none (a single saved epoch)."""
    if knots.size < 2:
        return 0
    a, b = knots[:-1], knots[1:]
    near = (a <= lo) & (b >= lo) if lo == hi else (a < hi) & (b > lo)
    gaps = (b - a)[near]
    return int(gaps.max()) if gaps.size else 0


def save_spacing(epochs: ArrayLike, values: ArrayLike, t: int, window: int | None = None) -> int:
    """The spacing of the saved epochs near an event at epoch ``t``: the largest gap between
    consecutive epochs where ``values`` is finite, among the gaps on either side of ``t``
    (``window=None``: an event on a saved epoch, T_min or T_peak) or overlapping the
    decrease-rate window [t − ΔT − 1, t + ΔT] (``window`` = ΔT: T_ΔP,peak). 0 with fewer than
    two finite values."""
    v = _curve(values, "values")
    e = _epochs(epochs, v.shape[0])
    t = _int_arg(t, "t", -(2 ** 62))
    knots = e[np.isfinite(v)]
    if window is None:
        return _gap_near(knots, t, t)
    dt = _int_arg(window, "window (ΔT)", 0)
    return _gap_near(knots, t - dt - 1, t + dt)


def unresolved(epochs: ArrayLike, values: ArrayLike, t: int | None, patience: int | None,
               window: int | None = None) -> Unresolved | None:
    """:class:`Unresolved` if the saves near the event at epoch ``t`` of ``values`` are more
    than ``patience`` epochs apart (:func:`save_spacing`; ``window`` = ΔT for T_ΔP,peak),
    else ``None``. ``t=None`` (not found) and ``patience=None`` (whole-curve search, no
    time scale) are never unresolved."""
    patience = _check_patience(patience)
    if t is None or patience is None:
        return None
    gap = save_spacing(epochs, values, t, window)
    return Unresolved(int(t), gap, patience) if gap > patience else None


def unresolved_absence(epochs: ArrayLike, values: ArrayLike, patience: int | None,
                       after: int | None = None) -> Unresolved | None:
    """:class:`Unresolved` (``absent=True``) for an event that was *not* found when the saved
    epochs where ``values`` is finite (from ``after`` on: a peak is searched after its minimum)
    leave a gap wider than ``patience`` somewhere: in that gap a rise and fall within T epochs
    is a straight line to the search, so "none" would be a claim of the grid, not of the
    curve. ``epoch`` is where the widest such gap starts. ``None`` when every gap is within
    the patience (the absence is resolved) or ``patience=None``."""
    patience = _check_patience(patience)
    if patience is None:
        return None
    v = _curve(values, "values")
    e = _epochs(epochs, v.shape[0])
    knots = e[np.isfinite(v)]
    if after is not None:
        knots = knots[knots >= after]
    if knots.size < 2:
        return None
    gaps = np.diff(knots)
    i = int(np.argmax(gaps))
    return Unresolved(int(knots[i]), int(gaps[i]), patience, True) if gaps[i] > patience else None
