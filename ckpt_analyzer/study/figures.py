"""Figures of a study: one line per label-noise rate, a band over the seeds.

* ``double-descent``: (a) final test error (solid) and train error (dashed) against width,
  mean over seeds with a mean ± std band, one colour per noise rate, each rate's model-wise
  test-error peak (agreement over seeds) marked; (b) test error over epochs of one width
  (default the largest) with its band.
* ``spectrum``: R_t = Σ_{k≥1} R_k,t over epochs for one width (default the largest), subset
  ``train`` by default, mean ± std band over seeds per noise rate, with the mean T_R,peak and
  T_E,peak of the report marked.

* ``hessian``: (a) the top Hessian eigenvalue at the last checkpoint against width, mean ±
  std band over seeds per noise rate, each rate's model-wise Hessian peak (agreement over
  seeds) marked; (b) the top eigenvalue over epochs of one width (default the largest) with its
  band and the mean T_H,peak and T_E,peak of the report. Subset ``train`` by default.

* ``sharpness``: Gamba et al.'s input-space Jacobian and tangent Hessian norms against width
  (each width at the last epoch its sharpness was measured), one panel per metric and subset
  (clean and noisy by default), mean ± std band over seeds per noise rate for the largest
  volume (solid) and the points themselves (volume 0, dashed), each rate's agreed peak width
  of the largest volume marked.

* ``interpolation``: Fridovich-Keil et al.'s mean softmax change ``cdn`` along the paths
  against λ for one width (default the largest) at each run's last measured epoch, and the
  paths' total variation ``tv`` against width, one column per path kind (within, between
  classes), mean ± std band over seeds per noise rate.

* ``normalization``: Liao et al.'s test against train cross-entropy, raw and layerwise
  normalized, every (epoch, width) cell of every run, one colour per noise rate, each rate's
  pooled least-squares line and its runs' Pearson r (mean ± std).
* ``landscape``: Li et al.'s 1-D loss slice (``--subset``, default train; the β = 0 row of a
  2-D grid) for one width at each run's last measured epoch, and the barrier height to the
  width's last checkpoint over epochs, mean ± std band over seeds per noise rate.

Curves of different runs are put on the epochs they share (a note says when the save grids
differ). ``weights-spectrum`` is not yet supported for several cubes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import atomic_path
from ..cube.read import load_probe, read_cube_info
from ..errors import CkptError, UsageError
from ..plot import FORMATS, PlotOptions
from ..plot._common import line_colors, new_figure, symlog_axis, width_axis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Kinds drawn over several cubes.
STUDY_KINDS = ("double-descent", "spectrum", "hessian", "sharpness", "interpolation",
               "normalization", "landscape")


def _band(ax: Any, x: np.ndarray, stack: np.ndarray, color: Any, label: str,
          ls: str = "-", marker: str | None = None) -> None:
    """Mean line of ``stack`` (runs, points) with a mean ± std band (std with ddof = 1)."""
    ok = np.isfinite(stack).any(axis=0)
    if not ok.any():
        return
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(stack[:, ok], axis=0)
        n = np.isfinite(stack[:, ok]).sum(axis=0)
        std = np.where(n >= 2, np.nanstd(stack[:, ok], axis=0, ddof=1) if stack.shape[0] > 1
                       else 0.0, 0.0)
    ax.plot(x[ok], mean, ls=ls, marker=marker, color=color, lw=1.8, label=label)
    if stack.shape[0] > 1:
        ax.fill_between(x[ok], mean - std, mean + std, color=color, alpha=0.2, lw=0)


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a: Any) -> None:
        self._w.__exit__(*a)


def _mark_peak(ax: Any, agree: dict[str, Any], widths: list[int], stack: np.ndarray,
               color: Any, scale: float = 1.0) -> None:
    """The agreed model-wise peak (``agreement`` dict) as a marker on the mean curve of
    ``stack`` (runs, widths), labelled with how many runs agree."""
    if agree["value"] is None or int(agree["value"]) not in widths:
        return
    with _quiet():
        y = float(np.nanmean(stack[:, widths.index(int(agree["value"]))])) * scale
    ax.plot([agree["value"]], [y], "v", color=color, mec="black", ms=10,
            label=f"peak w = {agree['value']} ({agree['count']}/{agree['of']} runs)")


def _groups(study: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(g["noise"], list(g["cubes"])) for g in study["groups"]]


def _common_epochs(arrays: Sequence[np.ndarray], notes: list[str]) -> np.ndarray:
    sets = [set(int(e) for e in a.tolist()) for a in arrays]
    common = set.intersection(*sets) if sets else set()
    if any(s != sets[0] for s in sets):
        notes.append("the runs were saved at different epochs: curves use the "
                     f"{len(common)} epochs they share")
    return np.array(sorted(common), dtype=np.int64)


def _on(src: np.ndarray, vals: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    pos = {int(e): i for i, e in enumerate(src.tolist())}
    return np.array([vals[pos[int(e)]] for e in epochs.tolist()], dtype=np.float64)


def _pick_width(widths: Sequence[int], width: int | None) -> int:
    if width is not None:
        if width not in widths:
            raise UsageError(f"--width {width}: not in every cube (common widths: "
                             f"{', '.join(map(str, widths))})")
        return width
    if not widths:
        raise CkptError("the cubes share no width")
    return max(widths)


def _load_all(groups: list[tuple[str, list[str]]], probe: str, metrics: tuple[str, ...],
              kind: str, subset: str | None = None, **sel: Any) -> dict[str, Any]:
    """Each cube's ``probe`` group (only ``metrics``); CkptError naming the cube without it,
    UsageError when ``subset`` is given and the first metric was not measured on it."""
    per_cube: dict[str, Any] = {}
    for _, cubes in groups:
        for c in cubes:
            data = load_probe(c, probe, metrics)
            if data is None:
                raise CkptError(f"no '{probe}' probe, needed by --kind {kind}", c)
            if subset is not None and data.get(metrics[0], subset=subset, **sel) is None:
                raise UsageError(f"--subset {subset}: the {probe} of {c} was not measured on it")
            per_cube[c] = data
    return per_cube


def _shared_coord(per_cube: dict[str, Any], name: str, differ: str) -> np.ndarray:
    """The numeric coordinate ``name`` that every cube's probe shares; UsageError ``differ``."""
    values = {tuple(np.round(np.asarray(d.coords.get(name, ()), dtype=float), 12))
              for d in per_cube.values()}
    if len(values) != 1:
        raise UsageError(differ)
    return np.array(next(iter(values)))


