"""The double-descent report of a cube (``ckpt-analyze report``): events, correlations, storage.

:func:`build_report` reads a cube with h5py (no xarray needed) and applies
:mod:`ckpt_analyzer.analysis` to its curves:

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
  (:func:`ckpt_analyzer.analysis.model_wise_peak`);
* the linear fit of T_R,peak against T_E,peak (and against T_ΔP,peak) across widths: slope,
  intercept, Pearson r and the number of widths used (Zhang & Wu Fig. 6).

Patience and windows are in **epochs** (paper defaults T = 30, ΔT = 5) on any save grid: the
curves are interpolated linearly in epoch between saved checkpoints (see
:mod:`ckpt_analyzer.analysis`); an event whose patience window runs past the last epoch is
not found (``None``), and a patience or window longer than the run adds a note saying so.
The report records the spacing of the checkpoints it found (every epoch, uniform, log-spaced
or irregular).

Every part degrades gracefully: a probe, subset or metric missing from the cube leaves its
events ``None`` and adds a line to ``report["notes"]`` saying what is missing and how to
compute it.

:func:`write_report` stores the report in the cube under the group ``analysis/`` (attribute
``report``: the JSON text; small per-width datasets on a ``width`` dimension scale), by copying
the cube to ``<cube>.tmp``, writing there, fsyncing and ``os.replace``-ing it. The probe groups are
untouched and still open with ``xarray.open_dataset(cube, group=PROBE, engine="h5netcdf")``.
The ``analysis/`` group is **derived data and does not survive a later** ``ckpt-analyze run``
on the same cube: :meth:`ckpt_analyzer.cube.Cube.materialize` rewrites the file from its
journal (which holds probe cells only) once it sees that the file changed since it last wrote
it. Re-run ``ckpt-analyze report`` after new measurements.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import analysis as an
from .errors import CkptError, UsageError, did_you_mean

if TYPE_CHECKING:
    import h5py

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

REPORT_FORMAT = "ckpt-analyzer.report/1"
#: Name of the cube group holding the stored report.
GROUP = "analysis"
SUBSETS = ("train", "clean", "noisy", "test")
SHARPNESS_METRICS = ("accuracy", "loss", "jacobian", "hessian")
#: Per-width values stored as datasets under ``analysis/`` (NaN where undefined).
#: Model-wise extremum per sharpness metric: accuracy dips where the others peak.
SHARPNESS_KIND = {"accuracy": "min", "loss": "max", "jacobian": "max", "hessian": "max"}
#: How model-wise peaks are found (stored in the report).
PEAK_RULE = ("interior local maximum over the widths in order (minimum for accuracy) of "
             "largest prominence (scipy.signal.peak_prominences); ends never count; flat "
             "tops and equal prominences go to the smallest width; none if the curve is "
             "monotone or flat")
WIDTH_FIELDS = (*an.EVENT_KEYS, "final_epoch", "final_train_error", "final_test_error",
                "pcc_R", "pcc_error")


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CubeInfo:
    """Root facts of a cube: where it came from and its coordinates."""

    path: Path
    source: str | None
    run: dict[str, Any] | None
    epochs: np.ndarray
    widths: np.ndarray
    probes: tuple[str, ...]

    @property
    def name(self) -> str:
        """The run's folder name (or the cube's file name when the source is unknown)."""
        return Path(self.source).name if self.source else self.path.name

    def describe(self) -> str:
        """``digits-run: mcnn on digits, 20% symmetric noise`` (what is known of it)."""
        run = self.run or {}
        parts = []
        ds = run.get("dataset")
        arch = run.get("arch")
        if arch or ds:
            dname = ds.get("name") if isinstance(ds, dict) else ds
            parts.append(" on ".join(str(p) for p in (arch, dname) if p))
        noise = run.get("label_noise")
        if isinstance(noise, dict) and noise.get("fraction"):
            parts.append(f"{float(noise['fraction']):.0%} {noise.get('kind', '')} noise"
                         .replace("  ", " "))
        return f"{self.name}: {', '.join(parts)}" if parts else self.name

    def rerun_hint(self, probe: str) -> str:
        """The command that computes ``probe`` into this cube."""
        src = self.source or "RUN_DIR"
        return f"ckpt-analyze run {src} --probe {probe} -o {self.path}"


@dataclass(frozen=True)
class ProbeData:
    """One probe group read into memory: metrics shaped (epoch, width, *extra dims)."""

    name: str
    epochs: np.ndarray
    widths: np.ndarray
    coords: dict[str, tuple[Any, ...]]
    dims: dict[str, tuple[str, ...]]
    values: dict[str, np.ndarray]
    done: np.ndarray
    config: dict[str, Any]

    def has(self, metric: str, **sel: Any) -> bool:
        return self.get(metric, **sel) is not None

    def get(self, metric: str, **sel: Any) -> np.ndarray | None:
        """``values[metric]`` with the named coordinates picked (e.g. ``subset="test"``);
        ``None`` when the metric or a requested coordinate value is not in the cube."""
        if metric not in self.values:
            return None
        dims = self.dims[metric]
        extra = set(sel) - set(dims)
        if extra:
            return None
        index: list[Any] = [slice(None), slice(None)]
        for d in dims:
            if d in sel:
                values = list(self.coords.get(d, ()))
                if sel[d] not in values:
                    return None
                index.append(values.index(sel[d]))
            else:
                index.append(slice(None))
        return np.asarray(self.values[metric][tuple(index)], dtype=np.float64)

    def column(self, width: Any) -> int | None:
        hit = np.flatnonzero(self.widths == width)
        return int(hit[0]) if hit.size else None


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def read_cube_info(path: str | os.PathLike[str]) -> CubeInfo:
    """Root attributes and coordinates of a cube (raises CkptError if it is not one)."""
    import h5py

    from .cube import probe_names

    p = Path(path)
    probes = tuple(probe_names(p))  # checks the format
    with h5py.File(p, "r") as f:
        source = _text(f.attrs.get("source"))
        run = None
        raw = _text(f.attrs.get("run_json"))
        if isinstance(raw, str):
            try:
                run = json.loads(raw)
            except ValueError:
                run = None
        epochs = f["epoch"][()] if "epoch" in f else np.zeros(0, dtype=np.int64)
        widths = f["width"][()] if "width" in f else np.zeros(0, dtype=np.int64)
    return CubeInfo(p, str(source) if source else None, run if isinstance(run, dict) else None,
                    np.asarray(epochs), np.asarray(widths), probes)


def _read_probe(f: h5py.File, name: str, metrics: Sequence[str] | None) -> ProbeData | None:
    import h5py

    g = f.get(name)
    if not isinstance(g, h5py.Group) or "probe_version" not in g.attrs:
        return None
    coords: dict[str, tuple[Any, ...]] = {}
    datasets = [(k, ds) for k, ds in g.items() if isinstance(ds, h5py.Dataset)]
    for key, ds in datasets:
        if key in ("epoch", "width", "done") or not h5py.h5ds.is_scale(ds.id):
            continue
        if h5py.check_string_dtype(ds.dtype):
            coords[key] = tuple(ds.asstr()[()].tolist())
        else:
            coords[key] = tuple(ds[()].tolist())
    dims: dict[str, tuple[str, ...]] = {}
    values: dict[str, np.ndarray] = {}
    for key, ds in datasets:
        if key in ("epoch", "width", "done") or key in coords or ds.ndim < 2:
            continue
        if metrics is not None and key not in metrics:
            continue
        extra = []
        for axis in range(2, ds.ndim):
            scales = ds.dims[axis]
            extra.append(scales[0].name.rsplit("/", 1)[-1] if len(scales) else f"dim{axis}")
        dims[key] = tuple(extra)
        values[key] = ds[()]
    done = g["done"][()].astype(bool) if "done" in g else np.zeros(0, dtype=bool)
    try:
        config = json.loads(_text(g.attrs.get("config", "{}")))
    except ValueError:
        config = {}
    return ProbeData(name, np.asarray(g["epoch"][()]), np.asarray(g["width"][()]), coords, dims,
                     values, done, config if isinstance(config, dict) else {})


def load_probe(path: str | os.PathLike[str], probe: str,
               metrics: Sequence[str] | None = None) -> ProbeData | None:
    """The probe's group of a cube (only ``metrics`` if given), or ``None`` if it is absent."""
    import h5py

    with h5py.File(Path(path), "r") as f:
        return _read_probe(f, probe, metrics)


