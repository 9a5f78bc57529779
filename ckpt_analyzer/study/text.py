"""A study as plain text (``ckpt-analyze report A.h5 B.h5 ...`` without ``--json``)."""

from __future__ import annotations

from typing import Any

from ..report.text import _fmt, _table
from .aggregate import MODEL_FIELDS, agreement_text

#: Per-width columns of the study table: (field, header).
COLUMNS = (("final_test_error", "test err"), ("final_train_error", "train err"),
           ("T_E_min", "T_E,min"), ("T_E_peak", "T_E,peak"), ("T_R_min", "T_R,min"),
           ("T_R_peak", "T_R,peak"), ("T_dP_peak", "T_dP,peak"), ("pcc_R", "PCC R"),
           ("pcc_error", "PCC err"))


def mean_std(s: dict[str, Any], digits: int = 3, of: int | None = None) -> str:
    """``12.3 ± 1.2`` (``(n/N)`` appended when some runs lack the value, ``, u unresolved``
    when the save grid of u runs cannot resolve the event); ``-`` if none, ``unresolved``
    (with ``(u/N)``) when every run that has it is unresolved."""
    u = int(s.get("unresolved") or 0)
    if not s["n"]:
        return "-" if not u else "unresolved" + (f" ({u}/{of})" if of is not None else "")
    d = 1 if abs(s["mean"]) >= 10 or digits == 1 else digits
    text = f"{s['mean']:.{d}f}"
    if s["std"] is not None:
        text += f" ± {s['std']:.{d}f}"
    if of is not None and s["n"] < of:
        text += f" ({s['n']}/{of}" + (f", {u} unresolved)" if u else ")")
    return text


def digits_of(key: str) -> int:
    """Decimals of a per-width field: events are epochs (1 decimal), the rest 3."""
    return 1 if key.startswith("T_") else 3


def fit_text(f: dict[str, Any]) -> str:
    if f["slope"] is None:
        return (f"n = {f['n']}: too few pairs for a line" if f["n"] < 2 else
                f"n = {f['n']}: x is constant, no line")
    text = f"slope {_fmt(f['slope'])}"
    if f["slope_ci"] is not None:
        lo, hi = f["slope_ci"]
        text += f" [{round(100 * f['confidence'])}% CI {lo:.3f}, {hi:.3f}]"
    text += f", intercept {_fmt(f['intercept'])}, r {_fmt(f['r'])}, n = {f['n']}"
    return text


def format_study(study: dict[str, Any]) -> str:
    """The study as text: runs, per noise rate the per-width events (mean ± std over seeds,
    (found/runs) where some runs lack one), model-wise agreement, PCC, the pooled fits, notes."""
    out = [f"Study of {study['n_runs']} run(s)"]
    rows = [[r.get("name") or "-", _fmt(r.get("seed")), _fmt(r.get("noise")),
             str(r.get("dataset")), str(r.get("arch")),
             "yes" if r.get("complete", True) and not r.get("being_written") else "partial",
             str(r.get("cube"))] for r in study["runs"]]
    out.append(_table(["run", "seed", "noise", "dataset", "arch", "complete", "cube"], rows))
    for g in study["groups"]:
        n = len(g["runs"])
        out += ["", f"Label noise {g['noise']}: {n} run(s), seeds "
                f"{', '.join(map(str, g['seeds']))} (mean ± sample std over runs; (k/n): "
                "found in k of n runs)"]
        rows = [[str(pw["width"]), *[mean_std(pw[k], digits_of(k), of=n) for k, _ in COLUMNS]]
                for pw in g["per_width"]]
        out.append(_table(["width", *[h for _, h in COLUMNS]], rows))
        out.append("  model-wise (agreement over runs):")
        for key, label in MODEL_FIELDS.items():
            a = g["model_wise"][key]
            if all(v is None for v in a["values"]) and key == "hessian_peak_width":
                continue
            vals = ", ".join("none" if v is None else str(v) for v in a["values"])
            out.append(f"    {agreement_text(label, a, 'runs')} (per run: {vals})")
        out.append(f"  PCC of R (train vs test) over all widths and runs: "
                   f"{mean_std(g['pcc']['pcc_R'])} (n = {g['pcc']['pcc_R']['n']}); "
                   f"PCC of the errors: {mean_std(g['pcc']['pcc_error'])}")
        out.append(f"  T_R,peak vs T_E,peak: {fit_text(g['fit']['T_R_peak_vs_T_E_peak'])}")
    out += ["", "Over all runs (Zhang & Wu Fig. 6; every width of every run with both peaks "
            "found)",
            f"  T_R,peak vs T_E,peak:  {fit_text(study['fit']['all']['T_R_peak_vs_T_E_peak'])}",
            f"  T_R,peak vs T_dP,peak: "
            f"{fit_text(study['fit']['all']['T_R_peak_vs_T_dP_peak'])}"]
    if study["notes"]:
        out += ["", "Notes"] + [f"  - {n}" for n in study["notes"]]
    return "\n".join(out)
