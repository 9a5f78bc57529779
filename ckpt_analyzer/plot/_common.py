"""Shared pieces of the figure kinds: options, figure creation, axes, colours, cube access.

Epoch axes use a symmetric-log scale (linear on [0, 1], logarithmic above) so that epoch 0, the
initialization, is shown. matplotlib comes from the ``plot`` extra and is imported only inside
functions; figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, so no
global pyplot state or interactive backend is touched (safe in notebooks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events as an
from ..cube.read import CubeInfo, ProbeData, load_probe
from ..errors import CkptError, UsageError, did_you_mean
from ._options import FORMATS as FORMATS  # re-exported: the kind modules take all from here
from ._options import PlotOptions as PlotOptions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

def time_axis(info: CubeInfo) -> str:
    """Axis label of the cube's time axis (epochs or steps, root attribute ``time_unit``)."""
    return f"{info.time_unit} (symlog scale, 0 = initialization)"


def new_figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def load(info: CubeInfo, probe: str, metrics: Sequence[str] | None = None,
         width: int | None = None) -> ProbeData:
    pd = load_probe(info.path, probe, metrics, width)
    if pd is None:  # listed but unreadable; make_figure checked presence already
        raise CkptError(f"no '{probe}' probe in this cube; compute it with: "
                        f"{info.rerun_hint(probe)}", info.path)
    return pd


def pick_width(pd: ProbeData, width: int | None, metric: str) -> int:
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


def load_width(info: CubeInfo, pd: ProbeData, width: int | None, metric: str) -> ProbeData:
    """``metric`` of ``pd.name`` at one width, read alone (a large metric costs one width's
    column, not the cube): ``width`` (checked against ``pd``) or, as :func:`pick_width`, the
    largest width with any computed value, trying widths with a ``done`` cell from the largest
    down."""
    if width is not None:
        return load(info, pd.name, (metric,), pick_width(pd, width, metric))
    widths = [int(w) for w in pd.widths.tolist()]
    done = pd.done.reshape(len(pd.epochs), len(widths)) if pd.done.size else None
    for j in sorted(range(len(widths)), key=lambda j: widths[j], reverse=True):
        if done is not None and not done[:, j].any():
            continue
        col = load(info, pd.name, (metric,), widths[j])
        if metric not in col.values:
            raise CkptError(f"the '{pd.name}' probe has no '{metric}'", info.path)
        if np.isfinite(col.values[metric]).any():
            return col
    raise CkptError(f"the '{pd.name}' probe has no computed cells")


def pick_subset(pd: ProbeData, subset: str | None, default: str) -> str:
    have = [str(s) for s in pd.coords.get("subset", ())]
    s = subset or default
    if s not in have:
        raise UsageError(f"--subset {s}: the '{pd.name}' probe was not measured on it"
                         f"{did_you_mean(s, have)}")
    return s


def epoch_mask(epochs: np.ndarray, opts: PlotOptions) -> np.ndarray:
    if opts.epochs is None:
        return np.ones(epochs.shape, dtype=bool)
    mask = np.isin(epochs, np.asarray(opts.epochs, dtype=np.int64))
    if not mask.any():
        lo, hi = min(opts.epochs), max(opts.epochs)
        raise UsageError(f"--epochs: no checkpoint in {lo}..{hi} in this cube (epochs "
                         f"{int(epochs.min())}..{int(epochs.max())})" if epochs.size
                         else "--epochs: the cube has no epochs")
    return mask


def symlog_axis(ax: Axes, epochs: np.ndarray, axis: str = "x") -> None:
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


def cell_edges(ax: Axes, values: np.ndarray, axis: str = "x") -> np.ndarray:
    """Cell edges around ``values`` that are centred in the axis's transformed space."""
    tr = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    t = tr.transform(np.asarray(values, dtype=np.float64))
    if t.size == 1:
        e = np.array([t[0] - 0.25, t[0] + 0.25])
    else:
        mid = (t[1:] + t[:-1]) / 2
        e = np.concatenate(([t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]))
    return np.asarray(tr.inverted().transform(e))


def width_axis(ax: Axes, widths: Sequence[int]) -> None:
    """Log2 width axis labelled with the widths themselves."""
    from matplotlib.ticker import FixedLocator, NullLocator

    if len(widths) > 1 and min(widths) > 0:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(widths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(w) for w in widths])
    ax.set_xlabel("width (base channels)")


def line_colors(n: int, cmap: str = "viridis") -> list[Any]:
    from matplotlib import colormaps

    cm = colormaps[cmap]
    if n == 1:
        return [cm(0.45)]
    return [cm(0.05 + 0.85 * i / (n - 1)) for i in range(n)]


def legend_bar(fig: Figure, axes: Any, colors: Sequence[Any], labels: Sequence[str],
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


def stroke(color: str = "white", width: float = 3.0) -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=color)]


def no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.4", wrap=True)


def interpolation_threshold(info: CubeInfo) -> Any:
    """Interpolation threshold from the metrics probe, or None."""
    if "metrics" not in info.probes:
        return None
    m = load_probe(info.path, "metrics", ("error",))
    err = m.get("error", subset="train") if m else None
    if m is None or err is None:
        return None
    return an.interpolation_threshold(m.widths, an.last_finite(err))



def on_epochs(src_epochs: np.ndarray, values: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """``values`` (indexed by ``src_epochs``) at ``epochs``; NaN where absent."""
    pos = {int(e): i for i, e in enumerate(src_epochs.tolist())}
    out = np.full(epochs.shape, np.nan)
    for i, e in enumerate(epochs.tolist()):
        k = pos.get(int(e))
        if k is not None:
            out[i] = values[k]
    return out

