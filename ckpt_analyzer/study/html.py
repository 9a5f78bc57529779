"""One self-contained HTML report of a study (``ckpt-analyze report ... --html report.html``).

The page starts with the results: the event tables (mean ± std over seeds per noise rate,
model-wise agreement, the pooled fits with their confidence interval), every study figure as an
embedded base64 PNG (``data:`` URI) and, under each figure, what the paper claims and whether
the figure shows it in this study; then, folded in a ``<details>`` block, the runs (complete:
every planned cell of every probe measured), the run configuration and provenance (package
version, cubes, source run folders, probe configs), with paths relative to the page's folder or
by their last two parts, never the machine's absolute paths. Nothing is loaded from
elsewhere: no scripts, no style sheets, no fonts, no links to files; it opens in a browser
from disk.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import atomic_path, check_output
from ..errors import CkptError
from .aggregate import MODEL_FIELDS, agreement_text, sharpness_peak
from .text import COLUMNS, digits_of, fit_text, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #ddd}
.claim{background:#f7f7fb;border-left:4px solid #88a;padding:.5em 1em}
.shown{color:#1a7f37;font-weight:bold} .notshown{color:#b35900;font-weight:bold}
.unknown{color:#666;font-weight:bold}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:.85em}
"""


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{escape(h)}</th>" if i < left else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(
        f"<td class='l'>{escape(str(c))}</td>" if i < left else f"<td>{escape(str(c))}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict(state: str, text: str) -> str:
    cls, word = {"shown": ("shown", "Shown"), "not": ("notshown", "Not shown"),
                 "unknown": ("unknown", "Cannot tell")}[state]
    return f"<span class='{cls}'>{word}:</span> {escape(text)}"


def verdict_double_descent(study: dict[str, Any]) -> tuple[str, str]:
    """Model-wise test-error peak: shown if, for some noise rate, most runs agree on a peak."""
    parts, best = [], "not"
    for g in study["groups"]:
        a = g["model_wise"]["test_error_peak_width"]
        thr = g["model_wise"]["interpolation_threshold"]
        parts.append(f"noise {g['noise']}: {agreement_text('test error peak', a, 'runs')}, "
                     f"{agreement_text('interpolation threshold', thr, 'runs')}")
        if a["value"] is not None and 2 * a["count"] > a["of"]:
            best = "shown"
    if not study["groups"]:
        best = "unknown"
    return best, "; ".join(parts)


def _figure_width(study: dict[str, Any]) -> int | None:
    """The width the one-width study figures draw: the largest width every group has."""
    sets = [{int(r["width"]) for r in g["per_width"]} for g in study["groups"]]
    common = set.intersection(*sets) if sets else set()
    return max(common) if common else None


def verdict_spectrum(study: dict[str, Any]) -> tuple[str, str]:
    """R_t peak at the width the figure draws (the largest): shown if, for some noise rate,
    most runs find a T_R,peak there; the other widths are counted for information only (the
    figure does not draw them)."""
    width = _figure_width(study)
    found = total = 0
    parts, best = [], "not"
    for g in study["groups"]:
        n = len(g["runs"])
        for row in g["per_width"]:
            total += 1
            found += 2 * row["T_R_peak"]["n"] > n
            if row["width"] == width:
                k = row["T_R_peak"]["n"]
                parts.append(f"noise {g['noise']}: found in {k} of {n} runs")
                if 2 * k > n:
                    best = "shown"
    if total == 0 or width is None:
        return "unknown", "no spectrum events"
    return best, (f"at width {width} (drawn), a T_R,peak (R_t rising again after its minimum): "
                  f"{'; '.join(parts)}; over all widths (not drawn) most runs find one at "
                  f"{found} of {total} (noise rate, width) combinations")


def verdict_fit(study: dict[str, Any]) -> tuple[str, str]:
    f = study["fit"]["all"]["T_R_peak_vs_T_E_peak"]
    if f["slope_ci"] is None:
        return "unknown", f"{fit_text(f)} (a confidence interval needs n >= 3 pairs)"
    lo = f["slope_ci"][0]
    return ("shown" if lo > 0 else "not"), fit_text(f) + (
        ": the slope's interval lies above 0" if lo > 0 else
        ": the slope's interval includes 0 or lies below it")


