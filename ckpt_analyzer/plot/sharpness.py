"""``sharpness`` figure: input-space sharpness metrics against width, one line per volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..cube.read import CubeInfo
from ..errors import CkptError
from ._common import (
    PlotOptions,
    epoch_mask,
    interpolation_threshold,
    legend_bar,
    line_colors,
    load,
    new_figure,
    no_data,
    pick_subset,
    width_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]


_SHARP_LABEL = {
    "accuracy": ("accuracy (%)", 100.0),
    "loss": ("cross-entropy (nats)", 1.0),
    "jacobian": (r"Jacobian norm $\|\nabla_x \ell\|_2$", 1.0),
    "hessian": ("tangent Hessian norm", 1.0),
}


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    sh = load(info, "sharpness")
    have = [str(s) for s in sh.coords.get("subset", ())]
    if opts.subset is not None:
        subsets = [pick_subset(sh, opts.subset, "clean")]
    else:
        subsets = [s for s in ("clean", "noisy") if s in have] or have[:1]
    metrics = [k for k in _SHARP_LABEL if k in sh.values]
    volumes = [int(v) for v in sh.coords.get("volume", (0,))]
    widths = [int(w) for w in sh.widths.tolist()]
    mask = epoch_mask(sh.epochs, opts)
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
    thr = interpolation_threshold(info)
    colors = line_colors(len(volumes), "viridis")
    fig = new_figure(3.4 * len(metrics) + 1.0, 3.0 * len(subsets) + 0.8)
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
                no_data(ax, f"{metric} not computed\n(sharpness.hessian=false?)"
                         if metric == "hessian" else f"{metric} not computed")
            for v in range(len(volumes)):
                ok = np.isfinite(vals[:, v])
                if ok.any():
                    ax.plot(np.array(widths)[ok], scale * vals[ok, v], "o-", ms=3,
                            color=colors[v], lw=1.5)
            if thr is not None:
                ax.axvline(thr, color="k", ls=":", lw=1.2)
            width_axis(ax, widths)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.set_title(f"{s} subset: {metric}", fontsize=9)
    legend_bar(fig, axes, colors, [str(v) for v in volumes],
                "volume (SVD-erasure anchors per path; 0 = the point itself)")
    thr_note = f"; dotted: interpolation threshold w = {thr}" if thr is not None else ""
    fig.suptitle(f"{info.describe()}: input-space sharpness {when}{thr_note}", fontsize=11)
    return fig
