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
  seeds) marked and its test-error peak width as a dotted line; (b) the top eigenvalue over
  epochs of one width (default the largest) with its band and the mean T_H,peak and T_E,peak
  of the report. Subset ``train`` by default.

* ``sharpness``: Gamba et al.'s input-space Jacobian and tangent Hessian norms against width
  (each width at the last epoch its sharpness was measured), one panel per metric and subset
  (clean and noisy by default), mean ± std band over seeds per noise rate for the largest
  volume (solid) and the points themselves (volume 0, dashed), each rate's agreed peak width
  of the largest volume marked and its agreed interpolation threshold as a dotted line.

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

* ``weights-spectrum``: the power-law exponent α of each layer (the first six) over epochs for
  one width (default the largest), mean ± std band over seeds per noise rate, WeightWatcher's
  2 ≤ α ≤ 6 shaded; a layer without a fit (fewer eigenvalues than ``min_evals``) says so.

Curves of different runs are put on the epochs they share (a note says when the save grids
differ). Every plot kind can be drawn over several cubes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import atomic_path, check_output
from ..cube.read import load_probe, read_cube_info
from ..errors import CkptError, UsageError
from ..plot import FORMATS, PlotOptions, kind_spec
from ..plot._common import line_colors, new_figure, symlog_axis, width_axis
from ._common import (
    _band,
    _common_epochs,
    _common_widths,
    _groups,
    _load_all,
    _mark_peak,
    _on,
    _pick_width,
    _title,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def study_drawer(kind: str) -> Callable[[dict[str, Any], PlotOptions], Figure]:
    """The study drawer of ``kind`` that :data:`ckpt_analyzer.plot.KIND_TABLE` names
    (``module.function`` under :mod:`ckpt_analyzer.study`); one UsageError line for an unknown
    kind or one without a figure over several cubes."""
    module, _, function = str(kind_spec(kind, several=True).study).rpartition(".")
    fn: Any = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    return fn  # type: ignore[no-any-return]


def make_study_figure(study: dict[str, Any], kind: str, opts: PlotOptions | None = None
                      ) -> Figure:
    """The figure of ``kind`` (a :data:`ckpt_analyzer.plot.KIND_TABLE` kind with a study
    drawer) over the study's cubes."""
    check_kind(kind, opts)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CkptError("matplotlib is not installed: pip install 'ckpt-analyzer[plot]'") \
            from None
    return study_drawer(kind)(study, opts or PlotOptions())


def check_kind(kind: str, opts: PlotOptions | None = None) -> None:
    """UsageError unless ``kind`` can be drawn over several cubes with ``opts``."""
    kind_spec(kind, several=True)
    if opts is not None and opts.epochs is not None:
        raise UsageError("--epochs is not yet supported for several cubes")


def _figure_output(output: str | os.PathLike[str],
                   inputs: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, str]:
    """``(path, format)`` of a figure's ``-o``; refuses an unknown format, one of ``inputs``
    and an existing file of another kind."""
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"-o {out}: unsupported format '{out.suffix or '(none)'}' "
                         "(use .png, .pdf or .svg)")
    return check_output(out, fmt, inputs), fmt


def save_figure(fig: Figure, output: str | os.PathLike[str], dpi: int = 150,
                inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    out, fmt = _figure_output(output, inputs)
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
    _figure_output(output, cubes)  # before the work: never over a cube
    for c in cubes:
        read_cube_info(c)
    study = load_study(cubes, allow_mixed=allow_mixed)
    return save_figure(make_study_figure(study, kind, o), output, o.dpi, cubes)


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
