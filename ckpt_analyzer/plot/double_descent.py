"""``double-descent`` figure: error curves per width, final errors against width, epoch × width heat map."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo
from ..errors import CkptError, UsageError
from ._common import (
    PlotOptions,
    cell_edges,
    epoch_mask,
    interpolation_threshold,
    line_colors,
    load,
    new_figure,
    pick_subset,
    symlog_axis,
    time_axis,
    width_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib.colors import PowerNorm
    from matplotlib.lines import Line2D

    m = load(info, "metrics", ("error",))
    test = m.get("error", subset="test")
    if test is None:
        raise CkptError("the metrics probe has no 'test' subset; re-run it with "
                        "--set metrics.subsets=train,clean,noisy,test", info.path)
    other_name = pick_subset(m, opts.subset, "train")
    other = m.get("error", subset=other_name)
    assert other is not None
    keep = epoch_mask(m.epochs, opts) & np.isfinite(test).any(axis=1)
    if not keep.any():
        raise CkptError("no computed metrics cells" + (" in the chosen epochs"
                                                      if opts.epochs else ""), info.path)
    epochs = m.epochs[keep].astype(np.float64)
    test, other = test[keep], other[keep]
    widths = [int(w) for w in m.widths.tolist()]
    if opts.width is not None and opts.width not in widths:
        raise UsageError(f"--width {opts.width}: not in this cube (widths: "
                         f"{', '.join(map(str, widths))})")
    colors = line_colors(len(widths))
    fig = new_figure(14.0, 4.6)
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.15, 1, 1.1])

    # (a) curves over epochs
    symlog_axis(a1, epochs)
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
    a1.set_xlabel(time_axis(info))
    a1.set_ylabel("error (%)")
    a1.set_ylim(0, 100)
    a1.set_title(f"(a) test and {other_name} error over training", fontsize=10)
    a1.grid(alpha=0.3)

    # (b) final errors against width
    final_test = an.last_finite(test)
    final_other = an.last_finite(other)
    a2.plot(widths, 100 * final_test, "o-", color="orange", lw=2, label="test")
    a2.plot(widths, 100 * final_other, "s--", color="tab:blue", lw=1.5, label=other_name)
    thr = interpolation_threshold(info)
    if thr is not None:
        a2.axvline(thr, color="k", ls=":", lw=1.2, label=f"interpolation threshold (w = {thr})")
    peak = an.peak_width(widths, final_test)
    if peak is not None:
        a2.plot([peak], [100 * final_test[widths.index(peak)]], "v", color="tab:red", ms=10,
                label=f"test error peak (w = {peak})")
    width_axis(a2, widths)
    a2.set_ylabel("error at the last checkpoint (%)")
    a2.set_ylim(0, 100)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    a2.set_title("(b) model-wise: last checkpoint of each width", fontsize=10)

    # (c) heat map epoch x width
    symlog_axis(a3, epochs, "y")
    x_edges = np.arange(len(widths) + 1) - 0.5
    # square-root colour scale: late-training differences of a few % stay visible next to
    # the ~90% error at initialization
    mesh = a3.pcolormesh(x_edges, cell_edges(a3, epochs, "y"), 100 * test, cmap="magma",
                         norm=PowerNorm(0.5, vmin=0.0, vmax=float(np.nanmax(100 * test))),
                         shading="flat")
    a3.set_ylim(*cell_edges(a3, epochs, "y")[[0, -1]])
    a3.set_xticks(range(len(widths)), [str(w) for w in widths])
    a3.set_xlabel("width (base channels)")
    a3.set_ylabel(time_axis(info))
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
