"""The report as text (``ckpt-analyze report`` without ``--json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..schema import time_label


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _event(r: dict[str, Any], key: str, flag: str | None = None) -> str:
    """A per-width event cell: the epoch, ``none`` (no rise after the minimum), ``unresolved``
    (the save grid is too coarse there; the reason is in the notes) or ``-`` (not found)."""
    if key in r.get("unresolved", {}):
        return "unresolved"
    if flag is not None and r[key] is not None and not r[flag]:
        return "none"
    return _fmt(r[key])


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
    u = p.get("time_unit", "epoch")
    us = time_label(u, plural=True)
    spacing = p["epoch_spacing"] if u == "epoch" else p["epoch_spacing"].replace("epoch", u)
    out = [f"{report['cube']}  ({report['run']['description']})",
           f"  {p['checkpoints']} checkpoints, {us} {p['epochs'][0] if p['epochs'] else '-'}"
           f"..{p['epochs'][-1] if p['epochs'] else '-'}, {spacing}"
           + (f" (saved with '{p['save_spec']}')" if p.get("save_spec") else ""),
           (f"  patience T = "
            f"{p['patience'] if p['patience'] is not None else 'none (whole curve)'} {us}, "
            f"window dT = {p['window']} {us} (curves interpolated linearly in {u} between "
            f"checkpoints); R_t = sum of R_k over k >= 1 on the {p['subset']} subset"),
           "",
           f"Per width (events in {us}; '-' = not found or undefined, 'none' = no rise after "
           "the minimum, 'unresolved' = saves further apart than the patience there, see the "
           "notes)"]
    rows = []
    # reports of cubes with the hessian probe (and of versions that know it) get a T_H column
    hess = "hessian" in report.get("probes", ()) and all("T_H_peak" in r
                                                        for r in report["per_width"])
    for r in report["per_width"]:
        t_h = [_event(r, "T_H_peak", "H_peak_found")] if hess else []
        rows.append([
            str(r["width"]), _fmt(r["final_epoch"]), _fmt(r["final_train_error"]),
            _fmt(r["final_test_error"]), _event(r, "T_E_min"),
            _event(r, "T_E_peak", "E_peak_found"), *t_h, _event(r, "T_R_min"),
            _event(r, "T_R_peak", "R_peak_found"), _event(r, "T_dP_peak"), _fmt(r["pcc_R"]),
            _fmt(r["pcc_error"])])
    out.append(_table(["width", "last ep" if u == "epoch" else "last step", "train err",
                       "test err", "T_E,min", "T_E,peak", *(["T_H,peak"] if hess else []),
                       "T_R,min", "T_R,peak", "T_dP,peak", "PCC R", "PCC err"], rows))
    if hess:
        out.append(f"  T_H,peak: {u} of the peak of the top Hessian eigenvalue (train subset), "
                   "same patience as T_E")
    out.append(f"  PCC R: Pearson r of R_k on the train and test subsets over every {u} (curves "
               f"interpolated linearly in {u}), mean over k >= 1; PCC err: of the train and test "
               "errors (Zhang & Wu Fig. 5)")
    m = report["model_wise"]
    out += ["", "Model-wise (each width's last checkpoint; peak = interior local maximum of "
            "largest prominence, over the widths in order)",
            (f"  interpolation threshold (smallest width with train error 0): "
             f"{_fmt(m['interpolation_threshold'])}"),
            f"  test error peak: {_peak_text(m.get('test_error_peak'))}"]
    h = m.get("hessian")
    if h:
        out.append(f"  top Hessian eigenvalue peak ({h['subset']} subset): "
                   f"{_peak_text(h['peak'])}")
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
