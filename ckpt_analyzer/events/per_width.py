"""All of one width's events at once, searched on the same epochs."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .common import (
    DEFAULT_PATIENCE,
    DEFAULT_WINDOW,
    EVENT_KEYS,
    AnalysisValueError,
    _check_patience,
    _curve,
    _epochs,
    _int_arg,
)
from .peaks import combined_R, decrease_rate_peak, peak_epochs
from .resolution import Unresolved, unresolved, unresolved_absence


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

    The events are the searches' results on any save grid; :func:`width_events` also says
    which of them the grid is too coarse to resolve.
    """
    e, curves, patience = _prepare(epochs, test_error, R, noisy_error, patience, window, alphas,
                                   k_min, same_epochs)
    return _search(e, curves, patience, window)


def _prepare(epochs: ArrayLike, test_error: ArrayLike | None, R: ArrayLike | None,
             noisy_error: ArrayLike | None, patience: int | None, window: int,
             alphas: ArrayLike | None, k_min: int, same_epochs: bool,
             ) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float64]], int | None]:
    """The checked epochs, the curves to search (``E``, ``R``, ``P``) and the patience."""
    e = np.asarray(epochs)
    if e.ndim != 1:
        raise AnalysisValueError(f"epochs must be 1-D, got shape {e.shape}")
    n = e.shape[0]
    e = _epochs(e, n)
    patience = _check_patience(patience)
    _int_arg(window, "window (ΔT)", 0)

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
    return e, curves, patience


def _search(e: NDArray[np.int64], curves: dict[str, NDArray[np.float64]], patience: int | None,
            window: int) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(EVENT_KEYS)
    for key, name in (("E", "E"), ("R", "R")):
        if key in curves:
            found = peak_epochs(e, curves[key], patience)
            if found is not None:
                out[f"T_{name}_min"], out[f"T_{name}_peak"] = found
    if "P" in curves:
        out["T_dP_peak"] = decrease_rate_peak(e, curves["P"], window)
    return out


def width_events(
    epochs: ArrayLike,
    test_error: ArrayLike | None,
    R: ArrayLike | None,
    noisy_error: ArrayLike | None = None,
    patience: int | None = DEFAULT_PATIENCE,
    window: int = DEFAULT_WINDOW,
    alphas: ArrayLike | None = None,
    k_min: int = 1,
    same_epochs: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Unresolved]]:
    """:func:`events_for_width` (same arguments) with the save grid's resolution.

    Returns ``(events, found, unresolved)``: ``found`` is :func:`events_for_width`'s result;
    ``events`` the same with each event the grid cannot resolve set to ``None``; and
    ``unresolved`` maps those events' keys to :class:`Unresolved`. An event is unresolved when
    the saved epochs near it (where its curve is finite, on the searched epochs) are more than
    ``patience`` epochs apart (:func:`~ckpt_analyzer.events.resolution.save_spacing`: the gaps
    either side of T_min / T_peak, the gaps overlapping the ΔP̄ window of T_ΔP,peak), and an
    event *not* found is unresolved when its curve's saves (after its minimum, for a peak)
    leave a gap wider than ``patience`` (:func:`~ckpt_analyzer.events.resolution.unresolved_absence`:
    the grid cannot rule it out). With ``patience=None`` nothing is unresolved.
    """
    e, curves, patience = _prepare(epochs, test_error, R, noisy_error, patience, window, alphas,
                                   k_min, same_epochs)
    found = _search(e, curves, patience, window)
    bad: dict[str, Unresolved] = {}
    for key in EVENT_KEYS:
        name = "P" if key == "T_dP_peak" else key[2]
        u = unresolved(e, curves[name], found[key], patience,
                       window if name == "P" else None) if name in curves else None
        if u is None and found[key] is None and name in curves:  # none found: can the grid say?
            start = found.get(f"T_{name}_min") if key.endswith("_peak") and name != "P" else None
            u = unresolved_absence(e, curves[name], patience, start)
        if u is not None:
            bad[key] = u
    events = {k: (None if k in bad else v) for k, v in found.items()}
    return events, found, bad
