"""A study: several runs (one cube each) aggregated into events with spread and agreement.

A *study* is a set of cubes, one per run (seed × label-noise rate), each the unchanged cube
format of one run folder. :func:`load_study` checks that the cubes belong together and builds
each one's report with :func:`ckpt_analyzer.report.build_report`; :func:`aggregate` turns those
reports into one JSON-able dict:

* ``runs``: one row per cube: name, seed, noise rate, dataset, arch, probes and their configs,
  whether it is complete (a cube still being written is used as far as it is finished, with a
  note);
* ``groups``: one per label-noise rate (the seeds are the replicates): per width, every event
  of the report as the list of values of each run and their ``mean``, ``std`` (sample standard
  deviation, ddof = 1; ``None`` with fewer than two values), ``min``, ``max`` and ``n`` (the
  runs where the event was found; an event of ``T_*`` also has ``unresolved``, the runs whose
  save grid is too coarse to resolve it, and their ``reasons``); model-wise events per run with
  the most common value and how many runs agree (``"test error peak at width 2 in 4 of 5
  seeds"``); the PCC summaries;
* ``fit``: T_R,peak against T_E,peak (and against T_ΔP,peak) pooled over every width of every
  run (Zhang & Wu Fig. 6): slope, intercept, Pearson r, n, the slope's standard error and its
  95 % confidence interval from the t distribution with n − 2 degrees of freedom
  (:func:`slope_ci`); also per noise rate;
* ``provenance``: package version, the cubes and their source run folders, probe configs.

Bad input is refused with one line naming the difference: cubes of different datasets or
architectures (unless ``allow_mixed``), different configs of one probe (named, with the keys),
one (seed, noise) combination given twice.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import events as an
from ..errors import UsageError

STUDY_FORMAT = "ckpt-analyzer.study/1"

#: Per-width fields aggregated over runs (peaks only where found: T_peak != T_min).
EVENT_FIELDS = ("T_E_min", "T_E_peak", "T_R_min", "T_R_peak", "T_dP_peak", "T_H_min",
                "T_H_peak", "final_train_error", "final_test_error", "pcc_R", "pcc_error")
_FOUND = {"T_E_peak": "E_peak_found", "T_R_peak": "R_peak_found", "T_H_peak": "H_peak_found"}

#: Model-wise events whose agreement over runs is counted.
MODEL_FIELDS = {"interpolation_threshold": "interpolation threshold",
                "test_error_peak_width": "test error peak",
                "hessian_peak_width": "top Hessian eigenvalue peak"}

CONFIDENCE = 0.95


def summarize(values: Sequence[Any]) -> dict[str, Any]:
    """``{"values", "n", "mean", "std", "min", "max"}`` of the non-``None`` finite values;
    ``std`` is the sample standard deviation (ddof = 1), ``None`` with fewer than 2 values."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    out: dict[str, Any] = {"values": list(values), "n": int(v.size), "mean": None, "std": None,
                           "min": None, "max": None}
    if v.size:
        out.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()))
    if v.size >= 2:
        out["std"] = float(v.std(ddof=1))
    return out


def agreement(values: Sequence[Any]) -> dict[str, Any]:
    """The most common value among ``values`` (``None`` counts as "none"; ties go to the
    smallest value, then to a value over "none") and how many of them agree on it."""
    counts = Counter(values)
    if not counts:
        return {"value": None, "count": 0, "of": 0, "counts": {}}
    best = max(counts.items(), key=lambda kv: (kv[1], kv[0] is not None,
                                               -(kv[0] if kv[0] is not None else 0)))
    return {"value": best[0], "count": int(best[1]), "of": len(values),
            "counts": {("none" if k is None else str(k)): int(c) for k, c in counts.items()}}