def _common_widths(per_cube: dict[str, Any]) -> list[int]:
    return sorted(set.intersection(*[{int(w) for w in d.widths.tolist()}
                                     for d in per_cube.values()]))


def draw_double_descent(study: dict[str, Any], opts: PlotOptions) -> Figure:
    notes: list[str] = []
    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    fig = new_figure(12.0, 4.6)
    a1, a2 = fig.subplots(1, 2)
    all_widths = sorted({w for g in study["groups"] for w in g["widths"]})
    per_cube: dict[str, Any] = {}
    for _, cubes in groups:
        for c in cubes:
            m = load_probe(c, "metrics", ("error",))
            if m is None or m.get("error", subset="test") is None:
                raise CkptError("no 'metrics' probe with a 'test' subset, needed by "
                                "--kind double-descent", c)
            per_cube[c] = m
    width = _pick_width(_common_widths(per_cube), opts.width)
    other = opts.subset or "train"
    epochs = _common_epochs([m.epochs for m in per_cube.values()], notes)
    for (noise, cubes), color in zip(groups, colors, strict=True):
        # (a) final errors against width
        fin_t = np.full((len(cubes), len(all_widths)), np.nan)
        fin_o = np.full_like(fin_t, np.nan)
        curves = np.full((len(cubes), epochs.size), np.nan)
        for i, c in enumerate(cubes):
            m = per_cube[c]
            from .. import events as an

            t = m.get("error", subset="test")
            o = m.get("error", subset=other)
            for j, w in enumerate(m.widths.tolist()):
                k = all_widths.index(int(w))
                fin_t[i, k] = an.last_finite(t[:, j])  # type: ignore[index]
                if o is not None:
                    fin_o[i, k] = an.last_finite(o[:, j])
            jw = m.column(width)
            curves[i] = _on(m.epochs, t[:, jw], epochs)  # type: ignore[index]
        label = f"noise {noise} ({len(cubes)} run{'s' if len(cubes) > 1 else ''})"
        _band(a1, np.array(all_widths, dtype=float), 100 * fin_t, color, f"{label}: test",
              marker="o")
        _band(a1, np.array(all_widths, dtype=float), 100 * fin_o, color, f"{other}", ls="--")
        g = next(g for g in study["groups"] if g["noise"] == noise)
        _mark_peak(a1, g["model_wise"]["test_error_peak_width"], all_widths, fin_t, color, 100)
        _band(a2, epochs.astype(float), 100 * curves, color, label)
    width_axis(a1, all_widths)
    a1.set_ylabel("error at the last checkpoint (%)")
    a1.set_ylim(0, 100)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    a1.set_title("(a) model-wise: mean ± std over seeds", fontsize=10)
    if epochs.size:
        symlog_axis(a2, epochs.astype(float))
    a2.set_xlabel("epoch (symlog scale, 0 = initialization)")
    a2.set_ylabel("test error (%)")
    a2.set_ylim(0, 100)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    a2.set_title(f"(b) test error of width {width} over training, mean ± std", fontsize=10)
    fig.suptitle(_title(study, "double descent") + ("\n" + "; ".join(notes) if notes else ""),
                 fontsize=10)
    return fig


