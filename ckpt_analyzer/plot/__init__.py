"""Figures of a cube (``ckpt-analyze plot``), after the papers' figures.

One module per figure kind, each with a ``draw(info, options) -> Figure``; :data:`KIND_TABLE`
maps each kind to the probe it reads, its single-run draw function, its study draw function
(several cubes, :mod:`ckpt_analyzer.study.figures`; ``None``: one cube only) and a one-line
description, and is the only list of kinds: ``ckpt-analyze plot`` over one cube and over
several, the CLI's ``--kind`` help and the unknown-kind error (:func:`kind_spec`) all read it:

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
* ``hessian`` (hessian; metrics optional): the top Hessian eigenvalue (with each width's
  peak epoch, patience as the report) and the Hutchinson trace ± its standard error against
  epoch, one line per width (all, or ``--width``), subset ``train`` by default; the test
  error per width in a third panel when the cube has the metrics probe; when the cube has
  the density, each width's SLQ eigenvalue density at its last epoch (log scale, PyHessian).
* ``landscape`` (landscape): for one width (default the largest) the 1-D loss slices against
  α, one line per epoch; the barrier height on the path to each width's last checkpoint
  against epoch; with ``directions=2`` the 2-D loss contours at the last epoch, or at the
  ``--epochs`` chosen (at most four panels). Subset ``train`` by default (Li et al. 2018).
* ``weights-spectrum`` (weights_spectrum): for one width, each conv/linear layer's power-law
  exponent α (layers without a fit omitted, named in the title), spectral norm and stable
  rank against epoch (Martin & Mahoney).

Shared helpers (figure creation, the symlog epoch axis, the width axis, colours, the no-data
text, :class:`PlotOptions`) are in :mod:`ckpt_analyzer.plot._common`. matplotlib comes from the
``plot`` extra and is imported only when a figure is drawn; the kind modules (numpy, the cube
reader) are imported when their kind is drawn, so importing this package (as the CLI does for
its help) is cheap.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._atomic import atomic_path, check_output
from ..errors import CkptError, UsageError, unknown
from ._options import FORMATS, PlotOptions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..cube.read import CubeInfo

__all__ = ["FORMATS", "KINDS", "KIND_TABLE", "PROBE_OF", "Kind", "PlotOptions", "kind_spec",
           "kinds_help", "make_figure", "plot"]


_MISSING_MPL = "matplotlib is not installed: pip install 'ckpt-analyzer[plot]'"


class Kind(NamedTuple):
    """One figure kind: the probe it needs, its module (whose ``draw`` makes the figure of one
    cube), its study drawer as ``module.function`` under :mod:`ckpt_analyzer.study` (the figure
    over several cubes; ``None``: one cube only; named, not imported, as study sits above
    plot), what it shows, and the options that do not apply to it (with why; ``""``: no reason
    given)."""

    probe: str
    module: str
    study: str | None
    description: str
    rejects: tuple[tuple[str, str], ...] = ()

    @property
    def draw(self) -> Callable[[CubeInfo, PlotOptions], Figure]:
        """The kind's draw function (its module is imported on first use: numpy, h5py)."""
        fn: Any = importlib.import_module(f"{__name__}.{self.module}").draw
        return fn  # type: ignore[no-any-return]


