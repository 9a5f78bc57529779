"""Figures of a cube (``ckpt-analyze plot``), after the papers' figures.

Kinds (:data:`KINDS`) and the probe group each needs:

* ``spectrum`` (spectrum; metrics optional): R_k heat map over epochs with contour lines, the
  noisy-subset and test error curves on a twin axis and the T_E,min / T_E,peak / T_R,peak
  events (Zhang & Wu Fig. 1-2). One width (default: the largest), subset ``train`` by default.
* ``double-descent`` (metrics): test error (solid) and ``--subset`` error (dashed, default
  train) per width over epochs; final errors against width with the interpolation threshold;
  the epoch × width heat map of the test error with each width's T_E,peak (Gamba Fig. 1c, 5).
* ``sharpness`` (sharpness; metrics optional): accuracy, loss, Jacobian and Hessian norms
  against width, one line per volume, a row per subset (clean and noisy by default), at each
  width's last checkpoint or at the one epoch chosen with ``--epochs`` (Gamba Fig. 2-3).
* ``interpolation`` (interpolation): mean softmax change along the paths against λ, within-
  and between-class panels; one line per epoch for one width (default), or one line per width
  at a single epoch when ``--epochs E`` is given without ``--width`` (Fridovich-Keil Fig. 11).
* ``normalization`` (normalization): test against train cross-entropy, raw and normalized, one
  point per (epoch, width) cell, each with its least-squares line and slope (Liao Fig. 2).

Epoch axes use a symmetric-log scale (linear on [0, 1], logarithmic above) so that epoch 0, the
initialization, is shown. matplotlib comes from the ``plot`` extra and is imported only here;
figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, so no global
pyplot state or interactive backend is touched (safe in notebooks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import events as an
from ._atomic import atomic_path
from .cube.read import CubeInfo, ProbeData, load_probe, read_cube_info
from .errors import CkptError, UsageError, did_you_mean, unknown

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "KINDS", "PROBE_OF", "PlotOptions", "make_figure", "plot"]

#: Plot kinds and the probe each one reads.
PROBE_OF = {"spectrum": "spectrum", "double-descent": "metrics", "sharpness": "sharpness",
            "interpolation": "interpolation", "normalization": "normalization"}
KINDS = tuple(PROBE_OF)
FORMATS = ("png", "pdf", "svg")
_MISSING_MPL = "matplotlib is not installed: pip install 'ckpt-analyzer[plot]'"
def _time_axis(info: CubeInfo) -> str:
    """Axis label of the cube's time axis (epochs or steps, root attribute ``time_unit``)."""
    return f"{info.time_unit} (symlog scale, 0 = initialization)"


@dataclass(frozen=True)
class PlotOptions:
    """What to draw of a cube.

    Attributes:
        width: the width of one-width figures (spectrum, interpolation); default the largest.
            For double-descent and normalization it restricts the curves/points to it.
        subset: spectrum subset (default train); second error curve of double-descent
            (default train); one sharpness row (default clean and noisy).
        epochs: restrict to these epochs (e.g. ``range(0, 101)``); sharpness uses the last
            selected epoch with data; interpolation with one epoch and no width draws one
            line per width.
        dpi: resolution of raster output.
    """

    width: int | None = None
    subset: str | None = None
    epochs: tuple[int, ...] | None = None
    dpi: int = 150


# ----------------------------------------------------------------------------- entry points


def _mpl() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise CkptError(_MISSING_MPL) from None
    return matplotlib


def make_figure(cube_path: str | os.PathLike[str], kind: str,
                options: PlotOptions | None = None) -> Figure:
    """The figure of ``kind`` for a cube (see the module docstring for the kinds)."""
    opts = options or PlotOptions()
    if kind not in PROBE_OF:
        raise unknown("plot kind", kind, KINDS)
    if opts.subset is not None and kind in ("interpolation", "normalization"):
        raise UsageError(f"--subset does not apply to --kind {kind}")
    if opts.width is not None and kind == "sharpness":
        raise UsageError("--width does not apply to --kind sharpness (it plots against width)")
    _mpl()
    info = read_cube_info(cube_path)
    probe = PROBE_OF[kind]
    if probe not in info.probes:
        raise CkptError(f"no '{probe}' probe in this cube, needed by --kind {kind}; compute it "
                        f"with: {info.rerun_hint(probe)}", info.path)
    draw = {"spectrum": _spectrum, "double-descent": _double_descent,
            "sharpness": _sharpness, "interpolation": _interpolation,
            "normalization": _normalization}[kind]
    return draw(info, opts)


