"""TensorBoard export: one run per cube and width (``DIR/<run>/w<width>``), written with
TensorBoard's own writer (``torch.utils.tensorboard.SummaryWriter``, the ``tensorboard``
extra); the global step is the cube's epoch (or step, when its ``time_unit`` is ``step``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cube.read import read_cube_info
from ..errors import CkptError
from .tags import MAX_SCALARS, Plan, plan
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


def _writer_class() -> Any:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CkptError("--to tensorboard needs the tensorboard package: "
                        "pip install 'ckpt-analyzer[tensorboard]'") from None
    return SummaryWriter


def write_tensorboard(cubes: Sequence[str | os.PathLike[str]], labels: Sequence[str],
                      out_dir: Path, probes: Sequence[str] | None = None,
                      widths: Sequence[int] | None = None,
                      max_scalars: int = MAX_SCALARS) -> dict[str, Any]:
    """Write every measured scalar (and histogram) of the cubes; NaN values (undefined, such
    as the alpha of a layer too small for a fit) are not written. Returns ``{"runs": [...],
    "scalars": n, "histograms": n, "notes": [...]}``."""
    writer_cls = _writer_class()
    runs: list[str] = []
    notes: dict[str, None] = {}
    n_scalars = n_hist = 0
    for path, label in zip(cubes, labels):
        cube_widths = [int(w) for w in read_cube_info(path).widths.tolist()
                       if widths is None or w in widths]
        for w in cube_widths:
            rd = run_dir(out_dir, label, w)
            writer = writer_cls(log_dir=str(rd))
            plans: dict[tuple[str, str], Plan] = {}
            try:
                for b in iter_blocks(path, probes, [w]):
                    key = (b.probe, b.metric)
                    if key not in plans:
                        plans[key] = plan(b.probe, b.metric, b.dims, b.coords, max_scalars)
                    p = plans[key]
                    if p.kind == "skip":
                        notes[p.reason] = None
                        continue
                    steps = b.epochs.tolist()
                    if p.kind == "scalars":
                        vals = b.values.reshape(len(steps), -1)
                        for i, step in enumerate(steps):
                            for tag, v in zip(p.tags, vals[i].tolist()):
                                if v == v:  # NaN: undefined, not a point
                                    writer.add_scalar(tag, v, global_step=step)
                                    n_scalars += 1
                    else:
                        assert p.edges is not None
                        n_hist += _histograms(writer, p, b.values, steps)
            finally:
                writer.close()
            runs.append(str(rd))
    return {"runs": runs, "scalars": n_scalars, "histograms": n_hist, "notes": list(notes)}


def _histograms(writer: Any, p: Plan, values: np.ndarray, steps: list[int]) -> int:
    """``values`` (epochs, *rest, bin): the weight of each bin, one histogram per ``rest``."""
    assert p.edges is not None
    edges = p.edges
    centres = (edges[1:] + edges[:-1]) / 2
    vals = values.reshape(len(steps), len(p.tags), edges.size - 1)
    n = 0
    for i, step in enumerate(steps):
        for tag, counts in zip(p.tags, vals[i]):
            if not np.all(np.isfinite(counts)):
                continue
            writer.add_histogram_raw(
                tag, min=float(edges[0]), max=float(edges[-1]), num=float(counts.sum()),
                sum=float(centres @ counts), sum_squares=float((centres ** 2) @ counts),
                bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
                global_step=step)
            n += 1
    return n