def slope_ci(x: Sequence[Any], y: Sequence[Any],
             confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Least-squares fit of ``y`` on ``x`` (pairs with a ``None``/NaN dropped) with the slope's
    confidence interval: slope ± t_{(1+c)/2, n-2} · stderr (``scipy.stats.linregress``).

    Keys: ``slope``, ``intercept``, ``r``, ``n``, ``stderr``, ``slope_ci`` ([lo, hi]),
    ``confidence``, ``p_value``; ``None`` where undefined (n < 2 for the line, n < 3 for r,
    stderr and the interval, or a constant x)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True)
             if a is not None and b is not None and math.isfinite(float(a))
             and math.isfinite(float(b))]
    n = len(pairs)
    out: dict[str, Any] = {"slope": None, "intercept": None, "r": None, "n": n,
                           "stderr": None, "slope_ci": None, "confidence": confidence,
                           "p_value": None}
    if n < 2:
        return out
    xa = np.array([p[0] for p in pairs])
    ya = np.array([p[1] for p in pairs])
    fit = an.linear_fit(xa, ya)
    if not math.isfinite(fit.slope):
        return out
    out.update(slope=fit.slope, intercept=fit.intercept)
    if n < 3:
        return out
    from scipy import stats

    res = stats.linregress(xa, ya)
    if math.isfinite(res.rvalue):
        out["r"] = float(res.rvalue)
        out["p_value"] = float(res.pvalue)
    se = float(res.stderr)
    t = float(stats.t.ppf((1 + confidence) / 2, n - 2))
    out["stderr"] = se
    out["slope_ci"] = [float(res.slope - t * se), float(res.slope + t * se)]
    return out


# ---------------------------------------------------------------- loading and checks
def run_identity(info_run: dict[str, Any] | None) -> dict[str, Any]:
    """``{"dataset", "arch", "seed", "noise", "noise_kind"}`` of a cube's run.json (``None``
    where unknown)."""
    run = info_run or {}
    ds = run.get("dataset")
    noise = run.get("label_noise") if isinstance(run.get("label_noise"), dict) else {}
    frac = noise.get("fraction") if noise else None
    return {"dataset": ds.get("name") if isinstance(ds, dict) else ds,
            "arch": run.get("arch"),
            "seed": run.get("seed"),
            "noise": float(frac) if frac is not None else None,
            "noise_kind": noise.get("kind") if noise else None}


def check_together(runs: Sequence[dict[str, Any]], allow_mixed: bool = False) -> list[str]:
    """Refuse (UsageError naming the difference) runs that cannot be aggregated; returns notes.

    ``runs``: rows with ``cube``, ``dataset``, ``arch``, ``seed``, ``noise``, ``configs``."""
    notes: list[str] = []
    for key in ("dataset", "arch"):
        seen: dict[Any, str] = {}
        for r in runs:
            seen.setdefault(r[key], r["cube"])
        if len(seen) > 1:
            diff = ", ".join(f"{v} ({c})" for v, c in seen.items())
            if not allow_mixed:
                raise UsageError(f"the cubes are of different {key}s: {diff}; aggregate them "
                                 "with --allow-mixed if that is meant")
            notes.append(f"different {key}s aggregated together (--allow-mixed): {diff}")
    combos: dict[tuple[Any, Any], str] = {}
    for r in runs:
        combo = (r["seed"], r["noise"])
        if combo in combos:
            what = (f"seed {r['seed']}" + (f" at label noise {r['noise']:g}"
                                           if r["noise"] is not None else ""))
            if combos[combo] == r["cube"]:
                raise UsageError(f"{r['cube']} is given twice")
            raise UsageError(f"{what} is given twice: {combos[combo]} and {r['cube']}")
        combos[combo] = r["cube"]
    probes = sorted({p for r in runs for p in r["configs"]})
    for p in probes:
        have = [(r["cube"], r["configs"][p]) for r in runs if p in r["configs"]]
        first_cube, first = have[0]
        for cube, cfg in have[1:]:
            if cfg != first:
                keys = sorted(k for k in set(first) | set(cfg) if first.get(k) != cfg.get(k))
                detail = "; ".join(f"{k}: {first.get(k)!r} vs {cfg.get(k)!r}" for k in keys)
                raise UsageError(f"probe '{p}' was measured with different configs in "
                                 f"{first_cube} and {cube} ({detail}); aggregate cubes of "
                                 "one probe config only")
        if len(have) < len(runs):
            missing = [r["cube"] for r in runs if p not in r["configs"]]
            notes.append(f"probe '{p}' is missing from {', '.join(missing)}: its events "
                         "aggregate the other runs only")
    return notes


