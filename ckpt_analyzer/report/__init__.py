"""The double-descent report of a cube (``ckpt-analyze report``): events, correlations, storage.

:func:`build_report` reads a cube with h5py (no xarray needed) and applies
:mod:`ckpt_analyzer.events` to its curves:

* per width, the events of Zhang & Wu §3.2 as epochs: T_E,min and T_E,peak (test error of the
  ``metrics`` probe), T_R,min and T_R,peak (R_t = Σ_{k≥1} R_k,t of the ``spectrum`` probe on one
  subset, ``train`` by default), T_ΔP,peak (decrease rate of the noisy-subset error); the
  Pearson correlation (App. A eq. 4) of the train and test R_k curves (mean over k ≥ 1) and of
  the train and test errors, as in their Fig. 5;
* model-wise events (Gamba et al. §4): the interpolation threshold (smallest width whose final
  train error is 0), the final test error's peak over width, and each sharpness metric's peak
  per subset at volume 0 and at the largest volume. A model-wise peak is the interior local
  maximum (over the widths in order) of largest prominence, reported with its prominence and
  its distance to the interpolation threshold, or "none" when the curve has no interior
  maximum; accuracy gets its interior minimum instead
  (:func:`ckpt_analyzer.events.model_wise_peak`);
* with the ``hessian`` probe: per width T_H,min and T_H,peak (the same search on the top
  Hessian eigenvalue, k = 0, of the ``train`` subset, same patience), and model-wise the width
  of that eigenvalue's peak at each width's last checkpoint (the sharpness rule);
* the linear fit of T_R,peak against T_E,peak (and against T_ΔP,peak) across widths: slope,
  intercept, Pearson r and the number of widths used (Zhang & Wu Fig. 6).

Patience and windows are in **epochs** (paper defaults T = 30, ΔT = 5) on any save grid: the
curves are interpolated linearly in epoch between saved checkpoints (see
:mod:`ckpt_analyzer.events`); an event whose patience window runs past the last epoch is
not found (``None``), and a patience or window longer than the run adds a note saying so.
An event whose saves nearby are more than the patience apart is **unresolved**: ``None``, with
``per_width[i]["unresolved"][event] = {reason, epoch, spacing, patience}`` and a note. The PCCs
are over every epoch of the interpolated curves (:func:`ckpt_analyzer.events.epoch_pearson`).
The report records the spacing of the checkpoints it found (every epoch, uniform, log-spaced
or irregular).

Every part degrades gracefully: a probe, subset or metric missing from the cube leaves its
events ``None`` and adds a line to ``report["notes"]`` saying what is missing and how to
compute it.

:func:`write_report` stores the report in the cube under the group ``report/`` (attribute
``report``: the JSON text; small per-width datasets on a ``width`` dimension scale), by copying
the cube to ``<cube>.tmp``, writing there, fsyncing and ``os.replace``-ing it. The probe groups are
untouched and still open with ``xarray.open_dataset(cube, group=PROBE, engine="h5netcdf")``.
The ``report/`` group is **derived data and does not survive a later** ``ckpt-analyze run``
on the same cube: :meth:`ckpt_analyzer.cube.Cube.materialize` rewrites the file from its
journal (which holds probe cells only) once it sees that the file changed since it last wrote
it. Re-run ``ckpt-analyze report`` after new measurements.
"""

from __future__ import annotations

from ..cube.read import CubeInfo, ProbeData, load_probe, read_cube_info
from .build import REPORT_FORMAT, build_report, epoch_spacing
from .store import GROUP, read_report, write_report
from .text import format_report

__all__ = [
    "GROUP",
    "REPORT_FORMAT",
    "CubeInfo",
    "ProbeData",
    "build_report",
    "epoch_spacing",
    "format_report",
    "load_probe",
    "read_cube_info",
    "read_report",
    "write_report",
]
