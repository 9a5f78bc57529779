"""Building the double-descent report of a cube (``ckpt-analyze report``): events, correlations.

:func:`build_report` reads a cube with h5py (no xarray needed) and applies
:mod:`ckpt_analyzer.events` to its curves; see the package docstring for what it contains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo, ProbeData, read_cube_info, read_probe_group
from ..errors import UsageError, did_you_mean
from ..events.common import _int_arg
from ..schema import time_label

if TYPE_CHECKING:
    import os

REPORT_FORMAT = "ckpt-analyzer.report/1"


SUBSETS = ("train", "clean", "noisy", "test")


SHARPNESS_METRICS = ("accuracy", "loss", "jacobian", "hessian")


SHARPNESS_KIND = {"accuracy": "min", "loss": "max", "jacobian": "max", "hessian": "max"}


PEAK_RULE = ("interior local maximum over the widths in order (minimum for accuracy) of "
             "largest prominence (scipy.signal.peak_prominences); ends never count; flat "
             "tops and equal prominences go to the smallest width; none if the curve is "
             "monotone or flat")


WIDTH_FIELDS = (*an.EVENT_KEYS, "final_epoch", "final_train_error", "final_test_error",
                "pcc_R", "pcc_error", "T_H_min", "T_H_peak")


#: How the report names an event key in its notes.
_EVENT_LABEL = {"T_E_min": "T_E,min", "T_E_peak": "T_E,peak", "T_R_min": "T_R,min",
                "T_R_peak": "T_R,peak", "T_dP_peak": "T_dP,peak", "T_H_min": "T_H,min",
                "T_H_peak": "T_H,peak"}


#: The Hessian events use the top eigenvalue (k = 0) of the ``hessian`` probe on this subset.
HESSIAN_SUBSET = "train"


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
        _int_arg(patience, "patience", 1)
    _int_arg(window, "window", 0)
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
    :data:`ckpt_analyzer.events.EVENT_KEYS` as epochs (``None``: not found),
    ``E_peak_found`` / ``R_peak_found`` (False when nothing rose after the minimum or the peak
    was not found), ``final_epoch``, ``final_train_error``,
    ``final_test_error``, ``pcc_R`` (mean over k ≥ 1 of the PCC of R_k on train and test),
    ``pcc_R_std``, ``pcc_error``: :func:`ckpt_analyzer.events.epoch_pearson`, over every epoch
    of the curves interpolated in epoch; ``unresolved``: ``{event: {reason, epoch, spacing,
    patience}}`` for each event the save grid is too coarse to resolve, reported as ``None``
    (:func:`ckpt_analyzer.events.width_events`)), ``model_wise`` (``interpolation_threshold``,
    ``test_error_peak_width``, ``test_error_peak``: width, value, prominence, kind and
    ``threshold_distance`` {ratio, difference, steps}; ``sharpness``; ``hessian``: the top
    Hessian eigenvalue's peak over width at each width's last checkpoint, {subset, k, metric,
    epochs, peak} or ``None`` without the probe; ``hessian_peak_width``), ``correlations``,
    ``notes``. Per width also ``T_H_min`` / ``T_H_peak`` / ``H_peak_found``: the
    :func:`ckpt_analyzer.events.peak_epochs` events of the top Hessian eigenvalue (k = 0) on the
    ``train`` subset, with the same patience (``None`` without the probe).
    Undefined values are ``None``.
    """
    _check_params(patience, window, subset)
    info = read_cube_info(cube_path)
    r_subset = subset or "train"
    notes: list[str] = []
    import h5py

    with h5py.File(info.path, "r") as f:
        metrics = read_probe_group(f, "metrics", ("error",))
        spectrum = read_probe_group(f, "spectrum", ("R",))
        sharp = read_probe_group(f, "sharpness", SHARPNESS_METRICS)
        hess = read_probe_group(f, "hessian", ("eigenvalues",))
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

    top_eig = _hessian_curve(hess, info, notes)

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
        ev, raw, bad = an.width_events(epochs, test_e, r_w, noisy_e, patience=patience,
                                       window=window)
        h_w = curve(hess, top_eig)
        curves_seen[w] = {k for k, c in (("T_E", test_e), ("T_R", r_w), ("T_H", h_w))
                          if c is not None and np.isfinite(c).any()}
        row.update(ev)
        found = an.peak_epochs(epochs, h_w, patience) if h_w is not None else None
        raw["T_H_min"], raw["T_H_peak"] = found or (None, None)
        for key in ("T_H_min", "T_H_peak"):
            u = an.unresolved(epochs, h_w, raw[key], patience) if h_w is not None else None
            if u is None and h_w is not None and raw[key] is None:  # none found: can the grid say?
                u = an.unresolved_absence(epochs, h_w, patience,
                                          raw["T_H_min"] if key == "T_H_peak" else None)
            if u is not None:
                bad[key] = u
            row[key] = None if u is not None else raw[key]
        for x in "ERH":  # a rise after the minimum, found and resolved
            row[f"{x}_peak_found"] = (row[f"T_{x}_peak"] is not None
                                      and raw[f"T_{x}_peak"] != raw[f"T_{x}_min"])
        row["unresolved"] = {k: {"reason": u.reason(info.time_unit), "epoch": u.epoch,
                                 "spacing": u.spacing, "patience": u.patience}
                             for k, u in bad.items()}
        row["final_train_error"], ep_train = _last(train_e, epochs)
        row["final_test_error"], ep_test = _last(test_e, epochs)
        row["final_epoch"] = ep_test if ep_test is not None else ep_train
        row["pcc_R"] = row["pcc_R_std"] = None
        if spectrum is not None and R_train is not None and R_test is not None:
            a = curve(spectrum, R_train)
            b = curve(spectrum, R_test)
            if a is not None and b is not None and a.shape[1] > 1:
                pcc = np.asarray(an.epoch_pearson(epochs, a[:, 1:], b[:, 1:]), dtype=np.float64)
                if np.any(np.isfinite(pcc)):
                    row["pcc_R"] = float(np.nanmean(pcc))
                    row["pcc_R_std"] = float(np.nanstd(pcc))
        row["pcc_error"] = (an.epoch_pearson(epochs, train_e, test_e)
                            if train_e is not None and test_e is not None else None)
        per_width.append(row)
    span = int(epochs[-1] - epochs[0]) if epochs.size else 0
    if patience is not None and patience > span:
        notes.append(f"patience T = {patience} epochs is longer than the run (epochs "
                     f"{_span_text(epochs)}): T_min and T_peak are reported as not found")
    elif patience is not None:
        for key, label in (("T_E", "T_E"), ("T_R", "T_R"), ("T_H", "T_H")):
            missing = [r["width"] for r in per_width if r[f"{key}_min"] is None
                       and r[f"{key}_peak"] is None and key in curves_seen[r["width"]]
                       and f"{key}_min" not in r["unresolved"]]
            late = [r["width"] for r in per_width if r[f"{key}_min"] is not None
                    and r[f"{key}_peak"] is None and f"{key}_peak" not in r["unresolved"]]
            if missing or late:
                which = ", ".join(map(str, sorted(set(missing + late))))
                notes.append(f"{label} events not found for width {which}: the patience "
                             f"window (T = {patience} epochs) runs past the last epoch")
    for r in per_width:
        for key, u in r["unresolved"].items():
            notes.append(f"width {r['width']} {_EVENT_LABEL.get(key, key)}: {u['reason']}")
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
    model["hessian"] = _hessian_peak(hess, top_eig, notes, model["interpolation_threshold"])
    model["hessian_peak_width"] = model["hessian"]["peak"]["width"] if model["hessian"] else None

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
        "unit": time_label(info.time_unit, plural=True),
        "time_unit": info.time_unit,
        "counting": f"patience and window are in {time_label(info.time_unit, True)}, on the "
                    f"curves interpolated linearly in {info.time_unit} between saved checkpoints; "
                    f"an event whose patience runs past the last {info.time_unit} is not found",
        "resolution": f"an event is unresolved (null, with the reason in per_width[i]"
                      f".unresolved) when the saved {info.time_unit}s near it are more than "
                      f"the patience apart",
        "pcc": f"Pearson r over every {info.time_unit} of the curves interpolated linearly "
               f"in {info.time_unit} (each {info.time_unit} weighs alike on any save grid)",
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
    """:func:`ckpt_analyzer.events.model_wise_peak` as a JSON-able dict, with its distance
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


def _hessian_curve(hess: ProbeData | None, info: CubeInfo, notes: list[str]) -> np.ndarray | None:
    """The top Hessian eigenvalue (k = 0) on :data:`HESSIAN_SUBSET`, (epoch, width), or
    ``None`` with a note saying what is missing."""
    if hess is None:
        notes.append(f"no 'hessian' probe: no Hessian events (compute it: "
                     f"{info.rerun_hint('hessian')})")
        return None
    eig = hess.get("eigenvalues", subset=HESSIAN_SUBSET, k=0)
    if eig is None:
        have = ", ".join(map(str, hess.coords.get("subset", ()))) or "none"
        notes.append(f"hessian has no '{HESSIAN_SUBSET}' subset (have: {have}): no Hessian "
                     f"events (measure it: --set hessian.subsets={HESSIAN_SUBSET},test)")
        return None
    if not np.isfinite(eig).any():
        notes.append("hessian eigenvalues were not computed (all NaN): no Hessian events")
        return None
    return eig


def _hessian_peak(hess: ProbeData | None, top_eig: np.ndarray | None, notes: list[str],
                  threshold: Any = None) -> dict[str, Any] | None:
    """The model-wise peak of the top Hessian eigenvalue over width at each width's last
    computed checkpoint (the rule of the sharpness peaks), with those epochs."""
    if hess is None or top_eig is None:
        return None
    widths = [int(w) for w in hess.widths.tolist()]
    ok = np.isfinite(top_eig)
    last = [int(hess.epochs[np.flatnonzero(ok[:, j])[-1]]) if ok[:, j].any() else None
            for j in range(len(widths))]
    peak = _peak(widths, an.last_finite(top_eig), "max", threshold)
    if peak["width"] is None:
        notes.append("the top Hessian eigenvalue at the last checkpoint has no interior maximum "
                     "over width (monotone or flat): no model-wise Hessian peak")
    return {"subset": HESSIAN_SUBSET, "k": 0, "metric": "eigenvalues",
            "epochs": dict(zip(map(str, widths), last, strict=True)), "peak": peak}
