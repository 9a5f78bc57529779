"""Weights & Biases export: one W&B run per cube and width (name ``<run>/w<width>``, group
``<run>``), offline by default (``DIR/wandb/offline-run-*``, uploaded later with
``wandb sync``), or added to an existing run (``run_id``: ``wandb.init(id=..., resume="allow")``)
next to its training curves.

Each probe's series are bound to the cube's time axis with
``define_metric("<probe>/*", step_metric="epoch")`` (``step`` for a cube on steps), and every
row carries that value: W&B draws them against it whatever its own ``_step`` is, so epochs
logged after the training run ended, or out of order, are not dropped. The glob is per probe
rather than ``"*"`` so that the training curves of a resumed run keep their own x-axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cube.read import read_cube_info, read_summary
from ..errors import CkptError, UsageError
from .tags import MAX_SCALARS, Plans
from .tidy import iter_blocks


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise CkptError("--to wandb needs the wandb package: "
                        "pip install 'ckpt-analyzer[wandb]'") from None
    return wandb


def rows(path: str | os.PathLike[str], width: int, probes: Sequence[str] | None,
         max_scalars: int, notes: dict[str, None], histogram: Any = None
         ) -> dict[int, dict[str, Any]]:
    """``{epoch: {key: value}}`` of one width of a cube: finite scalars, and with
    ``histogram`` (``wandb.Histogram``) one histogram per ``bin`` metric value."""
    out: dict[int, dict[str, Any]] = {}
    plans = Plans(max_scalars, histograms=histogram is not None)
    for b in iter_blocks(path, probes, [width], select=plans.select):
        p = plans.of(b.probe, b.metric)
        vals = b.values.reshape(len(b.epochs), len(p.tags), -1)
        for i, ep in enumerate(b.epochs.tolist()):
            row = out.setdefault(int(ep), {})
            for tag, v in zip(p.tags, vals[i]):
                if p.kind == "scalars":
                    if np.isfinite(v[0]):
                        row[tag] = float(v[0])
                elif np.all(np.isfinite(v)):
                    assert p.edges is not None
                    row[tag] = histogram(np_histogram=(v.tolist(), p.edges.tolist()))
    notes.update(dict.fromkeys(plans.notes))
    return out


def write_wandb(cubes: Sequence[str | os.PathLike[str]], labels: Sequence[str], out_dir: Path,
                probes: Sequence[str] | None = None, widths: Sequence[int] | None = None,
                max_scalars: int = MAX_SCALARS, project: str = "ckpt-analyzer",
                run_id: str | None = None, mode: str = "offline") -> dict[str, Any]:
    """Log the cubes to W&B; returns ``{"runs": [run dirs], "ids": [...], "scalars": n,
    "notes": [...]}``. ``run_id`` needs exactly one cube and one width."""
    wandb = _wandb()
    plan_w: list[tuple[str | os.PathLike[str], str, int]] = []
    for path, label in zip(cubes, labels):
        for w in read_cube_info(path).widths.tolist():
            if widths is None or w in widths:
                plan_w.append((path, label, int(w)))
    if run_id is not None and len(plan_w) != 1:
        which = ", ".join(f"{lab} w{w}" for _, lab, w in plan_w) or "nothing"
        raise UsageError(f"--wandb-run: adds one cube's width to one run, but this export has "
                         f"{len(plan_w)} ({which}); pick one cube and one --widths W")
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: dict[str, None] = {}
    runs, ids = [], []
    n = 0
    for path, label, w in plan_w:
        info = read_cube_info(path)
        unit = info.time_unit
        summary = read_summary(path)
        config = {"ckpt_analyzer": {
            "cube": str(path), "run": label, "source": info.source, "width": w,
            "time_unit": unit,
            "probes": {k: {"version": v["version"], "seed": v["seed"], "config": v["config"]}
                       for k, v in summary["probes"].items()
                       if probes is None or k in probes}}}
        data = rows(path, w, probes, max_scalars, notes, wandb.Histogram)
        kwargs: dict[str, Any] = {"project": project, "dir": str(out_dir), "mode": mode,
                                  "config": config, "job_type": "analysis"}
        if run_id is not None:
            kwargs.update(id=run_id, resume="allow")
        else:
            kwargs.update(name=f"{label}/w{w}", group=label)
        run = wandb.init(**kwargs)
        try:
            run.define_metric(unit)
            for probe in sorted({k.split("/", 1)[0] for row in data.values() for k in row}):
                run.define_metric(f"{probe}/*", step_metric=unit)
            for ep in sorted(data):
                run.log({unit: ep, **data[ep]})
                n += sum(1 for v in data[ep].values() if isinstance(v, float))
            ids.append(str(run.id))
            runs.append(str(Path(run.dir).parent))  # run.dir is its files/ folder
        finally:
            run.finish()
    return {"runs": runs, "ids": ids, "scalars": n, "notes": list(notes)}
