"""Study figures of the probes measured on a few epochs or pooled over cells: sharpness,
interpolation, normalization, landscape, weight spectra and the Hessian's top eigenvalue (the
kinds are described in :mod:`ckpt_analyzer.study.figures`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CkptError, UsageError
from ..plot import PlotOptions
from ..plot._common import line_colors, new_figure, no_data, symlog_axis, width_axis
from ._common import (
    _band,
    _common_epochs,
    _common_widths,
    _groups,
    _load_all,
    _mark_peak,
    _on,
    _pick_width,
    _shared_coord,
    _title,
)
from .aggregate import agreement, sharpness_peak, summarize
from .text import mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

def _mark_width(ax: Any, agree: dict[str, Any], color: Any, what: str) -> None:
    """A model-wise event of the report (``agreement`` dict) as a dotted vertical line at its
    agreed width, so a verdict that compares it with the figure's curves can be checked on the
    figure."""
    if agree.get("value") is None:
        return
    ax.axvline(float(agree["value"]), color=color, ls=":", lw=1.5,
               label=f"{what} w = {agree['value']} ({agree['count']}/{agree['of']} runs)")


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
            _mark_width(a1, g["model_wise"]["test_error_peak_width"], color, "test error peak")
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
    reports = {r["cube"]: r for r in study["reports"]}
    return {g["noise"]: agreement([sharpness_peak(reports[c], metric, subset)[1]
                                   for c in g["cubes"]]) for g in study["groups"]}


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
                g = next(g for g in study["groups"] if g["noise"] == noise)
                _mark_width(ax, g["model_wise"]["interpolation_threshold"], color,
                            "interpolation threshold")
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
            r = mean_std(summarize(rs))
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


def draw_weights_spectrum(study: dict[str, Any], opts: PlotOptions) -> Figure:
    notes: list[str] = []
    groups = _groups(study)
    colors = line_colors(len(groups), "plasma")
    per_cube = _load_all(groups, "weights_spectrum", ("alpha", "spectral_norm"),
                         "weights-spectrum")
    layer_sets = {tuple(str(x) for x in d.coords.get("layer", ())) for d in per_cube.values()}
    if len(layer_sets) != 1:
        raise UsageError("the cubes' weights_spectrum probes measured different layers")
    layers = list(next(iter(layer_sets)))
    width = _pick_width(_common_widths(per_cube), opts.width)
    epochs = _common_epochs([d.epochs for d in per_cube.values()], notes)
    shown = layers[:6]
    if len(layers) > len(shown):
        notes.append(f"the first {len(shown)} of {len(layers)} layers")
    fig = new_figure(3.6 * len(shown), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(shown), squeeze=False)[0])
    for ax, layer in zip(axes, shown, strict=True):
        k = layers.index(layer)
        drawn = False
        for (noise, cubes), color in zip(groups, colors, strict=True):
            stack = np.full((len(cubes), epochs.size), np.nan)
            for i, c in enumerate(cubes):
                d = per_cube[c]
                stack[i] = _on(d.epochs, d.values["alpha"][:, d.column(width), k], epochs)
            if np.isfinite(stack).any():
                runs = f"{len(cubes)} run{'s' if len(cubes) > 1 else ''}"
                _band(ax, epochs.astype(float), stack, color, f"noise {noise} ({runs})")
                drawn = True
        if drawn:
            ax.axhspan(2.0, 6.0, color="0.9", zorder=0, label="2 <= alpha <= 6")
            ax.legend(fontsize=7)
        else:
            no_data(ax, "no power-law fit\n(fewer eigenvalues\nthan min_evals)")
        if epochs.size:
            symlog_axis(ax, epochs.astype(float))
            ax.set_xlim(float(epochs.min()), float(epochs.max()))
        ax.set_xlabel("epoch (symlog scale)")
        ax.set_ylabel(r"tail exponent $\alpha$")
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(study, f"power-law exponent of the weight spectra, width {width}, "
                               "mean ± std over seeds")
                 + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    return fig