def verdict_hessian(study: dict[str, Any]) -> tuple[str, str]:
    """Shown if, for some noise rate, the agreed model-wise peaks of the top Hessian eigenvalue
    and of the test error are at the same width; the epoch-wise means are listed."""
    parts, best = [], "not"
    for g in study["groups"]:
        h = g["model_wise"]["hessian_peak_width"]
        e = g["model_wise"]["test_error_peak_width"]
        epochs = ", ".join(
            f"w{r['width']} {r['T_H_peak']['mean']:.0f} vs {r['T_E_peak']['mean']:.0f}"
            for r in g["per_width"]
            if r["T_H_peak"]["mean"] is not None and r["T_E_peak"]["mean"] is not None)
        parts.append(f"noise {g['noise']}: {agreement_text('Hessian peak', h, 'runs')}, "
                     f"{agreement_text('test error peak', e, 'runs')}; mean T_H,peak vs "
                     f"T_E,peak (epochs): {epochs or 'no width with both'}")
        if h["value"] is not None and h["value"] == e["value"] \
                and 2 * h["count"] > h["of"] and 2 * e["count"] > e["of"]:
            best = "shown"
    if not study["groups"]:
        best = "unknown"
    return best, "; ".join(parts)


def verdict_sharpness(study: dict[str, Any]) -> tuple[str, str]:
    """Shown if in most runs the tangent Hessian's model-wise peak (largest volume; noisy
    points, else the first subset measured) is within one width of the run's interpolation
    threshold."""
    near = total = 0
    parts = []
    for r in study["reports"]:
        subset, peak = sharpness_peak(r, "hessian")
        if subset is None:
            continue
        thr = (r.get("model_wise") or {}).get("interpolation_threshold")
        widths = [int(w) for w in r.get("widths", [])]
        total += 1
        if peak is not None and thr is not None and peak in widths and thr in widths:
            near += abs(widths.index(peak) - widths.index(thr)) <= 1
        parts.append(f"{Path(r['cube']).parent.name or r['cube']}: {subset} peak "
                     f"{'none' if peak is None else f'w{peak}'}, threshold "
                     f"{'none' if thr is None else f'w{thr}'}")
    if total == 0:
        return "unknown", "no run with sharpness peaks"
    state = "shown" if 2 * near > total else "not"
    return state, (f"the tangent Hessian (largest volume) peaks within one width of the "
                   f"interpolation threshold in {near} of {total} runs ({'; '.join(parts)})")


CLAIMS = {
    "double-descent": (
        "Gamba et al. (2023) and the deep double-descent literature: with label noise, the "
        "final test error against model width rises to a peak near the interpolation "
        "threshold (the smallest width that fits the noisy training set) and then descends "
        "again; more label noise makes the peak more pronounced.", verdict_double_descent),
    "spectrum": (
        "Zhang & Wu (2021, §3.2, Fig. 1-2): the high-frequency ratio R_t of the learned "
        "function first falls, then rises while the network memorizes the noisy labels and "
        "peaks (T_R,peak) near the test error's epoch-wise peak (T_E,peak).", verdict_spectrum),
    "sharpness": (
        "Gamba et al. (2023, §4.1-4.2, Fig. 2-3): the input-space sharpness of the loss "
        "(Jacobian norm and tangent Hessian, at the points and over SVD-erasure volumes) "
        "peaks at the interpolation threshold, near the test-error peak, and falls as the "
        "models grow; the peaks are considerably more marked around noisy labels.",
        verdict_sharpness),
    "hessian": (
        "Gamba et al. (2023) find the input-space sharpness peaking with the test error at the "
        "interpolation threshold; the question here (no paper of docs/ claims it) is whether "
        "the parameter-space curvature (PyHessian's top eigenvalue of the training loss) peaks "
        "at the same width, model-wise, and near the same epoch, epoch-wise.", verdict_hessian),
    "fit": (
        "Zhang & Wu (2021, Fig. 6a): across models and runs, T_R,peak grows linearly with "
        "T_E,peak (a positive correlation), so the second descent of the test error can be "
        "predicted from the training set alone.", verdict_fit),
}