def plot(cube_path: str | os.PathLike[str], kind: str, output: str | os.PathLike[str],
         options: PlotOptions | None = None) -> Path:
    """Draw ``kind`` and save it to ``output`` (.png, .pdf or .svg, written atomically)."""
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"-o {out}: unsupported format '{out.suffix or '(none)'}' "
                         f"(use .png, .pdf or .svg)")
    opts = options or PlotOptions()
    fig = make_figure(cube_path, kind, opts)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, tmp=out.with_name(f".{out.name}.tmp")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=opts.dpi)
    except OSError as exc:
        raise CkptError(f"cannot write the figure ({exc.strerror or exc})", out) from None
    return out


# ----------------------------------------------------------------------------- helpers


def _figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _load(info: CubeInfo, probe: str, metrics: Sequence[str] | None = None) -> ProbeData:
    pd = load_probe(info.path, probe, metrics)
    if pd is None:  # listed but unreadable; make_figure checked presence already
        raise CkptError(f"no '{probe}' probe in this cube; compute it with: "
                        f"{info.rerun_hint(probe)}", info.path)
    return pd


def _pick_width(pd: ProbeData, width: int | None, metric: str) -> int:
    """``width`` (checked) or the largest width with any computed cell."""
    widths = [int(w) for w in pd.widths.tolist()]
    if width is not None:
        if width not in widths:
            raise UsageError(f"--width {width}: not in this cube (widths: "
                             f"{', '.join(map(str, widths))})")
        return width
    arr = pd.values[metric]
    has = [j for j in range(len(widths))
           if np.isfinite(arr[:, j].reshape(arr.shape[0], -1)).any()]
    if not has:
        raise CkptError(f"the '{pd.name}' probe has no computed cells")
    return widths[max(has, key=lambda j: widths[j])]


def _pick_subset(pd: ProbeData, subset: str | None, default: str) -> str:
    have = [str(s) for s in pd.coords.get("subset", ())]
    s = subset or default
    if s not in have:
        raise UsageError(f"--subset {s}: the '{pd.name}' probe was not measured on it"
                         f"{did_you_mean(s, have)}")
    return s


def _epoch_mask(epochs: np.ndarray, opts: PlotOptions) -> np.ndarray:
    if opts.epochs is None:
        return np.ones(epochs.shape, dtype=bool)
    mask = np.isin(epochs, np.asarray(opts.epochs, dtype=np.int64))
    if not mask.any():
        lo, hi = min(opts.epochs), max(opts.epochs)
        raise UsageError(f"--epochs: no checkpoint in {lo}..{hi} in this cube (epochs "
                         f"{int(epochs.min())}..{int(epochs.max())})" if epochs.size
                         else "--epochs: the cube has no epochs")
    return mask


def _symlog(ax: Axes, epochs: np.ndarray, axis: str = "x") -> None:
    """Symmetric-log epoch axis (linear on [0, 1]) with readable integer ticks: the epochs
    themselves when there are few, else 0, 1, 2, 5, 10, 20, 50, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=1, linscale=0.5)
    e = np.unique(np.asarray(epochs, dtype=np.float64))
    if e.size <= 12:
        ticks = e.tolist()
    else:
        lo, hi = float(e.min()), float(e.max())
        ticks = []
        for mults in ((1, 2, 5), (1, 3), (1,)):
            ticks = [t for t in [0.0, *(m * 10.0 ** p for p in range(9) for m in mults)]
                     if lo <= t <= hi]
            if len(ticks) <= 12:
                break
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(NullLocator())


def _edges(ax: Axes, values: np.ndarray, axis: str = "x") -> np.ndarray:
    """Cell edges around ``values`` that are centred in the axis's transformed space."""
    tr = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    t = tr.transform(np.asarray(values, dtype=np.float64))
    if t.size == 1:
        e = np.array([t[0] - 0.25, t[0] + 0.25])
    else:
        mid = (t[1:] + t[:-1]) / 2
        e = np.concatenate(([t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]))
    return np.asarray(tr.inverted().transform(e))