def draw_spectrum(study: dict[str, Any], opts: PlotOptions) -> Figure:
    notes: list[str] = []
    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    subset = opts.subset or "train"
    per_cube = _load_all(groups, "spectrum", ("R",), "spectrum", subset)
    width = _pick_width(_common_widths(per_cube), opts.width)
    epochs = _common_epochs([s.epochs for s in per_cube.values()], notes)
    fig = new_figure(9.0, 5.0)
    ax = fig.add_subplot()
    for (noise, cubes), color in zip(groups, colors, strict=True):
        stack = np.full((len(cubes), epochs.size), np.nan)
        for i, c in enumerate(cubes):
            sp = per_cube[c]
            R = sp.get("R", subset=subset)[:, sp.column(width), 1:]  # type: ignore[index]
            stack[i] = _on(sp.epochs, R.sum(axis=1), epochs)
        _band(ax, epochs.astype(float), stack, color,
              f"noise {noise} ({len(cubes)} run{'s' if len(cubes) > 1 else ''})")
        g = next(g for g in study["groups"] if g["noise"] == noise)
        row = next((r for r in g["per_width"] if r["width"] == width), None)
        for key, ls in (("T_R_peak", ":"), ("T_E_peak", "--")):
            if row is not None and row[key]["mean"] is not None:
                ax.axvline(row[key]["mean"], color=color, ls=ls, lw=1.2)
    if epochs.size:
        symlog_axis(ax, epochs.astype(float))
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls=":", label="mean $T_{R,peak}$"),
                Line2D([], [], color="0.3", ls="--", label="mean $T_{E,peak}$")]
    ax.legend(handles=handles, fontsize=8)
    ax.set_xlabel("epoch (symlog scale, 0 = initialization)")
    ax.set_ylabel(r"$R_t = \sum_{k \geq 1} R_{k,t}$")
    ax.grid(alpha=0.3)
    ax.set_title(_title(study, f"R_t of width {width} on the {subset} subset, mean ± std over "
                        "seeds") + ("\n" + "; ".join(notes) if notes else ""),
                 fontsize=10, loc="left")
    return fig


