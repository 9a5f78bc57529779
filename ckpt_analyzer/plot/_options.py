"""What to draw (:class:`PlotOptions`) and the output formats: no numpy, no matplotlib, so that
importing :mod:`ckpt_analyzer.plot` (the CLI does, for its ``--kind`` help) stays cheap."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class PlotOptions:
    """What to draw of a cube.

    Attributes:
        width: the width of one-width figures (spectrum, interpolation, landscape,
            weights-spectrum); default the largest. For double-descent, normalization and
            hessian it restricts the curves/points to it.
        subset: spectrum, hessian and landscape subset (default train); second error curve of
            double-descent (default train); one sharpness row (default clean and noisy).
        epochs: restrict to these epochs (e.g. ``range(0, 101)``); sharpness uses the last
            selected epoch with data; interpolation with one epoch and no width draws one
            line per width; landscape with two directions draws the 2-D contours at them (at
            most four, evenly picked) instead of at the last epoch.
        dpi: resolution of raster output.
    """

    width: int | None = None
    subset: str | None = None
    epochs: tuple[int, ...] | None = None
    dpi: int = 150
