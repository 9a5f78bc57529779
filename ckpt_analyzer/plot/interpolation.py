"""``interpolation`` figure: mean softmax change along the interpolation paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..cube.read import CubeInfo
from ..errors import CkptError
from ._common import PlotOptions, epoch_mask, legend_bar, line_colors, load, new_figure, no_data, pick_width

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import FuncFormatter

    ip = load(info, "interpolation")
    kinds = [str(k) for k in ip.coords.get("kind", ())]
    lam = np.asarray(ip.coords.get("lambda", ()), dtype=np.float64)
    widths = [int(w) for w in ip.widths.tolist()]
    mask = epoch_mask(ip.epochs, opts)
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
        width = pick_width(ip, opts.width, "cdn")
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
        colors = line_colors(len(cells))
    fig = new_figure(11.0, 4.4)
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
            no_data(ax, "no path with both ends predicted right")
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
        legend_bar(fig, list(axes), colors, labels, bar)
    fig.suptitle(f"{info.describe()}: softmax change along interpolation paths ({head})",
                 fontsize=11)
    return fig