#: Every figure kind, in the order the CLI lists them.
KIND_TABLE: dict[str, Kind] = {
    "spectrum": Kind("spectrum", "spectrum", "figures.draw_spectrum",
                     "R_k heat map over epochs for one width, error curves, T_E/T_R events"),
    "double-descent": Kind("metrics", "double_descent", "figures.draw_double_descent",
                           "error per width over epochs, final error against width, heat map"),
    "sharpness": Kind("sharpness", "sharpness", "probe_figures.draw_sharpness",
                      "input-space sharpness against width, one line per volume",
                      (("width", "it plots against width"),)),
    "interpolation": Kind("interpolation", "interpolation", "probe_figures.draw_interpolation",
                          "softmax change along interpolation paths against lambda",
                          (("subset", ""),)),
    "normalization": Kind("normalization", "normalization", "probe_figures.draw_normalization",
                          "test against train cross-entropy, raw and normalized",
                          (("subset", ""),)),
    "hessian": Kind("hessian", "hessian", "probe_figures.draw_hessian",
                    "Hessian top eigenvalue and trace (± stderr) over epochs per width, next to "
                    "the test error; the eigenvalue density at the last epoch"),
    "landscape": Kind("landscape", "landscape", "probe_figures.draw_landscape",
                      "loss slices over epochs for one width, barrier height per width, 2-D "
                      "contours"),
    "weights-spectrum": Kind("weights_spectrum", "weights_spectrum", "probe_figures.draw_weights_spectrum",
                             "per-layer power-law alpha, spectral norm and stable rank over "
                             "epochs for one width",
                             (("subset", "weights only: no data subset"),)),
}
KINDS = tuple(KIND_TABLE)
#: Plot kinds and the probe each one reads.
PROBE_OF = {name: k.probe for name, k in KIND_TABLE.items()}


def kinds_help() -> str:
    """``name: description (probe)`` for every kind, one a line (the CLI's ``--kind`` help);
    a kind without a study figure says it takes one cube."""
    return "\n".join(f"{name}: {k.description} ({k.probe} probe"
                     + ("" if k.study else "; one cube only") + ")"
                     for name, k in KIND_TABLE.items())


def kind_spec(kind: str, several: bool = False) -> Kind:
    """The :data:`KIND_TABLE` row of ``kind``. An unknown kind is one
    :class:`~ckpt_analyzer.errors.UsageError` line suggesting the closest; with ``several``
    (a figure over several cubes), so is a kind without a study drawer."""
    spec = KIND_TABLE.get(kind)
    if spec is None:
        raise unknown("plot kind", kind, KINDS)
    if several and spec.study is None:
        raise UsageError(f"--kind {kind} draws one cube, not several (over several cubes: "
                         f"{', '.join(n for n, k in KIND_TABLE.items() if k.study)})")
    return spec


def _require_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise CkptError(_MISSING_MPL) from None
    return matplotlib


def make_figure(cube_path: str | os.PathLike[str], kind: str,
                options: PlotOptions | None = None) -> Figure:
    """The figure of ``kind`` for a cube (see :data:`KIND_TABLE` and the module docstring)."""
    opts = options or PlotOptions()
    spec = kind_spec(kind)
    for option, why in spec.rejects:
        if getattr(opts, option) is not None:
            raise UsageError(f"--{option} does not apply to --kind {kind}"
                             + (f" ({why})" if why else ""))
    _require_matplotlib()
    from ..cube.read import read_cube_info

    info = read_cube_info(cube_path)
    if spec.probe not in info.probes:
        raise CkptError(f"no '{spec.probe}' probe in this cube, needed by --kind {kind}; compute "
                        f"it with: {info.rerun_hint(spec.probe)}", info.path)
    return spec.draw(info, opts)


def plot(cube_path: str | os.PathLike[str], kind: str, output: str | os.PathLike[str],
         options: PlotOptions | None = None) -> Path:
    """Draw ``kind`` and save it to ``output`` (.png, .pdf or .svg, written atomically)."""
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"-o {out}: unsupported format '{out.suffix or '(none)'}' "
                         f"(use .png, .pdf or .svg)")
    check_output(out, fmt, [cube_path])  # never over the cube, nor a file of another kind
    opts = options or PlotOptions()
    fig = make_figure(cube_path, kind, opts)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, tmp=out.with_name(f".{out.name}.tmp")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=opts.dpi)
    except OSError as exc:
        raise CkptError(f"cannot write the figure ({exc.strerror or exc})", out) from None
    return out