def load_study(cubes: Sequence[str | os.PathLike[str]], allow_mixed: bool = False,
               **report_args: Any) -> dict[str, Any]:
    """Check the cubes, build each one's report and aggregate them (see the module docstring).

    ``report_args`` go to :func:`ckpt_analyzer.report.build_report` (patience, window,
    subset)."""
    from ..cube.journal import cube_busy
    from ..cube.read import read_summary
    from ..report import build_report, read_cube_info
    from ..report.status import coverage, is_complete

    paths = [Path(c) for c in cubes]
    runs: list[dict[str, Any]] = []
    for p in paths:
        info = read_cube_info(p)
        summary = read_summary(p)
        ident = run_identity(info.run)
        cov = coverage(p)  # against each probe's planned cells, not the whole grid
        complete = is_complete(cov)
        writing = cube_busy(p)
        runs.append({"cube": str(p), "name": info.name, "source": info.source,
                     "description": info.describe(), **ident,
                     "configs": {n: pr["config"] for n, pr in summary["probes"].items()},
                     "probe_versions": {n: pr["version"] for n, pr in summary["probes"].items()},
                     "coverage": cov, "complete": complete, "being_written": writing,
                     "cube_version": summary["root"].get("version"), "run_json": info.run})
    notes = check_together(runs, allow_mixed)
    for r in runs:
        if r["being_written"] or not r["complete"]:
            done = sum(c["planned_done"] for c in r["coverage"].values())
            total = sum(c["planned"] for c in r["coverage"].values())
            why = "is still being written" if r["being_written"] else "is incomplete"
            notes.append(f"{r['cube']} {why} ({done} of {total} cells done): using the cells "
                         "finished so far")
    reports = [build_report(p, **report_args) for p in paths]
    return aggregate(reports, runs, notes)


# ---------------------------------------------------------------- aggregation
def _field(row: dict[str, Any], key: str) -> Any:
    flag = _FOUND.get(key)
    if flag is not None and not row.get(flag, False):
        return None
    return row.get(key)


def _noise_key(noise: Any) -> str:
    return "unknown" if noise is None else f"{noise:g}"


def aggregate(reports: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]] | None = None,
              notes: Sequence[str] = ()) -> dict[str, Any]:
    """One study dict from the reports of several runs (see the module docstring).

    ``runs`` (as :func:`load_study` makes them) give each report's seed and noise rate; without
    them they are read from each report's ``run`` entry if present (``seed``, ``noise``), else
    every report is one seed of one unknown noise rate."""
    if runs is None:
        runs = [{"cube": r.get("cube"), "name": r.get("run", {}).get("name"),
                 "seed": r.get("run", {}).get("seed", i), "noise": r.get("run", {}).get("noise"),
                 "configs": {}} for i, r in enumerate(reports)]
    if len(runs) != len(reports):
        raise ValueError("one run row per report")
    by_noise: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by_noise.setdefault(_noise_key(r.get("noise")), []).append(i)
    order = sorted(by_noise, key=lambda k: (k == "unknown", float(k) if k != "unknown" else 0))
    groups = [_group(k, [reports[i] for i in by_noise[k]], [runs[i] for i in by_noise[k]])
              for k in order]
    fit = {"all": _fits(reports), "per_noise": {g["noise"]: g["fit"] for g in groups}}
    from .. import __version__

    study = {
        "format": STUDY_FORMAT,
        "n_runs": len(reports),
        "runs": [dict(r) for r in runs],
        "parameters": reports[0].get("parameters") if reports else None,
        "groups": groups,
        "fit": fit,
        "notes": list(notes) + _report_notes(reports),
        "provenance": {"version": __version__,
                       "cubes": [r.get("cube") for r in runs],
                       "sources": [r.get("source") for r in runs],
                       "probe_configs": runs[0].get("configs", {}) if runs else {}},
        "reports": list(reports),
    }
    return json.loads(json.dumps(study, default=_json_default))