def draw_hessian(study: dict[str, Any], opts: PlotOptions) -> Figure:
    from .. import events as an

    notes: list[str] = []
    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    subset = opts.subset or "train"
    per_cube = _load_all(groups, "hessian", ("eigenvalues",), "hessian", subset, k=0)
    all_widths = sorted({int(w) for h in per_cube.values() for w in h.widths.tolist()})
    width = _pick_width(_common_widths(per_cube), opts.width)
    epochs = _common_epochs([h.epochs for h in per_cube.values()], notes)
    fig = new_figure(12.0, 4.6)
    a1, a2 = fig.subplots(1, 2)
    values: list[np.ndarray] = []
    for (noise, cubes), color in zip(groups, colors, strict=True):
        final = np.full((len(cubes), len(all_widths)), np.nan)
        curves = np.full((len(cubes), epochs.size), np.nan)
        for i, c in enumerate(cubes):
            hs = per_cube[c]
            top = hs.get("eigenvalues", subset=subset, k=0)
            for j, w in enumerate(hs.widths.tolist()):
                final[i, all_widths.index(int(w))] = an.last_finite(top[:, j])
            curves[i] = _on(hs.epochs, top[:, hs.column(width)], epochs)
        values += [final, curves]
        label = f"noise {noise} ({len(cubes)} run{'s' if len(cubes) > 1 else ''})"
        _band(a1, np.array(all_widths, dtype=float), final, color, label, marker="o")
        g = next(g for g in study["groups"] if g["noise"] == noise)
        if subset == "train":  # the report's model-wise Hessian peak is on the train subset
            _mark_peak(a1, g["model_wise"]["hessian_peak_width"], all_widths, final, color)
        _band(a2, epochs.astype(float), curves, color, label)
        row = next((r for r in g["per_width"] if r["width"] == width), None)
        for key, ls in (("T_H_peak", ":"), ("T_E_peak", "--")):
            if subset == "train" and row is not None and row[key]["mean"] is not None:
                a2.axvline(row[key]["mean"], color=color, ls=ls, lw=1.2)
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    for ax in (a1, a2):
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        ax.set_ylabel(f"top Hessian eigenvalue ({subset} loss)")
        ax.grid(alpha=0.3)
    width_axis(a1, all_widths)
    a1.legend(fontsize=7)
    a1.set_title("(a) model-wise, last checkpoint: mean ± std over seeds", fontsize=10)
    if epochs.size:
        symlog_axis(a2, epochs.astype(float))
    a2.set_xlabel("epoch (symlog scale, 0 = initialization)")
    from matplotlib.lines import Line2D

    handles, _ = a2.get_legend_handles_labels()
    if subset == "train":
        handles += [Line2D([], [], color="0.3", ls=":", label="mean $T_{H,peak}$"),
                    Line2D([], [], color="0.3", ls="--", label="mean $T_{E,peak}$")]
    a2.legend(handles=handles, fontsize=7)
    a2.set_title(f"(b) width {width} over training, mean ± std", fontsize=10)
    fig.suptitle(_title(study, "top Hessian eigenvalue") + ("\n" + "; ".join(notes)
                                                           if notes else ""), fontsize=10)
    return fig


def sharpness_peaks(study: dict[str, Any], metric: str, subset: str
                    ) -> dict[str, dict[str, Any]]:
    """Per noise rate, the agreement over runs on the model-wise peak width of ``metric`` on
    ``subset`` at the largest volume (from each run's report)."""
    from .aggregate import agreement

    reports = {r["cube"]: r for r in study["reports"]}
    out = {}
    for g in study["groups"]:
        values = []
        for c in g["cubes"]:
            sh = (reports[c].get("model_wise") or {}).get("sharpness") or {}
            vols = sh.get("volumes") or []
            peaks = ((sh.get("peaks") or {}).get(metric) or {}).get(subset) or {}
            values.append(peaks.get(str(vols[-1])) if vols else None)
        out[g["noise"]] = agreement(values)
    return out


def draw_sharpness(study: dict[str, Any], opts: PlotOptions) -> Figure:
    from .. import events as an

    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    per_cube = _load_all(groups, "sharpness", ("jacobian", "hessian"), "sharpness")
    have = set.intersection(*[{str(x) for x in sh.coords.get("subset", ())}
                              for sh in per_cube.values()])
    if opts.subset is not None:
        if opts.subset not in have:
            raise UsageError(f"--subset {opts.subset}: not measured in every cube (common: "
                             f"{', '.join(sorted(have)) or 'none'})")
        subsets = [opts.subset]
    else:
        subsets = [x for x in ("clean", "noisy") if x in have] or sorted(have)[:1]
    if not subsets:
        raise CkptError("the cubes' sharpness probes share no subset")
    all_widths = sorted({int(w) for sh in per_cube.values() for w in sh.widths.tolist()})
    metrics = (("jacobian", r"Jacobian norm $\|\nabla_x \ell\|_2$"),
               ("hessian", "tangent Hessian norm"))
    fig = new_figure(5.2 * len(subsets), 8.0)
    axes = np.atleast_2d(fig.subplots(2, len(subsets), squeeze=False))
    for r, (metric, label) in enumerate(metrics):
        for col, subset in enumerate(subsets):
            ax = axes[r, col]
            agreed = sharpness_peaks(study, metric, subset)
            for (noise, cubes), color in zip(groups, colors, strict=True):
                last = np.full((len(cubes), len(all_widths)), np.nan)
                at_points = np.full_like(last, np.nan)
                for i, c in enumerate(cubes):
                    sh = per_cube[c]
                    values = sh.get(metric, subset=subset)  # (epoch, width, volume)
                    for j, w in enumerate(sh.widths.tolist()):
                        k = all_widths.index(int(w))
                        last[i, k] = an.last_finite(values[:, j, -1])
                        at_points[i, k] = an.last_finite(values[:, j, 0])
                runs = f"{len(cubes)} run{'s' if len(cubes) > 1 else ''}"
                x = np.array(all_widths, dtype=float)
                _band(ax, x, last, color, f"noise {noise} ({runs}): largest volume", marker="o")
                _band(ax, x, at_points, color, "at the points (volume 0)", ls="--")
                _mark_peak(ax, agreed[noise], all_widths, last, color)
            width_axis(ax, all_widths)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.set_title(f"{metric}, {subset} points", fontsize=10)
            ax.legend(fontsize=7)
    fig.suptitle(_title(study, "input-space sharpness at each width's last measured epoch, "
                               "mean ± std over seeds"), fontsize=10)
    return fig