def _figures(study: dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    """``(kind, title, base64 PNG or None, why not)`` of every study figure."""
    from ..plot import KIND_TABLE, PlotOptions
    from .figures import draw_fit, study_drawer

    def row(name: str, title: str) -> tuple[str, str, str, Callable[[], Figure]]:
        return (name, title, KIND_TABLE[name].probe,
                lambda: study_drawer(name)(study, PlotOptions()))

    probes = {p for r in study["runs"] for p in r.get("configs", {})}
    out: list[tuple[str, str, str | None, str]] = []
    for kind, title, need, fn in (
            row("double-descent", "Double descent over width, band over seeds"),
            row("spectrum", "R_t over epochs, band over seeds"),
            ("fit", "T_R,peak against T_E,peak over all runs", "spectrum",
             lambda: draw_fit(study)),
            row("sharpness", "Input-space sharpness against width, band over seeds"),
            row("hessian", "Top Hessian eigenvalue over width and epochs, band over seeds")):
        if need not in probes:
            out.append((kind, title, None, f"no '{need}' probe in the cubes"))
            continue
        try:
            out.append((kind, title, _png(fn()), ""))
        except CkptError as exc:
            out.append((kind, title, None, str(exc)))
    return out


class _Paths:
    """How the page names the machine's paths: relative to ``base`` (the report's folder) when
    under it, else the last two parts (``run/analysis.h5``); never an absolute path."""

    def __init__(self, study: dict[str, Any], base: str | os.PathLike[str] | None) -> None:
        self.base = Path(base).resolve() if base is not None else None
        known = {str(x) for r in study["runs"] for x in (r.get("cube"), r.get("source")) if x}
        self.subs: list[tuple[str, str]] = []
        for path in known:
            shown = self.show(path)
            for form in {path, str(Path(path).resolve())}:
                if form != shown and len(form) > 1:
                    self.subs.append((form, shown))
        self.subs.sort(key=lambda t: -len(t[0]))  # the longest first: a cube inside its source

    def show(self, path: Any) -> str:
        if path is None:
            return ""
        p = Path(str(path))
        full = p.resolve()
        if self.base is not None and full.is_relative_to(self.base):
            return str(full.relative_to(self.base)) or "."
        if not p.is_absolute() and not str(p).startswith(".."):
            return str(p)
        return str(Path(*full.parts[-2:])) if len(full.parts) > 2 else full.name

    def text(self, s: str) -> str:
        """``s`` with every known path (cubes, run folders) in its shown form."""
        for old, new in self.subs:
            s = s.replace(old, new)
        return s

    def json(self, value: Any) -> Any:
        """``value`` (JSON-like) with absolute path strings shown as :meth:`show` does."""
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, str):
            if os.path.isabs(value) and os.sep in value.strip(os.sep):
                return self.show(value)
            return self.text(value)
        return value


