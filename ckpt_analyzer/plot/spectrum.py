"""``spectrum`` figure: R_k heat map over epochs with the error curves and the Zhang & Wu events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo
from ..errors import CkptError
from ._common import (
    PlotOptions,
    cell_edges,
    epoch_mask,
    load,
    new_figure,
    on_epochs,
    pick_subset,
    pick_width,
    stroke,
    symlog_axis,
    time_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    sp = load(info, "spectrum", ("R",))
    subset = pick_subset(sp, opts.subset, "train")
    width = pick_width(sp, opts.width, "R")
    j = sp.column(width)
    R = sp.get("R", subset=subset)[:, j]  # type: ignore[index]
    keep = epoch_mask(sp.epochs, opts) & np.isfinite(R).all(axis=1)
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
    fig = new_figure(9.0, 5.0)
    ax = fig.add_subplot()
    symlog_axis(ax, epochs)
    mesh = ax.pcolormesh(cell_edges(ax, epochs), np.concatenate(([ks[0] - 0.5], ks + 0.5)), R.T,
                         cmap="viridis", norm=Normalize(np.nanmin(R), np.nanmax(R)),
                         shading="flat")
    if R.shape[0] >= 2 and R.shape[1] >= 2 and np.ptp(R) > 0:
        cs = ax.contour(epochs, ks, R.T, levels=6, colors="white", linewidths=0.7, alpha=0.9,
                        negative_linestyles="solid")
        ax.clabel(cs, fmt="%.1f", fontsize=7, colors="white")
    ax.set_xlim(*cell_edges(ax, epochs)[[0, -1]])
    ax.set_xlabel(time_axis(info))
    ax.set_ylabel("frequency k (cycles per line)")
    cb = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.05)
    cb.set_label(r"$R_k = \ln(A_k / A_0)$")

    handles: list[Any] = []
    test_curve = None  # over every epoch with a spectrum, for the events
    sub = "no metrics probe: error curves omitted"
    if "metrics" in info.probes:
        m = load(info, "metrics", ("error",))
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
            curve = on_epochs(m.epochs, e[:, jm], epochs)
            ok = np.isfinite(curve)
            ax2.plot(epochs[ok], 100 * curve[ok], color=color, lw=2, path_effects=stroke())
            handles.append(Line2D([], [], color=color, lw=2, label=label))
            drawn.append(s)
            if s == "test":
                test_curve = on_epochs(m.epochs, e[:, jm], all_epochs)
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
        ax.axvline(t, color="white", ls=style, lw=1.4, path_effects=stroke("black", 2.5))
        handles.append(Line2D([], [], color="black", ls=style, lw=1.4, label=f"{label} = {t}"))
    sub += f"; events with patience {an.DEFAULT_PATIENCE} epochs"
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=min(len(handles), 5), fontsize=8, frameon=False)
    ax.set_title(f"{info.describe()}, width {width}\n"
                 f"spectrum of the logits on the {subset} subset ({sub})", fontsize=10,
                 loc="left")
    return fig