def draw_interpolation(study: dict[str, Any], opts: PlotOptions) -> Figure:
    from .. import events as an

    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    per_cube = _load_all(groups, "interpolation", ("cdn", "tv"), "interpolation")
    kinds = [k for k in ("within", "between")
             if all(k in [str(x) for x in d.coords.get("kind", ())] for d in per_cube.values())]
    if not kinds:
        raise CkptError("the cubes' interpolation probes share no path kind")
    lam = _shared_coord(per_cube, "lambda", "the cubes' interpolation probes use different "
                        "lambda bins")
    width = _pick_width(_common_widths(per_cube), opts.width)
    all_widths = sorted({int(w) for d in per_cube.values() for w in d.widths.tolist()})
    fig = new_figure(5.2 * len(kinds), 8.0)
    axes = np.atleast_2d(fig.subplots(2, len(kinds), squeeze=False))
    for col, kind in enumerate(kinds):
        top, bottom = axes[0, col], axes[1, col]
        for (noise, cubes), color in zip(groups, colors, strict=True):
            curves = np.full((len(cubes), lam.size), np.nan)
            tv = np.full((len(cubes), len(all_widths)), np.nan)
            for i, c in enumerate(cubes):
                d = per_cube[c]
                cdn = d.get("cdn", kind=kind)  # (epoch, width, lambda)
                j = d.column(width)
                rows = np.flatnonzero(np.isfinite(cdn[:, j]).any(axis=1))
                if rows.size:
                    curves[i] = cdn[rows[-1], j]
                t = d.get("tv", kind=kind)
                for jj, w in enumerate(d.widths.tolist()):
                    tv[i, all_widths.index(int(w))] = an.last_finite(t[:, jj])
            runs = f"{len(cubes)} run{'s' if len(cubes) > 1 else ''}"
            _band(top, lam, curves, color, f"noise {noise} ({runs})")
            _band(bottom, np.array(all_widths, dtype=float), tv, color, f"noise {noise} ({runs})",
                  marker="o")
        top.set_xlabel(r"$\lambda$ along the path")
        top.set_ylabel(r"mean $\|y_\lambda - y_0\|_2$")
        top.set_title(f"{kind}-class paths, width {width}, last measured epoch", fontsize=10)
        width_axis(bottom, all_widths)
        bottom.set_ylabel("total variation along the path")
        bottom.set_title(f"{kind}-class paths: total variation, last measured epoch",
                         fontsize=10)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(_title(study, "softmax change along interpolation paths, mean ± std over "
                               "seeds"), fontsize=10)
    return fig


