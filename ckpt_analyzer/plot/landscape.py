"""``landscape`` figure: 1-D loss slices over epochs for one width, the barrier height on the
path to the last checkpoint per width, and 2-D loss contours (Li et al. 2018; Frankle et al.
2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..cube.read import CubeInfo
from ..errors import CkptError
from ._common import (
    PlotOptions,
    epoch_mask,
    legend_bar,
    line_colors,
    load,
    load_width,
    new_figure,
    no_data,
    pick_subset,
    symlog_axis,
    time_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MAX_CONTOURS", "draw"]

#: Most 2-D contour panels (evenly picked from the chosen epochs when there are more).
MAX_CONTOURS = 4


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize, SymLogNorm
    from matplotlib.ticker import FuncFormatter

    ls = load(info, "landscape", ("barrier",))
    subset = pick_subset(ls, opts.subset, "train")
    column = load_width(info, ls, opts.width, "loss")  # one width's surfaces, not the cube's
    width = int(column.widths[0])
    loss = column.get("loss", subset=subset)
    if loss is None:
        raise CkptError("the landscape probe has no 'loss'", info.path)
    two_d = loss.ndim == 4  # (epoch, 1, alpha, beta)
    j = 0  # loss's column; the barrier's is ls.column(width)
    alpha = np.asarray(ls.coords["alpha"], dtype=np.float64)
    mask = epoch_mask(ls.epochs, opts)
    rows = [int(i) for i in np.flatnonzero(mask) if np.isfinite(loss[i, j]).any()]
    if not rows:
        raise CkptError(f"no computed landscape cells for width {width} on subset '{subset}'"
                        + (" in the chosen epochs" if opts.epochs else ""), info.path)
    ep_rows = np.array([float(ls.epochs[i]) for i in rows])
    if two_d:
        beta = np.asarray(ls.coords["beta"], dtype=np.float64)
        b0 = int(np.argmin(np.abs(beta)))
        slices = loss[:, j, :, b0]
        slice_note = f" (beta = {beta[b0]:g} row of the 2-D grid)"
    else:
        slices = loss[:, j]
        slice_note = ""

    if two_d:
        if opts.epochs is None:
            picked = [rows[-1]]
        else:
            pos = np.unique(np.round(np.linspace(0, len(rows) - 1, MAX_CONTOURS)).astype(int))
            picked = rows if len(rows) <= MAX_CONTOURS else [rows[p] for p in pos]
        if len(picked) == 1:  # one contour: a third panel on the same row
            fig = new_figure(17.0, 4.8)
            top = bottom = fig
            a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.15, 1, 0.9])
            contour_axes = [a3]
        else:
            fig = new_figure(12.0, 8.2)
            top, bottom = fig.subfigures(2, 1, height_ratios=[1, 0.85])  # type: ignore[misc]
            a1, a2 = top.subplots(1, 2)
            contour_axes = list(bottom.subplots(1, len(picked), squeeze=False)[0])
    else:
        fig = new_figure(12.0, 4.6)
        top = fig
        a1, a2 = fig.subplots(1, 2)

    # (a) 1-D slices, colour = epoch
    if len(rows) > 12:
        norm = SymLogNorm(linthresh=1, linscale=0.5, vmin=float(ep_rows.min()),
                          vmax=float(max(ep_rows.max(), ep_rows.min() + 1)))
        cmap = colormaps["viridis"]
        colors = [cmap(norm(e)) for e in ep_rows]
    else:
        colors = line_colors(len(rows))
    for i, color in zip(rows, colors, strict=True):
        y = slices[i]
        ok = np.isfinite(y)
        a1.plot(alpha[ok], y[ok], color=color, lw=1.5)
    top_vals = slices[rows][np.isfinite(slices[rows])]
    if top_vals.size and top_vals.min() > 0 and top_vals.max() / top_vals.min() > 100:
        a1.set_yscale("log")
    a1.axvline(0, color="0.5", lw=0.8, ls=":")
    a1.set_xlabel(r"$\alpha$ along a filter-normalized random direction (0 = the checkpoint)")
    a1.set_ylabel(f"{subset} cross-entropy (nats)")
    a1.set_title(f"(a) width {width}: loss slices, one line per {info.time_unit}{slice_note}", fontsize=10)
    a1.grid(alpha=0.3)
    if len(rows) > 12:
        cb = top.colorbar(ScalarMappable(norm, cmap), ax=a1, fraction=0.05, pad=0.01)
        cb.formatter = FuncFormatter(lambda v, _: f"{v:g}")
        cb.update_ticks()
        cb.set_label(f"{info.time_unit} (symlog)")
    else:
        legend_bar(top, a1, colors, [str(int(e)) for e in ep_rows], "epoch")

    # (b) barrier height per width
    barrier = ls.get("barrier", subset=subset)
    widths = [int(w) for w in ls.widths.tolist()]
    wcolors = line_colors(len(widths))
    epochs = ls.epochs[mask].astype(np.float64)
    n = 0
    if barrier is not None:
        for jj, w in enumerate(widths):
            y = barrier[mask, jj]
            ok = np.isfinite(y)
            if ok.any():
                a2.plot(epochs[ok], y[ok], "o-", ms=2.5, color=wcolors[jj], lw=1.5 + (w == width),
                        label=f"w = {w}")
                n += 1
    if n:
        a2.legend(fontsize=7, ncol=2 if n > 8 else 1, loc="upper right")
    else:
        no_data(a2, "barrier not computed\n(landscape.barrier=false, or the run folder was "
                    "not found)")
    symlog_axis(a2, epochs)
    a2.set_xlabel(time_axis(info))
    a2.set_ylabel("barrier height (nats)")
    a2.set_title("(b) loss barrier on the straight path to each width's last checkpoint",
                 fontsize=10)
    a2.grid(alpha=0.3)

    # (c) 2-D contours
    if two_d:
        axes = contour_axes
        surf = loss[picked, j]
        finite = surf[np.isfinite(surf)]
        positive = finite.size and finite.min() > 0
        cnorm = (LogNorm(float(finite.min()), float(finite.max())) if positive
                 else Normalize(float(finite.min()), float(finite.max())))
        levels = (np.geomspace(finite.min(), finite.max(), 15) if positive
                  else np.linspace(finite.min(), finite.max(), 15))
        for ax, i in zip(axes, picked, strict=True):
            z = loss[i, j].T  # rows: beta, columns: alpha
            if np.isfinite(z).sum() >= 4 and np.ptp(z[np.isfinite(z)]) > 0:
                ax.contourf(alpha, beta, z, levels=levels, norm=cnorm, cmap="viridis")
                ax.contour(alpha, beta, z, levels=levels, colors="white", linewidths=0.5,
                           alpha=0.7)
            else:
                no_data(ax, "flat or not computed")
            ax.plot([0], [0], "x", color="red", ms=8)
            ax.set_aspect("equal")
            ax.set_xlabel(r"$\alpha$ (direction 1)")
            ax.set_ylabel(r"$\beta$ (direction 2)")
            ax.set_title(f"epoch {int(ls.epochs[i])}", fontsize=10)
        cb = bottom.colorbar(ScalarMappable(cnorm, "viridis"), ax=list(axes), fraction=0.04,
                             pad=0.01, shrink=0.85)
        cb.set_label(f"{subset} cross-entropy (nats{', log scale' if positive else ''})")
        more = (" at the last epoch (choose others with --epochs)" if opts.epochs is None
                else " at the chosen epochs" if len(picked) == len(rows)
                else f" at {len(picked)} of the {len(rows)} chosen epochs")
        head = f"(c) width {width}: 2-D loss surface{more}; x = the checkpoint"
        if len(picked) == 1:
            last = "the last epoch; others with --epochs" if opts.epochs is None else "chosen"
            axes[0].set_title(f"(c) epoch {int(ls.epochs[picked[0]])}: 2-D loss surface, width "
                              f"{width}\n({last}); x = the checkpoint", fontsize=9)
        else:
            bottom.suptitle(head, fontsize=10)
    fig.suptitle(f"{info.describe()}: loss landscape, {subset} subset", fontsize=11)
    return fig
