"""Exporting cubes where researchers already look (``ckpt-analyze export``).

* ``tensorboard``: one run per cube and width, ``DIR/<run>/w<width>`` (:mod:`.to_tensorboard`);
* ``wandb``: one W&B run per cube and width, offline in ``DIR/wandb`` (:mod:`.to_wandb`);
* ``csv`` / ``parquet``: one tidy table of every cube, ``DIR/analysis.csv|.parquet``
  (:mod:`.to_table`, rows from :mod:`.tidy`, also :func:`to_dataframe`).

``<run>`` is the cube's file stem, or its run folder's name for the default ``analysis.h5``.
Only measured (``done``) cells are exported. Files of an earlier export that this one would
write are refused unless ``overwrite``; anything else in ``DIR`` is left alone (a TensorBoard
logdir of the training runs is a good ``DIR``); W&B never overwrites (each export is new
offline run folders).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CkptError, UsageError, did_you_mean
from .tags import MAX_SCALARS
from .tidy import iter_blocks, run_labels, to_dataframe

TARGETS = ("tensorboard", "wandb", "csv", "parquet")

__all__ = ["MAX_SCALARS", "TARGETS", "export", "iter_blocks", "run_labels", "to_dataframe"]


def check_target(to: str) -> str:
    """``to`` if it is an export target, else a UsageError suggesting the closest."""
    if to not in TARGETS:
        raise UsageError(f"--to: unknown target '{to}'{did_you_mean(to, TARGETS)}")
    return to


def _check_dir(out_dir: Path, taken: list[Path], overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CkptError("is not a folder; export writes into a folder", out_dir)
    busy = [p for p in taken if p.exists() and (p.is_file() or any(p.iterdir()))]
    if busy and not overwrite:
        more = f" and {len(busy) - 1} more" if len(busy) > 1 else ""
        raise CkptError(f"holds an earlier export ({busy[0]}{more}); --overwrite replaces it",
                        out_dir)


def export(cubes: Sequence[str | os.PathLike[str]], to: str, out_dir: str | os.PathLike[str],
           probes: Sequence[str] | None = None, widths: Sequence[int] | None = None,
           max_scalars: int = MAX_SCALARS, overwrite: bool = False,
           wandb_project: str = "ckpt-analyzer", wandb_run: str | None = None,
           wandb_mode: str = "offline") -> dict[str, Any]:
    """Export ``cubes`` to ``to`` under ``out_dir``; returns what was written
    (``files``/``runs``, counts, ``notes``: what was skipped and why)."""
    check_target(to)
    if max_scalars < 1:
        raise UsageError(f"--max-scalars: must be at least 1 (got {max_scalars})")
    if wandb_run is not None and to != "wandb":
        raise UsageError("--wandb-run: only with --to wandb")
    if not cubes:
        raise UsageError("no cube given")
    from ..cube.read import read_cube_info

    have_width = False
    for c in cubes:
        info = read_cube_info(c)  # checks the format
        for p in probes or ():
            if p not in info.probes:
                raise UsageError(f"{c}: no probe '{p}' in this cube{did_you_mean(p, info.probes)}")
        have_width |= widths is None or any(w in widths for w in info.widths.tolist())
    if not have_width:
        raise UsageError(f"--widths: no cube has width(s) {', '.join(map(str, widths or ()))}")
    out = Path(out_dir)
    labels = run_labels(cubes)
    if to == "tensorboard":
        from . import to_tensorboard as tb

        tb._require()  # a missing extra fails before anything is touched
        taken = tb.output_paths(cubes, labels, out, widths)
        _check_dir(out, taken, overwrite)
        for run in taken:
            tb.clear(run)
        result = tb.write_tensorboard(cubes, labels, out, probes, widths, max_scalars)
    elif to == "wandb":
        from .to_wandb import _wandb, write_wandb

        _wandb()
        _check_dir(out, [], overwrite)
        result = write_wandb(cubes, labels, out, probes, widths, max_scalars, wandb_project,
                             wandb_run, wandb_mode)
    else:
        from . import to_table

        to_table.require(to)
        _check_dir(out, to_table.output_paths(out, to), overwrite)
        out.mkdir(parents=True, exist_ok=True)
        result = to_table.write_table(cubes, labels, out, to, probes, widths)
    result.setdefault("notes", [])
    result["labels"] = labels
    return result