def draw_normalization(study: dict[str, Any], opts: PlotOptions) -> Figure:
    from .. import events as an

    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    per_cube = _load_all(groups, "normalization", ("loss", "normalized_loss"), "normalization")
    for c, d in per_cube.items():
        if d.get("loss", subset="train") is None or d.get("loss", subset="test") is None:
            raise CkptError("the normalization probe needs the train and test subsets "
                            "(--set normalization.subsets=train,test)", c)
    fig = new_figure(11.0, 4.8)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "(a) raw network f"),
                              (axes[1], "normalized_loss",
                               r"(b) normalized $\tilde f$ (layer norms divided out)")):
        everything = []
        for (noise, cubes), color in zip(groups, colors, strict=True):
            xs, ys, rs = [], [], []
            for c in cubes:
                d = per_cube[c]
                tr, te = d.get(metric, subset="train"), d.get(metric, subset="test")
                cols = [j for j, w in enumerate(d.widths.tolist())
                        if opts.width is None or int(w) == opts.width]
                x, y = tr[:, cols].ravel(), te[:, cols].ravel()
                ok = np.isfinite(x) & np.isfinite(y)
                xs.append(x[ok])
                ys.append(y[ok])
                rs.append(an.linear_fit(x[ok], y[ok]).r)
            x, y = np.concatenate(xs), np.concatenate(ys)
            if not x.size:
                continue
            everything += [x, y]
            r = summary_text([v for v in rs if np.isfinite(v)])
            ax.scatter(x, y, s=10, color=color, alpha=0.45, zorder=3,
                       label=f"noise {noise}: r = {r} over {len(cubes)} run(s)")
            fit = an.linear_fit(x, y)
            if np.isfinite(fit.slope):
                xg = np.array([x.min(), x.max()])
                ax.plot(xg, fit.slope * xg + fit.intercept, color=color, lw=1.5,
                        label=f"pooled least squares: slope {fit.slope:.3g}")
        if everything:
            lo = float(min(v.min() for v in everything))
            hi = float(max(v.max() for v in everything))
            ax.plot([lo, hi], [lo, hi], ls=":", color="0.5", lw=1, label="test = train")
        ax.set_xlabel("train cross-entropy (nats)")
        ax.set_ylabel("test cross-entropy (nats)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(study, "test vs train loss, every (epoch, width) of every run"),
                 fontsize=10)
    return fig


def summary_text(values: list[float]) -> str:
    """``mean ± std`` (sample std) of ``values``, ``mean`` alone for one, ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{float(np.mean(values)):.3f} ± {float(np.std(values, ddof=1)):.3f}"


def draw_landscape(study: dict[str, Any], opts: PlotOptions) -> Figure:
    notes: list[str] = []
    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    subset = opts.subset or "train"
    per_cube = _load_all(groups, "landscape", ("loss", "barrier"), "landscape", subset)
    alpha = _shared_coord(per_cube, "alpha", "the cubes' landscape probes use different grids "
                          "(r, steps)")
    width = _pick_width(_common_widths(per_cube), opts.width)
    epochs = _common_epochs([d.epochs for d in per_cube.values()], notes)
    fig = new_figure(12.0, 4.6)
    a1, a2 = fig.subplots(1, 2)
    for (noise, cubes), color in zip(groups, colors, strict=True):
        slices = np.full((len(cubes), alpha.size), np.nan)
        barrier = np.full((len(cubes), epochs.size), np.nan)
        for i, c in enumerate(cubes):
            d = per_cube[c]
            j = d.column(width)
            loss = d.get("loss", subset=subset)[:, j]  # (epoch, alpha[, beta])
            if loss.ndim == 3:  # a 2-D grid: its beta = 0 row
                loss = loss[:, :, loss.shape[2] // 2]
            rows = np.flatnonzero(np.isfinite(loss).any(axis=1))
            if rows.size:
                slices[i] = loss[rows[-1]]
            b = d.get("barrier", subset=subset)
            if b is not None:
                barrier[i] = _on(d.epochs, b[:, j], epochs)
        runs = f"{len(cubes)} run{'s' if len(cubes) > 1 else ''}"
        _band(a1, alpha, slices, color, f"noise {noise} ({runs})")
        _band(a2, epochs.astype(float), barrier, color, f"noise {noise} ({runs})")
    a1.set_xlabel(r"$\alpha$ along a filter-normalized direction")
    a1.set_ylabel(f"{subset} cross-entropy (nats)")
    a1.set_title(f"(a) width {width}, last measured epoch", fontsize=10)
    if epochs.size:
        symlog_axis(a2, epochs.astype(float))
    a2.set_xlabel("epoch (symlog scale, 0 = initialization)")
    a2.set_ylabel("barrier height to the last checkpoint (nats)")
    a2.set_title(f"(b) width {width}: barrier over training", fontsize=10)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(study, f"loss landscape on the {subset} subset, mean ± std over seeds")
                 + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    return fig


def _title(study: dict[str, Any], what: str) -> str:
    runs = study["runs"]
    ds = sorted({str(r.get("dataset")) for r in runs})
    arch = sorted({str(r.get("arch")) for r in runs})
    return f"{', '.join(arch)} on {', '.join(ds)}, {len(runs)} runs: {what}"


DRAW = {"double-descent": draw_double_descent, "spectrum": draw_spectrum,
        "hessian": draw_hessian, "sharpness": draw_sharpness,
        "interpolation": draw_interpolation, "normalization": draw_normalization,
        "landscape": draw_landscape}


def make_study_figure(study: dict[str, Any], kind: str, opts: PlotOptions | None = None
                      ) -> Figure:
    """The figure of ``kind`` over the study's cubes (only :data:`STUDY_KINDS`)."""
    check_kind(kind, opts)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CkptError("matplotlib is not installed: pip install 'ckpt-analyzer[plot]'") \
            from None
    return DRAW[kind](study, opts or PlotOptions())