def render_html(study: dict[str, Any], figures: bool = True,
                base: str | os.PathLike[str] | None = None) -> str:
    """The study as one self-contained HTML page (see the module docstring): the results
    first (event tables, figures with their verdicts, notes), then the runs, configuration and
    provenance folded in a ``<details>`` block. Paths are shown relative to ``base`` (the
    page's folder) or by their last two parts, never as the machine's absolute paths."""
    runs = study["runs"]
    prov = study["provenance"]
    paths = _Paths(study, base)
    n_complete = sum(1 for r in runs if r.get("complete", True) and not r.get("being_written"))
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>ckpt-analyzer study report</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>Study of {study['n_runs']} run(s)</h1>"]
    names = ", ".join(str(r.get("name")) for r in runs)
    parts.append(f"<p>{escape(names)}: {n_complete} of {len(runs)} complete (every planned "
                 "cell of every probe measured). Runs, configuration and provenance are at the "
                 "end of the page.</p>")
    p = study.get("parameters") or {}
    parts.append(f"<p>Events: patience T = {escape(str(p.get('patience')))} epochs, window "
                 f"ΔT = {escape(str(p.get('window')))} epochs, R_t on the "
                 f"{escape(str(p.get('subset')))} subset; mean ± sample standard deviation "
                 "(ddof = 1) over the runs of each noise rate; (k/n): found in k of n runs; "
                 "unresolved: the saves near the event are further apart than the patience "
                 "(the reasons are in the notes).</p>")
    # -- event tables
    parts.append("<h2>Events</h2>")
    for g in study["groups"]:
        n = len(g["runs"])
        parts.append(f"<h3>Label noise {escape(g['noise'])}: {n} run(s), seeds "
                     f"{escape(', '.join(map(str, g['seeds'])))}</h3>")
        parts.append(_table(["width", *[h for _, h in COLUMNS]],
                            [[pw["width"], *[mean_std(pw[k], digits_of(k), of=n) for k, _ in COLUMNS]]
                             for pw in g["per_width"]]))
        rows = []
        for key, label in MODEL_FIELDS.items():
            a = g["model_wise"][key]
            if key == "hessian_peak_width" and all(v is None for v in a["values"]):
                continue
            rows.append([label, agreement_text("", a, "runs").strip(),
                         ", ".join("none" if v is None else str(v) for v in a["values"])])
        parts.append(_table(["model-wise event", "agreement", "per run"], rows, left=3))
        parts.append(_table(["PCC", "mean ± std", "n"],
                            [["R_k train vs test (mean over k >= 1)",
                              mean_std(g["pcc"]["pcc_R"]), g["pcc"]["pcc_R"]["n"]],
                             ["train vs test error", mean_std(g["pcc"]["pcc_error"]),
                              g["pcc"]["pcc_error"]["n"]]]))
    parts.append("<h3>Fits over all runs (Zhang &amp; Wu Fig. 6)</h3>")
    parts.append(_table(["y vs x", "fit"], [
        ["T_R,peak vs T_E,peak", fit_text(study["fit"]["all"]["T_R_peak_vs_T_E_peak"])],
        ["T_R,peak vs T_dP,peak", fit_text(study["fit"]["all"]["T_R_peak_vs_T_dP_peak"])]],
        left=2))
    # -- figures
    parts.append("<h2>Figures</h2>")
    if figures:
        for kind, title, png, why in _figures(study):
            claim, judge = CLAIMS[kind]
            state, text = judge(study)
            img = (f"<img alt='{escape(title)}' src='data:image/png;base64,{png}'>" if png
                   else f"<p><em>not drawn: {escape(paths.text(why))}</em></p>")
            if not png and state == "shown":  # no figure shows it here
                state = "unknown"
            parts.append(f"<figure id='fig-{kind}'><h3>{escape(title)}</h3>{img}"
                         f"<figcaption class='claim'><p><b>The paper:</b> {escape(claim)}</p>"
                         f"<p>{_verdict(state, paths.text(text))}</p></figcaption></figure>")
    if study["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(paths.text(n))}</li>"
                                                     for n in study["notes"]) + "</ul>")
    # -- configuration and provenance, folded
    parts.append("<details id='configuration'><summary><b>Runs, configuration and "
                 "provenance</b></summary>")
    parts.append("<h2>Runs</h2>")
    parts.append(_table(["run", "seed", "label noise", "dataset", "arch", "complete", "cube",
                         "source run folder"],
                        [[r.get("name"), r.get("seed"), r.get("noise"), r.get("dataset"),
                          r.get("arch"),
                          "yes" if r.get("complete", True) and not r.get("being_written")
                          else "partial", paths.show(r.get("cube")),
                          paths.show(r.get("source"))] for r in runs],
                        left=1))
    first = next((r.get("run_json") for r in runs if r.get("run_json")), None)
    if first:
        common = {k: v for k, v in first.items()
                  if all((r.get("run_json") or {}).get(k) == v for r in runs)}
        differ = ", ".join(sorted(set(first) - set(common))) or "none"
        shown = json.dumps(paths.json(common), indent=2, default=str)
        parts.append("<h3>Run configuration</h3>"
                     f"<p>Settings shared by every run (differing: {escape(differ)}):</p>"
                     f"<pre>{escape(shown, quote=False)}</pre>")
    parts.append("<h3>Provenance</h3>")
    parts.append(_table(["", "value"], [["ckpt-analyzer version (this report)", prov["version"]],
                                         ["cubes", "; ".join(paths.show(c)
                                                             for c in prov["cubes"])],
                                         ["source run folders",
                                          "; ".join(paths.show(c) for c in prov["sources"])]]))
    configs = json.dumps(paths.json(prov["probe_configs"]), indent=2, sort_keys=True)
    parts.append("<p>Probe configs (identical in every cube that has the probe):</p>"
                 f"<pre>{escape(configs, quote=False)}</pre>")
    parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(study: dict[str, Any], output: str | os.PathLike[str],
               inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Write :func:`render_html` to ``output`` atomically; refuses (UsageError) an ``output``
    that is one of ``inputs`` or an existing file that is not an HTML page."""
    out = check_output(output, "html", inputs, "--html")
    page = render_html(study, base=out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, tmp=out.with_name(f".{out.name}.tmp")) as tmp:
            Path(tmp).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CkptError(f"cannot write the HTML report ({exc.strerror or exc})", out) from None
    return out