def _report_notes(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Each report's notes, a note that several cubes share (up to their paths) once, with
    how many cubes have it."""
    seen: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for rep in reports:
        cube = str(rep.get("cube"))
        src = str((rep.get("run") or {}).get("source"))
        for n in rep.get("notes", ()):
            key = n.replace(cube, "CUBE").replace(src, "RUN")
            seen.setdefault(key, []).append(cube)
            first.setdefault(key, n)
    out = []
    for key, cubes in seen.items():
        out.append(f"{cubes[0]}: {first[key]}" if len(cubes) == 1 else
                   f"{len(cubes)} of {len(reports)} cubes: {first[key]}")
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def _fits(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    xs_e: list[Any] = []
    xs_dp: list[Any] = []
    ys: list[Any] = []
    for rep in reports:
        for row in rep.get("per_width", ()):
            xs_e.append(_field(row, "T_E_peak"))
            xs_dp.append(row.get("T_dP_peak"))
            ys.append(_field(row, "T_R_peak"))
    return {"T_R_peak_vs_T_E_peak": slope_ci(xs_e, ys),
            "T_R_peak_vs_T_dP_peak": slope_ci(xs_dp, ys)}


def _group(noise: str, reports: Sequence[dict[str, Any]],
           runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    widths = sorted({int(w) for rep in reports for w in rep.get("widths", ())})
    rows_by = [{int(r["width"]): r for r in rep.get("per_width", ())} for rep in reports]
    per_width = []
    for w in widths:
        entry: dict[str, Any] = {"width": w}
        for key in EVENT_FIELDS:
            entry[key] = summarize([_field(rb[w], key) if w in rb else None for rb in rows_by])
            if key.startswith("T_"):  # runs whose save grid cannot resolve it, and why
                why = [rb[w]["unresolved"][key]["reason"] for rb in rows_by
                       if w in rb and key in rb[w].get("unresolved", {})]
                entry[key].update(unresolved=len(why), reasons=why)
        per_width.append(entry)
    model: dict[str, Any] = {}
    for key in MODEL_FIELDS:
        vals = [rep.get("model_wise", {}).get(key) for rep in reports]
        model[key] = {**agreement(vals), "values": vals}
    pcc_all = {k: summarize([r.get(k) for rb in rows_by for r in rb.values()])
               for k in ("pcc_R", "pcc_error")}
    return {"noise": noise, "seeds": [r.get("seed") for r in runs],
            "runs": [r.get("name") for r in runs], "cubes": [r.get("cube") for r in runs],
            "widths": widths, "per_width": per_width, "model_wise": model,
            "pcc": pcc_all, "fit": _fits(reports)}


def sharpness_peak(report: dict[str, Any], metric: str, subset: str | None = None
                   ) -> tuple[str | None, Any]:
    """``(subset, width)`` of a run's model-wise ``metric`` peak at its largest sharpness volume
    (from :func:`ckpt_analyzer.report.build_report`); ``subset=None`` takes ``noisy`` when
    measured, else the first subset. ``(None, None)`` without sharpness peaks."""
    sh = (report.get("model_wise") or {}).get("sharpness") or {}
    vols = sh.get("volumes") or []
    peaks = (sh.get("peaks") or {}).get(metric) or {}
    if not vols or not peaks:
        return None, None
    if subset is None:
        subset = "noisy" if "noisy" in peaks else next(iter(peaks))
    return subset, (peaks.get(subset) or {}).get(str(vols[-1]))


def agreement_text(label: str, agree: dict[str, Any], unit: str = "seeds") -> str:
    """``test error peak at width 2 in 4 of 5 seeds`` (or ``none in 3 of 5 seeds``)."""
    if not agree["of"]:
        return f"{label}: no runs"
    where = "none" if agree["value"] is None else f"at width {agree['value']}"
    unit = unit.rstrip("s") if agree["of"] == 1 else unit
    return f"{label} {where} in {agree['count']} of {agree['of']} {unit}"