# ----------------------------------------------------------------------------- helpers


def epoch_spacing(epochs: Sequence[int] | np.ndarray) -> str:
    """How the saved checkpoints are spaced: ``every epoch``, ``every N epochs``,
    ``log-spaced`` (gaps that grow, as ``--save log:N``), ``irregular`` or ``single``."""
    e = np.asarray(epochs, dtype=np.int64)
    if e.size < 2:
        return "single checkpoint" if e.size == 1 else "no checkpoints"
    d = np.diff(e)
    if np.all(d == d[0]):
        return "every epoch" if d[0] == 1 else f"every {int(d[0])} epochs"
    # Rounded geometric spacing: gaps never shrink by more than rounding, and they grow.
    slack = np.maximum(1, d[:-1] // 4)
    if np.all(np.diff(d) >= -slack) and d[-1] >= 3 * d[0]:
        return "log-spaced"
    return "irregular"


def _aligned(pd: ProbeData, arr: np.ndarray, width: Any, epochs: np.ndarray) -> np.ndarray | None:
    """Column ``width`` of an (epoch, width, ...) array placed on the ``epochs`` grid (NaN
    where the probe has no such epoch); ``None`` if the probe lacks the width."""
    j = pd.column(width)
    if j is None:
        return None
    col = arr[:, j]
    out = np.full((epochs.shape[0], *col.shape[1:]), np.nan)
    pos = {int(v): i for i, v in enumerate(pd.epochs.tolist())}
    for i, ep in enumerate(epochs.tolist()):
        k = pos.get(int(ep))
        if k is not None:
            out[i] = col[k]
    return out


def _last(curve: np.ndarray | None, epochs: np.ndarray) -> tuple[Any, Any]:
    """(last finite value, its epoch) of a 1-D curve, or (None, None)."""
    if curve is None:
        return None, None
    ok = np.flatnonzero(np.isfinite(curve))
    if ok.size == 0:
        return None, None
    i = int(ok[-1])
    return float(curve[i]), int(epochs[i])


def _clean(obj: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _check_params(patience: int | None, window: int, subset: str | None) -> None:
    if patience is not None:
        an._int_arg(patience, "patience", 1)
    an._int_arg(window, "window", 0)
    if subset is not None and subset not in SUBSETS:
        raise UsageError(f"unknown subset '{subset}'{did_you_mean(subset, SUBSETS)}")


def _span_text(epochs: np.ndarray) -> str:
    if not epochs.size:
        return "none"
    return f"{int(epochs[0])}..{int(epochs[-1])}, {int(epochs[-1] - epochs[0])} epochs"


def _fit(x: list[Any], y: list[Any]) -> dict[str, Any]:
    n = int(sum(1 for a, b in zip(x, y, strict=True) if a is not None and b is not None))
    if n == 0:
        return {"slope": None, "intercept": None, "r": None, "n": 0}
    fit = an.linear_fit(x, y)
    return {"slope": fit.slope, "intercept": fit.intercept, "r": fit.r, "n": n}


# ----------------------------------------------------------------------------- the report


def build_report(cube_path: str | os.PathLike[str],
                 patience: int | None = an.DEFAULT_PATIENCE,
                 window: int = an.DEFAULT_WINDOW,
                 subset: str | None = None) -> dict[str, Any]:
    """The double-descent report of a cube, as a JSON-able dict (see the module docstring).

    Args:
        cube_path: a ckpt-analyzer cube.
        patience: T of the peak search (Zhang & Wu §3.2), in epochs; ``None`` searches the
            whole curve.
        window: ΔT of the decrease-rate moving average, in epochs.
        subset: the spectrum subset R_t is computed on. ``None`` means ``train`` (the paper's
            choice), skipped with a note if the cube lacks it; an explicit subset the cube
            lacks is a UsageError.

    Keys: ``format``, ``cube``, ``run``, ``parameters``, ``probes``, ``widths``,
    ``per_width`` (one dict per width: ``width``, the events of
    :data:`ckpt_analyzer.analysis.EVENT_KEYS` as epochs (``None``: not found),
    ``E_peak_found`` / ``R_peak_found`` (False when nothing rose after the minimum or the peak
    was not found), ``final_epoch``, ``final_train_error``,
    ``final_test_error``, ``pcc_R`` (mean over k ≥ 1 of the PCC of R_k on train and test),
    ``pcc_R_std``, ``pcc_error``), ``model_wise`` (``interpolation_threshold``,
    ``test_error_peak_width``, ``test_error_peak``: width, value, prominence, kind and
    ``threshold_distance`` {ratio, difference, steps}; ``sharpness``), ``correlations``,
    ``notes``.
    Undefined values are ``None``.
    """
    _check_params(patience, window, subset)
    info = read_cube_info(cube_path)
    r_subset = subset or "train"
    notes: list[str] = []
    import h5py

    with h5py.File(info.path, "r") as f:
        metrics = _read_probe(f, "metrics", ("error",))
        spectrum = _read_probe(f, "spectrum", ("R",))
        sharp = _read_probe(f, "sharpness", SHARPNESS_METRICS)
    epochs = np.asarray(info.epochs, dtype=np.int64)
    widths = [int(w) for w in info.widths.tolist()]

    # -- which curves exist
    err = {s: metrics.get("error", subset=s) if metrics else None for s in SUBSETS}
    if metrics is None:
        notes.append(f"no 'metrics' probe: no test-error events, interpolation threshold or "
                     f"T_dP,peak (compute it: {info.rerun_hint('metrics')})")
    else:
        for s, why in (("test", "T_E events and the test-error peak width"),
                       ("noisy", "T_dP,peak"), ("train", "the interpolation threshold")):
            if err[s] is None:
                have = ", ".join(map(str, metrics.coords.get("subset", ()))) or "none"
                notes.append(f"metrics has no '{s}' subset (have: {have}): no {why}")
    R = R_train = R_test = None
    if spectrum is None:
        notes.append(f"no 'spectrum' probe: no T_R events (compute it: "
                     f"{info.rerun_hint('spectrum')})")
    else:
        have_sub = tuple(map(str, spectrum.coords.get("subset", ())))
        R = spectrum.get("R", subset=r_subset)
        if R is None:
            if subset is not None:
                raise UsageError(f"{info.path}: the spectrum was not measured on subset "
                                 f"'{subset}'{did_you_mean(subset, have_sub)}")
            notes.append(f"spectrum has no '{r_subset}' subset (have: {', '.join(have_sub)}): "
                         "no T_R events (use --subset)")
        R_test = spectrum.get("R", subset="test")
        R_train = spectrum.get("R", subset="train")
        if R_test is None or R_train is None:
            notes.append("spectrum lacks the train or test subset: no PCC of R between train "
                         "and test (measure both: --set spectrum.subsets=train,test)")

    # -- per width
    per_width: list[dict[str, Any]] = []
    curves_seen: dict[int, set[str]] = {}
    for w in widths:
        row: dict[str, Any] = {"width": w}

        def curve(pd: ProbeData | None, arr: np.ndarray | None, w: int = w) -> np.ndarray | None:
            if pd is None or arr is None:
                return None
            return _aligned(pd, arr, w, epochs)

        test_e = curve(metrics, err["test"])
        noisy_e = curve(metrics, err["noisy"])
        train_e = curve(metrics, err["train"])
        r_w = curve(spectrum, R)
        ev = an.events_for_width(epochs, test_e, r_w, noisy_e, patience=patience, window=window)
        curves_seen[w] = {k for k, c in (("T_E", test_e), ("T_R", r_w))
                          if c is not None and np.isfinite(c).any()}
        row.update(ev)
        row["E_peak_found"] = ev["T_E_peak"] is not None and ev["T_E_peak"] != ev["T_E_min"]
        row["R_peak_found"] = ev["T_R_peak"] is not None and ev["T_R_peak"] != ev["T_R_min"]
        row["final_train_error"], ep_train = _last(train_e, epochs)
        row["final_test_error"], ep_test = _last(test_e, epochs)
        row["final_epoch"] = ep_test if ep_test is not None else ep_train
        row["pcc_R"] = row["pcc_R_std"] = None
        if spectrum is not None and R_train is not None and R_test is not None:
            a = curve(spectrum, R_train)
            b = curve(spectrum, R_test)
            if a is not None and b is not None and a.shape[1] > 1:
                pcc = np.asarray(an.pearson(a[:, 1:], b[:, 1:]), dtype=np.float64)
                if np.any(np.isfinite(pcc)):
                    row["pcc_R"] = float(np.nanmean(pcc))
                    row["pcc_R_std"] = float(np.nanstd(pcc))
        row["pcc_error"] = (an.pearson(train_e, test_e)
                            if train_e is not None and test_e is not None else None)
        per_width.append(row)
    span = int(epochs[-1] - epochs[0]) if epochs.size else 0
    if patience is not None and patience > span:
        notes.append(f"patience T = {patience} epochs is longer than the run (epochs "
                     f"{_span_text(epochs)}): T_min and T_peak are reported as not found")
    elif patience is not None:
        for key, label in (("T_E", "T_E"), ("T_R", "T_R")):
            missing = [r["width"] for r in per_width if r[f"{key}_min"] is None
                       and r[f"{key}_peak"] is None and key in curves_seen[r["width"]]]
            late = [r["width"] for r in per_width if r[f"{key}_min"] is not None
                    and r[f"{key}_peak"] is None]
            if missing or late:
                which = ", ".join(map(str, sorted(set(missing + late))))
                notes.append(f"{label} events not found for width {which}: the patience "
                             f"window (T = {patience} epochs) runs past the last epoch")
    if 2 * window + 1 > span and metrics is not None and err["noisy"] is not None:
        notes.append(f"window 2*dT+1 = {2 * window + 1} epochs is longer than the run (epochs "
                     f"{_span_text(epochs)}): T_dP,peak is reported as not found")
    elif metrics is not None and err["noisy"] is not None and not any(
            r["T_dP_peak"] is not None for r in per_width):
        notes.append(f"T_dP,peak needs a noisy-subset error spanning at least "
                     f"2*dT+2 = {2 * window + 2} epochs")

    # -- model-wise
    finals_train = [r["final_train_error"] for r in per_width]
    finals_test = [r["final_test_error"] for r in per_width]
    model: dict[str, Any] = {"interpolation_threshold": None, "test_error_peak_width": None,
                             "test_error_peak": None, "peak_rule": PEAK_RULE,
                             "final_epochs": sorted({r["final_epoch"] for r in per_width
                                                     if r["final_epoch"] is not None}),
                             "sharpness": None}
    if widths and any(v is not None for v in finals_train):
        model["interpolation_threshold"] = an.interpolation_threshold(
            widths, [np.nan if v is None else v for v in finals_train])
        if model["interpolation_threshold"] is None:
            notes.append("no width reaches zero train error at its last checkpoint: no "
                         "interpolation threshold")
    if widths and any(v is not None for v in finals_test):
        peak = _peak(widths, [np.nan if v is None else v for v in finals_test], "max",
                     model["interpolation_threshold"])
        model["test_error_peak"] = peak
        model["test_error_peak_width"] = peak["width"]
        if peak["width"] is None:
            notes.append("the final test error has no interior maximum over width (monotone "
                         "or flat): no model-wise test-error peak")
    if len(model["final_epochs"]) > 1:
        notes.append("widths end at different epochs "
                     f"({', '.join(map(str, model['final_epochs']))}): model-wise events use "
                     "each width's last checkpoint")
    model["sharpness"] = _sharpness_peaks(sharp, info, notes, model["interpolation_threshold"])

    # -- correlations across widths (Zhang & Wu Fig. 6)
    r_peak = [r["T_R_peak"] if r["R_peak_found"] else None for r in per_width]
    e_peak = [r["T_E_peak"] if r["E_peak_found"] else None for r in per_width]
    dp_peak = [r["T_dP_peak"] for r in per_width]
    correlations = {
        "T_R_peak_vs_T_E_peak": _fit(e_peak, r_peak),
        "T_R_peak_vs_T_dP_peak": _fit(dp_peak, r_peak),
    }
    if correlations["T_R_peak_vs_T_E_peak"]["n"] < 3:
        notes.append("T_R,peak vs T_E,peak: Pearson r needs >= 3 widths with both peaks found "
                     f"(have {correlations['T_R_peak_vs_T_E_peak']['n']})")

    run = info.run or {}
    save: dict[str, Any] = run["save"] if isinstance(run.get("save"), dict) else {}
    parameters = {
        "patience": patience,
        "window": window,
        "subset": r_subset,
        "k_min": 1,
        "alphas": "1 for every k >= 1 (R_t = sum_k R_k,t)",
        "unit": "epochs",
        "counting": "patience and window are in epochs, on the curves interpolated linearly "
                    "in epoch between saved checkpoints; an event whose patience runs past "
                    "the last epoch is not found",
        "epoch_spacing": epoch_spacing(epochs),
        "save_spec": save.get("spec"),
        "checkpoints": int(epochs.size),
        "epochs": [int(epochs[0]), int(epochs[-1])] if epochs.size else [],
        "peak_found": "a peak is reported only if the curve rose after its minimum "
                      "(T_peak != T_min) and the rise was confirmed within the run; the fits "
                      "use widths with both peaks found",
    }
    report = {
        "format": REPORT_FORMAT,
        "cube": str(info.path),
        "run": {"name": info.name, "description": info.describe(), "source": info.source},
        "parameters": parameters,
        "probes": list(info.probes),
        "widths": widths,
        "per_width": per_width,
        "model_wise": model,
        "correlations": correlations,
        "notes": notes,
    }
    return _clean(report)


def _peak(widths: Sequence[int], values: Sequence[float] | np.ndarray, kind: str,
          threshold: Any) -> dict[str, Any]:
    """:func:`ckpt_analyzer.analysis.model_wise_peak` as a JSON-able dict, with its distance
    to the interpolation threshold."""
    p = an.model_wise_peak(widths, values, "min" if kind == "min" else "max")
    dist = an.threshold_distance(widths, p.width, threshold)
    return {"width": p.width, "value": p.value, "prominence": p.prominence, "kind": p.kind,
            "threshold_distance": None if dist is None else dist._asdict()}


def _sharpness_peaks(sharp: ProbeData | None, info: CubeInfo, notes: list[str],
                     threshold: Any = None) -> dict[str, Any] | None:
    """Each sharpness metric's model-wise peak per subset at volume 0 and the largest volume,
    at each width's last measured checkpoint: ``peaks`` holds the widths, ``details`` the
    full :func:`_peak` records (accuracy: interior minimum)."""
    if sharp is None:
        notes.append(f"no 'sharpness' probe: no sharpness peaks (compute it: "
                     f"{info.rerun_hint('sharpness')})")
        return None
    volumes = list(sharp.coords.get("volume", (0,)))
    picked = sorted({volumes[0], volumes[-1]})
    widths = [int(w) for w in sharp.widths.tolist()]
    last = [int(sharp.epochs[np.flatnonzero(sharp.done[:, j])[-1]])
            if sharp.done.size and sharp.done[:, j].any() else None
            for j in range(len(widths))]
    peaks: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for m in SHARPNESS_METRICS:
        if m not in sharp.values:
            notes.append(f"sharpness has no '{m}' metric")
            continue
        peaks[m], details[m] = {}, {}
        computed = False
        for s in sharp.coords.get("subset", ()):
            peaks[m][str(s)], details[m][str(s)] = {}, {}
            for v in picked:
                arr = sharp.get(m, subset=s, volume=v)
                final = an.last_finite(arr) if arr is not None else None
                if final is None or not np.isfinite(final).any():
                    peaks[m][str(s)][str(v)] = details[m][str(s)][str(v)] = None
                    continue
                computed = True
                d = _peak(widths, final, SHARPNESS_KIND[m], threshold)
                peaks[m][str(s)][str(v)] = d["width"]
                details[m][str(s)][str(v)] = d
        if not computed:
            notes.append(f"sharpness '{m}' was not computed (all NaN)")
    return {"volumes": picked, "epochs": dict(zip(map(str, widths), last, strict=True)),
            "peak": PEAK_RULE, "kinds": {m: SHARPNESS_KIND[m] for m in peaks},
            "peaks": peaks, "details": details}


# ----------------------------------------------------------------------------- text


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    cols = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    lines = [indent + "  ".join(h.rjust(widths[i]) for i, h in enumerate(headers)),
             indent + "  ".join("-" * widths[i] for i in range(len(headers)))]
    lines += [indent + "  ".join(c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables (what ``ckpt-analyze report`` prints)."""
    p = report["parameters"]
    out = [f"{report['cube']}  ({report['run']['description']})",
           f"  {p['checkpoints']} checkpoints, epochs {p['epochs'][0] if p['epochs'] else '-'}"
           f"..{p['epochs'][-1] if p['epochs'] else '-'}, {p['epoch_spacing']}"
           + (f" (saved with '{p['save_spec']}')" if p.get("save_spec") else ""),
           (f"  patience T = "
            f"{p['patience'] if p['patience'] is not None else 'none (whole curve)'} epochs, "
            f"window dT = {p['window']} epochs (curves interpolated linearly in epoch between "
            f"checkpoints); R_t = sum of R_k over k >= 1 on the {p['subset']} subset"),
           "",
           "Per width (events in epochs; '-' = not found or undefined, 'none' = no rise after "
           "the minimum)"]
    rows = []
    for r in report["per_width"]:
        rows.append([
            str(r["width"]), _fmt(r["final_epoch"]), _fmt(r["final_train_error"]),
            _fmt(r["final_test_error"]), _fmt(r["T_E_min"]),
            _fmt(r["T_E_peak"]) if r["E_peak_found"] or r["T_E_peak"] is None else "none",
            _fmt(r["T_R_min"]),
            _fmt(r["T_R_peak"]) if r["R_peak_found"] or r["T_R_peak"] is None else "none",
            _fmt(r["T_dP_peak"]), _fmt(r["pcc_R"]), _fmt(r["pcc_error"])])
    out.append(_table(["width", "last ep", "train err", "test err", "T_E,min", "T_E,peak",
                       "T_R,min", "T_R,peak", "T_dP,peak", "PCC R", "PCC err"], rows))
    out.append("  PCC R: Pearson r of R_k on the train and test subsets over epochs, mean over "
               "k >= 1; PCC err: of the train and test errors (Zhang & Wu Fig. 5)")
    m = report["model_wise"]
    out += ["", "Model-wise (each width's last checkpoint; peak = interior local maximum of "
            "largest prominence, over the widths in order)",
            (f"  interpolation threshold (smallest width with train error 0): "
             f"{_fmt(m['interpolation_threshold'])}"),
            f"  test error peak: {_peak_text(m.get('test_error_peak'))}"]
    sh = m.get("sharpness")
    if sh and sh["peaks"]:
        vols = [str(v) for v in sh["volumes"]]
        details = sh.get("details", {})
        rows = []
        for metric, by_subset in sh["peaks"].items():
            kind = sh.get("kinds", {}).get(metric, "max")
            for subset, d in by_subset.items():
                cells = []
                for v in vols:
                    rec = details.get(metric, {}).get(subset, {}).get(v)
                    if rec is None:
                        cells.append("-" if d.get(v) is None else _fmt(d.get(v)))
                    elif rec["width"] is None:
                        cells.append("none")
                    else:
                        cells.append(f"{rec['width']} ({_fmt(rec['prominence'], 3)})")
                rows.append([metric + (" (min)" if kind == "min" else ""), subset, *cells])
        out += ["  sharpness peaks: width (prominence); 'none' = no interior extremum:",
                _table(["metric", "subset", *[f"volume {v}" for v in vols]], rows, "    ")]
    out += ["", "Across widths (Zhang & Wu Fig. 6: least-squares line y = slope*x + intercept)"]
    rows = []
    for key, (y, x) in (("T_R_peak_vs_T_E_peak", ("T_R,peak", "T_E,peak")),
                        ("T_R_peak_vs_T_dP_peak", ("T_R,peak", "T_dP,peak"))):
        c = report["correlations"][key]
        rows.append([f"{y} vs {x}", _fmt(c["slope"]), _fmt(c["intercept"]), _fmt(c["r"]),
                     str(c["n"])])
    out.append(_table(["y vs x", "slope", "intercept", "Pearson r", "n"], rows))
    if report["notes"]:
        out += ["", "Notes"] + [f"  - {n}" for n in report["notes"]]
    return "\n".join(out)


def _peak_text(peak: dict[str, Any] | None) -> str:
    """``width 8 (error 0.490, prominence 0.080), 2 widths below the interpolation threshold
    32 (x0.25)`` or ``none``."""
    if peak is None:
        return "-"
    if peak["width"] is None:
        return "none (no interior maximum over width)"
    text = (f"width {peak['width']} (value {_fmt(peak['value'])}, prominence "
            f"{_fmt(peak['prominence'])})")
    d = peak.get("threshold_distance")
    if d is not None:
        steps = int(d["steps"])
        where = ("at the interpolation threshold" if steps == 0 else
                 f"{abs(steps)} width{'s' if abs(steps) > 1 else ''} "
                 f"{'below' if steps < 0 else 'above'} the interpolation threshold")
        text += f", {where} (width ratio {d['ratio']:.3g})"
    return text


# ----------------------------------------------------------------------------- storage


def write_report(cube_path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Store ``report`` in the cube under ``analysis/``, atomically (copy to ``<cube>.tmp``,
    write, fsync, ``os.replace``); an earlier report is replaced.

    While writing, the cube's journal (if there is one) is held, so a concurrent
    ``ckpt-analyze run`` on the same cube is refused rather than raced. The group is lost when
    a later ``ckpt-analyze run`` rematerializes the cube (see the module docstring).
    """
    import h5py

    from .cube import Cube

    p = Path(cube_path)
    read_cube_info(p)  # a cube of the supported format, or CkptError
    with h5py.File(p, "r") as f:
        g = f.get(GROUP)
        if isinstance(g, h5py.Group) and "probe_version" in g.attrs:
            raise CkptError(f"a probe named '{GROUP}' occupies the report's group; not "
                            "storing the report", p)
    text = json.dumps(_clean(report), sort_keys=False)
    journal = Path(f"{p}.journal")
    try:
        lock = Cube(p).open() if journal.exists() else None
    except CkptError as exc:
        if "another process" not in str(exc):
            raise
        raise CkptError("a 'ckpt-analyze run' is writing this cube; not storing the report "
                        "(use --no-store to print it without storing)", p) from None
    tmp = Path(f"{p}.tmp")
    try:
        shutil.copyfile(p, tmp)
        with h5py.File(tmp, "r+") as f:
            if GROUP in f:
                del f[GROUP]
            g = f.create_group(GROUP)
            g.attrs["format"] = REPORT_FORMAT
            g.attrs["description"] = ("derived by 'ckpt-analyze report'; dropped when "
                                      "'ckpt-analyze run' rewrites the cube")
            g.attrs["report"] = text
            rows = report.get("per_width", [])
            w = g.create_dataset("width", data=np.array([r["width"] for r in rows],
                                                        dtype=np.int64))
            w.make_scale("width")
            for key in WIDTH_FIELDS:
                vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows],
                                dtype=np.float64)
                ds = g.create_dataset(key, data=vals)
                ds.dims[0].attach_scale(w)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
        try:
            dfd = os.open(p.parent, os.O_RDONLY)
        except OSError:
            dfd = None
        if dfd is not None:
            try:
                os.fsync(dfd)
            except OSError:
                pass
            finally:
                os.close(dfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CkptError(f"cannot store the report in the cube ({exc.strerror or exc})",
                        p) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            lock.close()


def read_report(cube_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The report stored by :func:`write_report`, or ``None`` if the cube has none."""
    import h5py

    p = Path(cube_path)
    read_cube_info(p)
    with h5py.File(p, "r") as f:
        g = f.get(GROUP)
        if not isinstance(g, h5py.Group) or "report" not in g.attrs:
            return None
        return json.loads(_text(g.attrs["report"]))
