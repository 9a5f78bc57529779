"""``hessian`` figure: the Hessian's top eigenvalue and trace over epochs, one line per width,
next to the test error (Yao et al. PyHessian; the sharpness side of epoch-wise double descent)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo
from ..errors import CkptError, UsageError
from ._common import (
    PlotOptions,
    epoch_mask,
    legend_bar,
    line_colors,
    load,
    new_figure,
    no_data,
    pick_subset,
    symlog_axis,
    time_axis,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw"]


def _value_scale(ax: Axes, values: list[np.ndarray]) -> None:
    """Log y when every value is positive and they span more than two decades."""
    v = np.concatenate([a[np.isfinite(a)] for a in values]) if values else np.zeros(0)
    if v.size and v.min() > 0 and v.max() / v.min() > 100:
        ax.set_yscale("log")


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    hs = load(info, "hessian", ("eigenvalues", "trace", "trace_stderr", "density",
                                "density_grid"))
    subset = pick_subset(hs, opts.subset, "train")
    eig = hs.get("eigenvalues", subset=subset, k=0)
    if eig is None:
        raise CkptError("the hessian probe has no 'eigenvalues'", info.path)
    trace = hs.get("trace", subset=subset)
    stderr = hs.get("trace_stderr", subset=subset)
    widths = [int(w) for w in hs.widths.tolist()]
    if opts.width is not None and opts.width not in widths:
        raise UsageError(f"--width {opts.width}: not in this cube (widths: "
                         f"{', '.join(map(str, widths))})")
    cols = [j for j, w in enumerate(widths) if opts.width is None or w == opts.width]
    mask = epoch_mask(hs.epochs, opts)
    if not np.isfinite(eig[np.ix_(mask, np.asarray(cols, dtype=np.int64))]).any():
        raise CkptError(f"no computed hessian cells on subset '{subset}'"
                        + (" in the chosen epochs" if opts.epochs else ""), info.path)
    epochs = hs.epochs[mask].astype(np.float64)
    colors = line_colors(len(widths))

    metrics = None
    if "metrics" in info.probes:
        metrics = load(info, "metrics", ("error",))
        if metrics.get("error", subset="test") is None:
            metrics = None
    density = hs.get("density", subset=subset)
    grid = hs.get("density_grid", subset=subset)
    panels = 2 + (metrics is not None) + (density is not None and grid is not None)
    fig = new_figure(5.0 * panels + 0.5, 4.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    a1, a2 = axes[0], axes[1]

    # (a) top eigenvalue, with each width's peak epoch (events on the whole curve)
    drawn: list[np.ndarray] = []
    marks = 0
    for j in cols:
        y = eig[mask, j]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        a1.plot(epochs[ok], y[ok], "o-", ms=2.5, color=colors[j], lw=1.6)
        drawn.append(y[ok])
        t_min, t_peak = an.peak_epochs(hs.epochs, eig[:, j]) or (None, None)
        if t_peak is not None and t_peak != t_min and t_peak in epochs:
            i = int(np.flatnonzero(epochs == t_peak)[0])
            a1.plot([t_peak], [y[i]], "^", color=colors[j], mec="black", ms=8, zorder=4)
            marks += 1
    symlog_axis(a1, epochs)
    _value_scale(a1, drawn)
    a1.set_xlabel(time_axis(info))
    a1.set_ylabel(r"top Hessian eigenvalue $\lambda_{max}$")
    peak_note = (f"\n▲ peak epoch (patience {an.DEFAULT_PATIENCE} epochs)" if marks else "")
    a1.set_title(f"(a) top eigenvalue, {subset} subset{peak_note}", fontsize=10)
    a1.grid(alpha=0.3)

    # (b) Hutchinson trace ± standard error
    drawn = []
    for j in cols if trace is not None else []:
        y = trace[mask, j]  # type: ignore[index]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        a2.plot(epochs[ok], y[ok], "o-", ms=2.5, color=colors[j], lw=1.6)
        if stderr is not None:
            s = stderr[mask, j]
            band = ok & np.isfinite(s)
            a2.fill_between(epochs[band], (y - s)[band], (y + s)[band], color=colors[j],
                            alpha=0.2, lw=0)
        drawn.append(y[ok])
    if not drawn:
        no_data(a2, "trace not computed\n(hessian.trace_samples=0?)")
    symlog_axis(a2, epochs)
    _value_scale(a2, drawn)
    a2.set_xlabel(time_axis(info))
    a2.set_ylabel(r"Hessian trace tr$(H)$ (Hutchinson)")
    a2.set_title(f"(b) trace ± standard error, {subset} subset", fontsize=10)
    a2.grid(alpha=0.3)

    # (c) test error, when the metrics probe is there
    note = "" if metrics is not None else "; no metrics probe: test error omitted"
    if metrics is not None:
        a3 = axes[2]
        test = metrics.get("error", subset="test")
        assert test is not None
        keep = (np.ones(metrics.epochs.shape, dtype=bool) if opts.epochs is None
                else np.isin(metrics.epochs, np.asarray(opts.epochs, dtype=np.int64)))
        ep = metrics.epochs[keep].astype(np.float64)
        n = 0
        for j in cols:
            jm = metrics.column(widths[j])
            if jm is None:
                continue
            y = test[keep, jm]
            ok = np.isfinite(y)
            if ok.any():
                a3.plot(ep[ok], 100 * y[ok], color=colors[j], lw=1.6)
                n += 1
        if not n:
            no_data(a3, "no test error for these widths and epochs")
        symlog_axis(a3, ep if ep.size else epochs)
        a3.set_xlabel(time_axis(info))
        a3.set_ylabel("test error (%)")
        a3.set_ylim(0, 100)
        a3.set_title("(c) test error (metrics probe)", fontsize=10)
        a3.grid(alpha=0.3)
    if density is not None and grid is not None:
        _density_panel(axes[-1], density[mask], grid[mask], hs.epochs[mask], cols, colors,
                       subset)
    shown = [widths[j] for j in cols]
    legend_bar(fig, list(axes), [colors[j] for j in cols], [str(w) for w in shown], "width")
    fig.suptitle(f"{info.describe()}: parameter-space Hessian of the loss over training{note}",
                 fontsize=11)
    return fig


def _density_panel(ax: Axes, density: np.ndarray, grid: np.ndarray, epochs: np.ndarray,
                   cols: list[int], colors: list[object], subset: str) -> None:
    """(d) each width's SLQ eigenvalue density at its last computed epoch (log density + 1e-7,
    as PyHessian's ``get_esd_plot``)."""
    drawn = 0
    for j in cols:
        done = np.flatnonzero(np.isfinite(density[:, j]).any(axis=1))
        if not done.size:
            continue
        i = int(done[-1])
        ax.semilogy(grid[i, j], density[i, j] + 1e-7, color=colors[j], lw=1.2,
                    label=f"epoch {int(epochs[i])}")
        drawn += 1
    if not drawn:
        no_data(ax, "density not computed\n(hessian.density_runs=0?)")
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("density (log scale, + 1e-7)")
    ax.set_title(f"(d) eigenvalue density (SLQ), last epoch, {subset} subset", fontsize=10)
    ax.grid(alpha=0.3)
