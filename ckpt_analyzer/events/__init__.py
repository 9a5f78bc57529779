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
* **Correlations over time are over epochs** (:func:`epoch_pearson`, :func:`short_time_pearson`):
  eq. (4) on the interpolated curves, every epoch weighing alike, not over the saved
  checkpoints (which on a log grid crowd the first epochs). :func:`pearson` is eq. (4) on
  values as they are (across widths or runs).
* **Unresolved** (:mod:`~ckpt_analyzer.events.resolution`): an event whose saves nearby are
  more than the patience apart cannot be placed by the grid; :func:`width_events` reports it
  as ``None`` with an :class:`Unresolved` record (epoch found, spacing, patience). On a gap
  holding the whole ΔP̄ window, T_ΔP,peak is the gap's centre (:func:`decrease_rate_peak`).
* Non-finite entries (NaN: cell not computed; ±inf) are *absent*: they are skipped (the
  interpolation bridges them) and never become an event. A curve without any finite entry
  has no event (``None``).
* **Not found is** ``None``: an event whose patience window (T epochs after the candidate)
  runs past the curve's last finite saved epoch is not reported, rather than placed at the
  last epoch; so is a ΔP̄ whose window does not fit in the run.
* Ties go to the earliest epoch (the smallest width for model-wise events).
* Bad arguments raise :class:`AnalysisValueError` / :class:`AnalysisTypeError`, which are
  ``ValueError`` / ``TypeError`` and also :class:`~ckpt_analyzer.config.ConfigError` (the CLI
  prints them as one line, exit code 2)."""

from __future__ import annotations

from .common import (
    DEFAULT_PATIENCE,
    DEFAULT_PCC_WINDOW,
    DEFAULT_WINDOW,
    EVENT_KEYS,
    AnalysisTypeError,
    AnalysisValueError,
)
from .correlation import LinearFit, epoch_pearson, linear_fit, pearson, short_time_pearson
from .model_wise import (
    ThresholdDistance,
    WidthPeak,
    interpolation_threshold,
    last_finite,
    model_wise_peak,
    peak_width,
    threshold_distance,
)
from .peaks import EpochSeries, combined_R, decrease_rate, decrease_rate_peak, peak_epochs, peak_with_patience
from .per_width import events_for_width, width_events
from .resolution import Unresolved, save_spacing, unresolved, unresolved_absence

__all__ = ["DEFAULT_PATIENCE", "DEFAULT_PCC_WINDOW", "DEFAULT_WINDOW", "EVENT_KEYS",
    "AnalysisTypeError", "AnalysisValueError", "EpochSeries", "LinearFit", "ThresholdDistance",
    "Unresolved", "WidthPeak", "combined_R", "decrease_rate", "decrease_rate_peak", "epoch_pearson",
    "events_for_width",
    "interpolation_threshold", "last_finite", "linear_fit", "model_wise_peak", "peak_epochs",
    "peak_width", "peak_with_patience", "pearson", "save_spacing", "short_time_pearson",
    "threshold_distance", "unresolved", "unresolved_absence", "width_events"]