def _width_axis(ax: Axes, widths: Sequence[int]) -> None:
    """Log2 width axis labelled with the widths themselves."""
    from matplotlib.ticker import FixedLocator, NullLocator

    if len(widths) > 1 and min(widths) > 0:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(widths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(w) for w in widths])
    ax.set_xlabel("width (base channels)")


def _colors(n: int, cmap: str = "viridis") -> list[Any]:
    from matplotlib import colormaps

    cm = colormaps[cmap]
    if n == 1:
        return [cm(0.45)]
    return [cm(0.05 + 0.85 * i / (n - 1)) for i in range(n)]


def _legend_bar(fig: Figure, axes: Any, colors: Sequence[Any], labels: Sequence[str],
                title: str) -> None:
    """A colour bar of discrete entries (one per line colour), labelled with ``labels``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    n = len(colors)
    sm = ScalarMappable(BoundaryNorm(np.arange(n + 1) - 0.5, n), ListedColormap(list(colors)))
    cb = fig.colorbar(sm, ax=axes, fraction=0.04, pad=0.01, aspect=max(10, 4 * n))
    step = max(1, int(np.ceil(n / 12)))
    cb.set_ticks(list(range(0, n, step)))
    cb.set_ticklabels([labels[i] for i in range(0, n, step)])
    cb.set_label(title)


def _stroke(color: str = "white", width: float = 3.0) -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=color)]


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.4", wrap=True)


def _threshold(info: CubeInfo) -> Any:
    """Interpolation threshold from the metrics probe, or None."""
    if "metrics" not in info.probes:
        return None
    m = load_probe(info.path, "metrics", ("error",))
    err = m.get("error", subset="train") if m else None
    if m is None or err is None:
        return None
    return an.interpolation_threshold(m.widths, an.last_finite(err))


# ----------------------------------------------------------------------------- spectrum


def _spectrum(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    sp = _load(info, "spectrum", ("R",))
    subset = _pick_subset(sp, opts.subset, "train")
    width = _pick_width(sp, opts.width, "R")
    j = sp.column(width)
    R = sp.get("R", subset=subset)[:, j]  # type: ignore[index]
    keep = _epoch_mask(sp.epochs, opts) & np.isfinite(R).all(axis=1)
    if not keep.any():
        raise CkptError(f"no computed spectrum cells for width {width} on subset '{subset}'"
                        + (" in the chosen epochs" if opts.epochs else ""), info.path)
    finite = np.isfinite(R).all(axis=1)
    all_epochs = sp.epochs[finite]
    R_all = R[finite][:, 1:]  # R_0 = 0 by definition
    epochs = sp.epochs[keep].astype(np.float64)
    ks = np.asarray(sp.coords["k"], dtype=np.float64)
    R = R[keep][:, 1:]
    ks = ks[1:]
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    _symlog(ax, epochs)
    mesh = ax.pcolormesh(_edges(ax, epochs), np.concatenate(([ks[0] - 0.5], ks + 0.5)), R.T,
                         cmap="viridis", norm=Normalize(np.nanmin(R), np.nanmax(R)),
                         shading="flat")
    if R.shape[0] >= 2 and R.shape[1] >= 2 and np.ptp(R) > 0:
        cs = ax.contour(epochs, ks, R.T, levels=6, colors="white", linewidths=0.7, alpha=0.9,
                        negative_linestyles="solid")
        ax.clabel(cs, fmt="%.1f", fontsize=7, colors="white")
    ax.set_xlim(*_edges(ax, epochs)[[0, -1]])
    ax.set_xlabel(_time_axis(info))
    ax.set_ylabel("frequency k (cycles per line)")
    cb = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.05)
    cb.set_label(r"$R_k = \ln(A_k / A_0)$")

    handles: list[Any] = []
    test_curve = None  # over every epoch with a spectrum, for the events
    sub = "no metrics probe: error curves omitted"
    if "metrics" in info.probes:
        m = _load(info, "metrics", ("error",))
        ax2 = ax.twinx()
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("error (%)")
        jm = m.column(width)
        drawn = []
        for s, color, label in (("noisy", "tab:red", "noisy-subset error"),
                                ("test", "orange", "test error")):
            e = m.get("error", subset=s)
            if e is None or jm is None:
                continue
            curve = _on(m.epochs, e[:, jm], epochs)
            ok = np.isfinite(curve)
            ax2.plot(epochs[ok], 100 * curve[ok], color=color, lw=2, path_effects=_stroke())
            handles.append(Line2D([], [], color=color, lw=2, label=label))
            drawn.append(s)
            if s == "test":
                test_curve = _on(m.epochs, e[:, jm], all_epochs)
        sub = f"errors: {', '.join(drawn) or 'none'}"
    # Events on the whole curves (not only the epochs shown); R_all excludes k = 0, so every
    # column is summed (R_t of Zhang & Wu §3.2).
    ev = an.events_for_width(all_epochs, test_curve, R_all, k_min=0)
    for key, style, label in (("T_E_min", (0, (4, 2)), "$T_{E,min}$"),
                              ("T_E_peak", (0, (6, 2, 1, 2)), "$T_{E,peak}$"),
                              ("T_R_peak", (0, (1, 1.5)), "$T_{R,peak}$")):
        t = ev.get(key)
        if t is None or (key.endswith("peak") and t == ev[key.replace("peak", "min")]):
            continue
        if not epochs[0] <= t <= epochs[-1]:
            continue
        ax.axvline(t, color="white", ls=style, lw=1.4, path_effects=_stroke("black", 2.5))
        handles.append(Line2D([], [], color="black", ls=style, lw=1.4, label=f"{label} = {t}"))
    sub += f"; events with patience {an.DEFAULT_PATIENCE} epochs"
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=min(len(handles), 5), fontsize=8, frameon=False)
    ax.set_title(f"{info.describe()}, width {width}\n"
                 f"spectrum of the logits on the {subset} subset ({sub})", fontsize=10,
                 loc="left")
    return fig


def _on(src_epochs: np.ndarray, values: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """``values`` (indexed by ``src_epochs``) at ``epochs``; NaN where absent."""
    pos = {int(e): i for i, e in enumerate(src_epochs.tolist())}
    out = np.full(epochs.shape, np.nan)
    for i, e in enumerate(epochs.tolist()):
        k = pos.get(int(e))
        if k is not None:
            out[i] = values[k]
    return out


# ----------------------------------------------------------------------------- double descent


def _double_descent(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib.colors import PowerNorm
    from matplotlib.lines import Line2D

    m = _load(info, "metrics", ("error",))
    test = m.get("error", subset="test")
    if test is None:
        raise CkptError("the metrics probe has no 'test' subset; re-run it with "
                        "--set metrics.subsets=train,clean,noisy,test", info.path)
    other_name = _pick_subset(m, opts.subset, "train")
    other = m.get("error", subset=other_name)
    assert other is not None
    keep = _epoch_mask(m.epochs, opts) & np.isfinite(test).any(axis=1)
    if not keep.any():
        raise CkptError("no computed metrics cells" + (" in the chosen epochs"
                                                      if opts.epochs else ""), info.path)
    epochs = m.epochs[keep].astype(np.float64)
    test, other = test[keep], other[keep]
    widths = [int(w) for w in m.widths.tolist()]
    if opts.width is not None and opts.width not in widths:
        raise UsageError(f"--width {opts.width}: not in this cube (widths: "
                         f"{', '.join(map(str, widths))})")
    colors = _colors(len(widths))
    fig = _figure(14.0, 4.6)
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.15, 1, 1.1])

    # (a) curves over epochs
    _symlog(a1, epochs)
    handles = []
    for j, w in enumerate(widths):
        if opts.width is not None and w != opts.width:
            continue
        ok = np.isfinite(test[:, j])
        if not ok.any():
            continue
        a1.plot(epochs[ok], 100 * test[ok, j], color=colors[j], lw=1.8)
        ok2 = np.isfinite(other[:, j])
        a1.plot(epochs[ok2], 100 * other[ok2, j], color=colors[j], lw=1.2, ls="--")
        handles.append(Line2D([], [], color=colors[j], lw=2, label=f"w = {w}"))
    handles += [Line2D([], [], color="0.3", lw=1.8, label="test"),
                Line2D([], [], color="0.3", lw=1.2, ls="--", label=other_name)]
    a1.legend(handles=handles, fontsize=7, ncol=2 if len(handles) > 8 else 1,
              loc="upper right")
    a1.set_xlabel(_time_axis(info))
    a1.set_ylabel("error (%)")
    a1.set_ylim(0, 100)
    a1.set_title(f"(a) test and {other_name} error over training", fontsize=10)
    a1.grid(alpha=0.3)

    # (b) final errors against width
    final_test = an.last_finite(test)
    final_other = an.last_finite(other)
    a2.plot(widths, 100 * final_test, "o-", color="orange", lw=2, label="test")
    a2.plot(widths, 100 * final_other, "s--", color="tab:blue", lw=1.5, label=other_name)
    thr = _threshold(info)
    if thr is not None:
        a2.axvline(thr, color="k", ls=":", lw=1.2, label=f"interpolation threshold (w = {thr})")
    peak = an.peak_width(widths, final_test)
    if peak is not None:
        a2.plot([peak], [100 * final_test[widths.index(peak)]], "v", color="tab:red", ms=10,
                label=f"test error peak (w = {peak})")
    _width_axis(a2, widths)
    a2.set_ylabel("error at the last checkpoint (%)")
    a2.set_ylim(0, 100)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    a2.set_title("(b) model-wise: last checkpoint of each width", fontsize=10)

    # (c) heat map epoch x width
    _symlog(a3, epochs, "y")
    x_edges = np.arange(len(widths) + 1) - 0.5
    # square-root colour scale: late-training differences of a few % stay visible next to
    # the ~90% error at initialization
    mesh = a3.pcolormesh(x_edges, _edges(a3, epochs, "y"), 100 * test, cmap="magma",
                         norm=PowerNorm(0.5, vmin=0.0, vmax=float(np.nanmax(100 * test))),
                         shading="flat")
    a3.set_ylim(*_edges(a3, epochs, "y")[[0, -1]])
    a3.set_xticks(range(len(widths)), [str(w) for w in widths])
    a3.set_xlabel("width (base channels)")
    a3.set_ylabel(_time_axis(info))
    cb = fig.colorbar(mesh, ax=a3, fraction=0.06)
    cb.set_label("test error (%, square-root colour scale)")
    px, py = [], []
    for j in range(len(widths)):
        t_min, t_peak = an.peak_epochs(epochs, test[:, j]) or (None, None)
        if t_peak is not None and t_peak != t_min:
            px.append(j)
            py.append(t_peak)
    if px:
        a3.plot(px, py, "^", color="cyan", mec="black", ms=8,
                label=rf"$T_{{E,peak}}$ (patience {an.DEFAULT_PATIENCE} epochs)")
        a3.legend(fontsize=7, loc="upper right")
    a3.set_title("(c) test error, epoch × width", fontsize=10)
    fig.suptitle(f"{info.describe()}: double descent", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- sharpness

_SHARP_LABEL = {
    "accuracy": ("accuracy (%)", 100.0),
    "loss": ("cross-entropy (nats)", 1.0),
    "jacobian": (r"Jacobian norm $\|\nabla_x \ell\|_2$", 1.0),
    "hessian": ("tangent Hessian norm", 1.0),
}


def _sharpness(info: CubeInfo, opts: PlotOptions) -> Figure:
    sh = _load(info, "sharpness")
    have = [str(s) for s in sh.coords.get("subset", ())]
    if opts.subset is not None:
        subsets = [_pick_subset(sh, opts.subset, "clean")]
    else:
        subsets = [s for s in ("clean", "noisy") if s in have] or have[:1]
    metrics = [k for k in _SHARP_LABEL if k in sh.values]
    volumes = [int(v) for v in sh.coords.get("volume", (0,))]
    widths = [int(w) for w in sh.widths.tolist()]
    mask = _epoch_mask(sh.epochs, opts)
    done = sh.done[mask] if sh.done.size else np.zeros((mask.sum(), len(widths)), dtype=bool)
    sel_epochs = sh.epochs[mask]
    if not done.any():
        raise CkptError("no computed sharpness cells" + (" in the chosen epochs"
                                                        if opts.epochs else ""), info.path)
    if opts.epochs is not None:
        # one epoch for every width: the last selected epoch with any computed cell
        row = int(np.flatnonzero(done.any(axis=1))[-1])
        rows = [row if done[row, j] else -1 for j in range(len(widths))]
        when = f"at epoch {int(sel_epochs[row])}"
    else:
        rows = [int(np.flatnonzero(done[:, j])[-1]) if done[:, j].any() else -1
                for j in range(len(widths))]
        ends = sorted({int(sel_epochs[r]) for r in rows if r >= 0})
        when = (f"at epoch {ends[0]}" if len(ends) == 1
                else f"at each width's last checkpoint (epochs {ends[0]}..{ends[-1]})")
    idx = np.flatnonzero(mask)
    thr = _threshold(info)
    colors = _colors(len(volumes), "viridis")
    fig = _figure(3.4 * len(metrics) + 1.0, 3.0 * len(subsets) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(subsets), len(metrics), squeeze=False))
    for r, s in enumerate(subsets):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            label, scale = _SHARP_LABEL[metric]
            arr = sh.get(metric, subset=s)  # (E, W, V)
            assert arr is not None
            vals = np.array([arr[idx[rows[j]], j] if rows[j] >= 0
                             else np.full(len(volumes), np.nan) for j in range(len(widths))])
            if not np.isfinite(vals).any():
                _no_data(ax, f"{metric} not computed\n(sharpness.hessian=false?)"
                         if metric == "hessian" else f"{metric} not computed")
            for v in range(len(volumes)):
                ok = np.isfinite(vals[:, v])
                if ok.any():
                    ax.plot(np.array(widths)[ok], scale * vals[ok, v], "o-", ms=3,
                            color=colors[v], lw=1.5)
            if thr is not None:
                ax.axvline(thr, color="k", ls=":", lw=1.2)
            _width_axis(ax, widths)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.set_title(f"{s} subset: {metric}", fontsize=9)
    _legend_bar(fig, axes, colors, [str(v) for v in volumes],
                "volume (SVD-erasure anchors per path; 0 = the point itself)")
    thr_note = f"; dotted: interpolation threshold w = {thr}" if thr is not None else ""
    fig.suptitle(f"{info.describe()}: input-space sharpness {when}{thr_note}", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- interpolation


def _interpolation(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import FuncFormatter

    ip = _load(info, "interpolation")
    kinds = [str(k) for k in ip.coords.get("kind", ())]
    lam = np.asarray(ip.coords.get("lambda", ()), dtype=np.float64)
    widths = [int(w) for w in ip.widths.tolist()]
    mask = _epoch_mask(ip.epochs, opts)
    cdn = ip.values["cdn"]
    paths = ip.values.get("paths")
    per_width = opts.width is None and opts.epochs is not None and int(mask.sum()) == 1
    if per_width:
        i = int(np.flatnonzero(mask)[0])
        cells = [(i, j) for j in range(len(widths))]
        labels = [str(w) for w in widths]
        head = f"one line per width, epoch {int(ip.epochs[i])}"
        bar = "width"
    else:
        width = _pick_width(ip, opts.width, "cdn")
        j = ip.column(width)
        assert j is not None
        rows = [int(i) for i in np.flatnonzero(mask) if np.isfinite(cdn[i, j]).any()]
        if not rows:
            raise CkptError(f"no computed interpolation cells for width {width}"
                            + (" in the chosen epochs" if opts.epochs else ""), info.path)
        cells = [(i, j) for i in rows]
        labels = [str(int(ip.epochs[i])) for i in rows]
        head = f"width {width}, one line per {info.time_unit}"
        bar = info.time_unit
    continuous = bar == info.time_unit and len(cells) > 12
    if continuous:
        ep = np.array([float(ip.epochs[i]) for i, _ in cells])
        norm = SymLogNorm(linthresh=1, linscale=0.5, vmin=float(ep.min()),
                          vmax=float(max(ep.max(), ep.min() + 1)))
        cmap = colormaps["viridis"]
        colors = [cmap(norm(e)) for e in ep]
    else:
        colors = _colors(len(cells))
    fig = _figure(11.0, 4.4)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for c, kind in enumerate(kinds):
        ax = axes[c]
        n_paths = []
        drawn = 0
        for (i, j), color in zip(cells, colors, strict=True):
            y = cdn[i, j, c]
            ok = np.isfinite(y)
            if ok.any():
                ax.plot(lam[ok], y[ok], color=color, lw=1.5)
                drawn += 1
            if paths is not None and np.isfinite(paths[i, j, c]):
                n_paths.append(int(paths[i, j, c]))
        if not drawn:
            _no_data(ax, "no path with both ends predicted right")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(r"position on the path $\lambda = t/d$ (0 = start image, 1 = end image)")
        ax.set_ylabel(r"mean $\|\hat y(\lambda) - \hat y(0)\|_2$ (softmax change)")
        span = (f"{min(n_paths)}" if n_paths and min(n_paths) == max(n_paths)
                else f"{min(n_paths)}-{max(n_paths)}" if n_paths else "0")
        ax.set_title(f"{kind}-class pairs ({span} correctly classified paths per line)",
                     fontsize=10)
        ax.grid(alpha=0.3)
    if continuous:
        cb = fig.colorbar(ScalarMappable(norm, cmap), ax=list(axes), fraction=0.04, pad=0.01)
        cb.formatter = FuncFormatter(lambda v, _: f"{v:g}")
        cb.update_ticks()
        cb.set_label(f"{info.time_unit} (symlog)")
    else:
        _legend_bar(fig, list(axes), colors, labels, bar)
    fig.suptitle(f"{info.describe()}: softmax change along interpolation paths ({head})",
                 fontsize=11)
    return fig


# ----------------------------------------------------------------------------- normalization


def _normalization(info: CubeInfo, opts: PlotOptions) -> Figure:
    nz = _load(info, "normalization", ("loss", "normalized_loss"))
    for s in ("train", "test"):
        if nz.get("loss", subset=s) is None:
            raise CkptError(f"the normalization probe has no '{s}' subset; re-run it with "
                            "--set normalization.subsets=train,test", info.path)
    widths = [int(w) for w in nz.widths.tolist()]
    if opts.width is not None and opts.width not in widths:
        raise UsageError(f"--width {opts.width}: not in this cube (widths: "
                         f"{', '.join(map(str, widths))})")
    mask = _epoch_mask(nz.epochs, opts)
    colors = _colors(len(widths))
    fig = _figure(11.0, 4.8)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "(a) raw network f"),
                              (axes[1], "normalized_loss",
                               r"(b) normalized $\tilde f$ (layer norms divided out)")):
        tr = nz.get(metric, subset="train")
        te = nz.get(metric, subset="test")
        if tr is None or te is None:
            _no_data(ax, f"{metric} not in the cube")
            continue
        xs, ys = [], []
        for j, w in enumerate(widths):
            if opts.width is not None and w != opts.width:
                continue
            x, y = tr[mask, j], te[mask, j]
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            ax.plot(x[ok], y[ok], "-", color=colors[j], lw=0.8, alpha=0.5)
            ax.scatter(x[ok], y[ok], s=14, color=colors[j], label=f"w = {w}", zorder=3)
            ax.scatter(x[ok][-1:], y[ok][-1:], s=60, color=colors[j], edgecolor="black",
                       zorder=4)
            xs.append(x[ok])
            ys.append(y[ok])
        if not xs:
            _no_data(ax, "no computed cells")
            continue
        xa, ya = np.concatenate(xs), np.concatenate(ys)
        lo = float(min(xa.min(), ya.min()))
        hi = float(max(xa.max(), ya.max()))
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        grid = np.array([lo - pad, hi + pad])
        ax.plot(grid, grid, ls=":", color="0.5", lw=1, label="test = train")
        fit = an.linear_fit(xa, ya)
        if np.isfinite(fit.slope):
            xg = np.array([xa.min(), xa.max()])
            r = f", r = {fit.r:.3f}" if np.isfinite(fit.r) else ""
            ax.plot(xg, fit.slope * xg + fit.intercept, color="black", lw=1.5,
                    label=f"least squares: slope {fit.slope:.3g}{r}")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.set_xlabel("train cross-entropy (nats)")
        ax.set_ylabel("test cross-entropy (nats)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    sel = "" if opts.epochs is None else f", epochs {min(opts.epochs)}..{max(opts.epochs)}"
    fig.suptitle(f"{info.describe()}: test vs train loss, one point per (epoch, width)"
                 f"{sel}; large marker = last checkpoint", fontsize=11)
    return fig
