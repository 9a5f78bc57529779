"""``weights-spectrum`` figure: per-layer power-law exponent α, spectral norm and stable rank
of the weight matrices over epochs for one width (Martin & Mahoney; WeightWatcher)."""

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
    new_figure,
    no_data,
    pick_width,
    symlog_axis,
    time_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw"]

#: WeightWatcher's range of α for well-trained layers (Martin & Mahoney 2021).
ALPHA_RANGE = (2.0, 6.0)


def draw(info: CubeInfo, opts: PlotOptions) -> Figure:
    ws = load(info, "weights_spectrum", ("alpha", "spectral_norm", "stable_rank", "num_evals"))
    width = pick_width(ws, opts.width, "spectral_norm")
    j = ws.column(width)
    assert j is not None
    layers = [str(n) for n in ws.coords.get("layer", ())]
    mask = epoch_mask(ws.epochs, opts)
    sn = ws.values["spectral_norm"][:, j]
    rows = mask & np.isfinite(sn).any(axis=1)
    if not rows.any():
        raise CkptError(f"no computed weights_spectrum cells for width {width}"
                        + (" in the chosen epochs" if opts.epochs else ""), info.path)
    epochs = ws.epochs[rows].astype(np.float64)
    n_evals = ws.values.get("num_evals")
    labels = []
    for li, name in enumerate(layers):
        n = n_evals[rows, j, li] if n_evals is not None else np.zeros(0)
        n = n[np.isfinite(n)]
        labels.append(f"{name} ({int(n[-1])})" if n.size else name)
    colors = line_colors(len(layers), "plasma")
    fig = new_figure(15.0, 4.6)
    axes = fig.subplots(1, 3)

    # (a) alpha: layers without a fit are left out, with a note
    a1 = axes[0]
    alpha = ws.values["alpha"][rows, j]
    fitted = [li for li in range(len(layers)) if np.isfinite(alpha[:, li]).any()]
    omitted = [layers[li] for li in range(len(layers)) if li not in fitted]
    for li in fitted:
        ok = np.isfinite(alpha[:, li])
        a1.plot(epochs[ok], alpha[ok, li], "o-", ms=2.5, color=colors[li], lw=1.5)
    lims = a1.get_ylim()  # the band shades the range without stretching the axis to it
    a1.axhspan(*ALPHA_RANGE, color="0.94", zorder=0,
               label=f"{ALPHA_RANGE[0]:g} ≤ α ≤ {ALPHA_RANGE[1]:g} (WeightWatcher's "
                     "well-trained range)")
    if fitted:
        a1.set_ylim(*lims)
    min_evals = ws.config.get("min_evals", "min_evals")
    if not fitted:
        no_data(a1, f"no layer has a power-law fit\n(each has fewer than {min_evals} "
                    "eigenvalues, or a degenerate tail)")
    symlog_axis(a1, epochs)
    a1.set_xlabel(time_axis(info))
    a1.set_ylabel(r"power-law exponent $\alpha$ of the ESD tail")
    a1.legend(fontsize=7, loc="upper right")
    note = ""
    if omitted and fitted:
        note = (f"\nomitted (fewer than {min_evals} eigenvalues or degenerate tail): "
                f"{', '.join(omitted)}")
    a1.set_title(f"(a) α per layer{note}", fontsize=9 if note else 10)
    a1.grid(alpha=0.3)

    # (b) spectral norm, (c) stable rank
    for ax, metric, ylabel, title in (
            (axes[1], "spectral_norm", r"spectral norm $\lambda_{max}$ of $W^TW$",
             "(b) spectral norm (squared largest singular value)"),
            (axes[2], "stable_rank", r"stable rank $\sum\lambda / \lambda_{max}$",
             "(c) stable rank")):
        vals = ws.values[metric][rows, j]
        for li in range(len(layers)):
            ok = np.isfinite(vals[:, li])
            if ok.any():
                ax.plot(epochs[ok], vals[ok, li], "o-", ms=2.5, color=colors[li], lw=1.5)
        finite = vals[np.isfinite(vals)]
        if (metric == "spectral_norm" and finite.size and finite.min() > 0
                and finite.max() / finite.min() > 10):
            ax.set_yscale("log")
        symlog_axis(ax, epochs)
        ax.set_xlabel(time_axis(info))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    legend_bar(fig, list(axes), colors, labels, "layer (eigenvalues)")
    fig.suptitle(f"{info.describe()}: weight-matrix spectra, width {width}", fontsize=11)
    return fig
