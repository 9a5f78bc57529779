"""``normalization`` figure: test against train cross-entropy, raw and normalized."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo
from ..errors import CkptError, UsageError
from ._common import PlotOptions, epoch_mask, line_colors, load, new_figure, no_data

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    nz = load(info, "normalization", ("loss", "normalized_loss"))
    for s in ("train", "test"):
        if nz.get("loss", subset=s) is None:
            raise CkptError(f"the normalization probe has no '{s}' subset; re-run it with "
                            "--set normalization.subsets=train,test", info.path)
    widths = [int(w) for w in nz.widths.tolist()]
    if opts.width is not None and opts.width not in widths:
        raise UsageError(f"--width {opts.width}: not in this cube (widths: "
                         f"{', '.join(map(str, widths))})")
    mask = epoch_mask(nz.epochs, opts)
    colors = line_colors(len(widths))
    fig = new_figure(11.0, 4.8)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "(a) raw network f"),
                              (axes[1], "normalized_loss",
                               r"(b) normalized $\tilde f$ (layer norms divided out)")):
        tr = nz.get(metric, subset="train")
        te = nz.get(metric, subset="test")
        if tr is None or te is None:
            no_data(ax, f"{metric} not in the cube")
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
            no_data(ax, "no computed cells")
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