def check_kind(kind: str, opts: PlotOptions | None = None) -> None:
    """UsageError unless ``kind`` can be drawn over several cubes with ``opts``."""
    from ..plot import KIND_TABLE

    if kind not in KIND_TABLE:
        from ..errors import unknown

        raise unknown("plot kind", kind, tuple(KIND_TABLE))
    if kind not in DRAW:
        raise UsageError(f"--kind {kind} is not yet supported for several cubes (supported: "
                         f"{', '.join(STUDY_KINDS)}); plot one cube at a time")
    if opts is not None and opts.epochs is not None:
        raise UsageError("--epochs is not yet supported for several cubes")


def save_figure(fig: Figure, output: str | os.PathLike[str], dpi: int = 150) -> Path:
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"-o {out}: unsupported format '{out.suffix or '(none)'}' "
                         "(use .png, .pdf or .svg)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, tmp=out.with_name(f".{out.name}.tmp")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    except OSError as exc:
        raise CkptError(f"cannot write the figure ({exc.strerror or exc})", out) from None
    return out


def plot_study(cubes: Sequence[str | os.PathLike[str]], kind: str,
               output: str | os.PathLike[str], opts: PlotOptions | None = None,
               allow_mixed: bool = False) -> Path:
    """Aggregate ``cubes`` (:func:`ckpt_analyzer.study.load_study`) and save ``kind``."""
    from .aggregate import load_study

    o = opts or PlotOptions()
    check_kind(kind, o)
    for c in cubes:
        read_cube_info(c)
    study = load_study(cubes, allow_mixed=allow_mixed)
    return save_figure(make_study_figure(study, kind, o), output, o.dpi)


def draw_fit(study: dict[str, Any]) -> Figure:
    """T_R,peak against T_E,peak, every width of every run (colour: noise rate), with the
    pooled least-squares line and its slope's confidence interval (Zhang & Wu Fig. 6a)."""
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    colors = line_colors(len(study["groups"]), "plasma")
    reports = {r["cube"]: r for r in study["reports"]}
    xs: list[float] = []
    markers = "os^Dv<>p"
    for n, (g, color) in enumerate(zip(study["groups"], colors, strict=True)):
        px, py = [], []
        for c in g["cubes"]:
            for row in reports[c]["per_width"]:
                if row.get("E_peak_found") and row.get("R_peak_found"):
                    px.append(row["T_E_peak"])
                    py.append(row["T_R_peak"])
        ax.plot(px, py, markers[n % len(markers)], color=color, alpha=0.7, mfc="none", mew=1.5,
                label=f"noise {g['noise']}")
        xs += px
    f = study["fit"]["all"]["T_R_peak_vs_T_E_peak"]
    if f["slope"] is not None and xs:
        x = np.linspace(min(xs), max(xs), 50)
        label = f"fit: slope {f['slope']:.2f}"
        if f["slope_ci"] is not None:
            label += f" [{f['slope_ci'][0]:.2f}, {f['slope_ci'][1]:.2f}]"
        ax.plot(x, f["intercept"] + f["slope"] * x, "k-", lw=1.2, label=label + f", n = {f['n']}")
    if not xs:
        from ..plot._common import no_data

        no_data(ax, "no width with both T_E,peak and T_R,peak found")
    ax.set_xlabel("$T_{E,peak}$ (epoch)")
    ax.set_ylabel("$T_{R,peak}$ (epoch)")
    ax.grid(alpha=0.3)
    if xs:
        ax.legend(fontsize=8)
    ax.set_title(_title(study, "T_R,peak vs T_E,peak"), fontsize=10, loc="left")
    return fig
