"""TensorBoard export: one run per cube and width (``DIR/<run>/w<width>``), written with
TensorBoard's own event file writer (the ``tensorboard`` extra; no torch needed); the global
step is the cube's epoch (or step, when its ``time_unit`` is ``step``)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cube.read import read_cube_info
from ..errors import CkptError
from .tags import MAX_SCALARS, Plans
from .tidy import iter_blocks

EVENTS = "events.out.tfevents."


def run_dir(out_dir: Path, label: str, width: int) -> Path:
    return out_dir / label / f"w{width}"


def output_paths(cubes: Sequence[str | os.PathLike[str]], labels: Sequence[str], out_dir: Path,
                 widths: Sequence[int] | None) -> list[Path]:
    """The run folders an export writes (one per cube and width)."""
    out = []
    for path, label in zip(cubes, labels):
        for w in read_cube_info(path).widths.tolist():
            if widths is None or w in widths:
                out.append(run_dir(out_dir, label, int(w)))
    return out


def clear(run: Path) -> None:
    """``--overwrite``: remove the event files of an earlier export of this run (only them)."""
    if run.is_dir():
        for f in run.iterdir():
            if f.name.startswith(EVENTS) and f.is_file():
                f.unlink()


class _Writer:
    """TensorBoard's event file writer (``tensorboard.summary.writer``, which
    ``torch.utils.tensorboard`` and tensorboardX wrap), one event per step and block."""

    def __init__(self, log_dir: Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2
        self._file = EventFileWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        s = self._summary
        self._add(step, [s.Summary.Value(tag=t, simple_value=v) for t, v in values.items()])

    def histograms(self, step: int, values: dict[str, np.ndarray], edges: np.ndarray) -> None:
        s = self._summary
        centres = (edges[1:] + edges[:-1]) / 2
        vals = [s.Summary.Value(tag=t, histo=s.HistogramProto(
            min=float(edges[0]), max=float(edges[-1]), num=float(c.sum()),
            sum=float(centres @ c), sum_squares=float((centres ** 2) @ c),
            bucket_limit=edges[1:].tolist(), bucket=c.tolist())) for t, c in values.items()]
        self._add(step, vals)

    def _add(self, step: int, values: list[Any]) -> None:
        if values:
            self._file.add_event(self._event(wall_time=time.time(), step=int(step),
                                             summary=self._summary.Summary(value=values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _require() -> None:
    try:
        import tensorboard  # noqa: F401
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
    except ImportError:
        raise CkptError("--to tensorboard needs the tensorboard package: "
                        "pip install 'ckpt-analyzer[tensorboard]'") from None


def write_tensorboard(cubes: Sequence[str | os.PathLike[str]], labels: Sequence[str],
                      out_dir: Path, probes: Sequence[str] | None = None,
                      widths: Sequence[int] | None = None,
                      max_scalars: int = MAX_SCALARS) -> dict[str, Any]:
    """Write every measured scalar (and histogram) of the cubes; NaN values (undefined, such
    as the alpha of a layer too small for a fit) are not written. Returns ``{"runs": [...],
    "scalars": n, "histograms": n, "notes": [...]}``."""
    _require()
    runs: list[str] = []
    notes: dict[str, None] = {}
    n_scalars = n_hist = 0
    for path, label in zip(cubes, labels):
        cube_widths = [int(w) for w in read_cube_info(path).widths.tolist()
                       if widths is None or w in widths]
        for w in cube_widths:
            rd = run_dir(out_dir, label, w)
            writer = _Writer(rd)
            plans = Plans(max_scalars, histograms=True)
            try:
                for b in iter_blocks(path, probes, [w], select=plans.select):
                    p = plans.of(b.probe, b.metric)
                    vals = b.values.reshape(len(b.epochs), len(p.tags), -1)
                    for step, row in zip(b.epochs.tolist(), vals):
                        if p.kind == "scalars":
                            ok = np.isfinite(row[:, 0])  # NaN: undefined, not a point
                            writer.scalars(step, {t: float(v) for t, v, good in
                                                  zip(p.tags, row[:, 0], ok) if good})
                            n_scalars += int(ok.sum())
                        else:
                            assert p.edges is not None
                            ok = np.isfinite(row).all(axis=1)
                            writer.histograms(step, {t: c for t, c, good in
                                                     zip(p.tags, row, ok) if good}, p.edges)
                            n_hist += int(ok.sum())
            finally:
                writer.close()
            notes.update(dict.fromkeys(plans.notes))
            runs.append(str(rd))
    return {"runs": runs, "scalars": n_scalars, "histograms": n_hist, "notes": list(notes)}
