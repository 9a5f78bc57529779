"""Live export of a cube that is still being written (``ckpt-analyze export --follow``, or the
runner's writer after each materialization): :class:`LiveExporter`.

Each call exports only the cells that are new since the previous call: a (probe, width, epoch)
cell is written once. TensorBoard: the new steps are appended to the run's event file
(``DIR/<run>/w<width>``, the layout of the batch export); W&B: each call resumes the same run
per width (``wandb.init(id=..., resume="allow")``, offline by default) and logs the new epochs
on the cube's epoch axis; CSV/Parquet are batch tables and not exported live.

What was exported is kept in ``DIR/.ckpt-live-<run>.json`` (written atomically after each
call), so a restarted follow resumes: no step is written twice and the W&B runs keep their ids.
A cell measured again after it was exported (``run --overwrite``) is not exported again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..errors import CkptError, UsageError
from .tags import MAX_SCALARS, Plans

LIVE_TARGETS = ("tensorboard", "wandb")


def state_path(out_dir: Path, label: str) -> Path:
    """The file recording what a live export of run ``label`` wrote under ``out_dir``."""
    return out_dir / f".ckpt-live-{label}.json"


def follow(exporter: LiveExporter, cube: str | os.PathLike[str], poll: float,
           idle_timeout: float, on_export: Any = None) -> int:
    """``export --follow``: export ``cube`` with ``exporter`` whenever its file changes (each
    materialization of the writer replaces it), until no ``ckpt-analyze run`` writes it; then
    once more and return the number of calls that exported something. Waits for a cube that
    does not exist yet, for at most ``idle_timeout`` seconds (0: for ever) without a change.
    ``on_export(result)`` is called after each export that wrote cells."""
    import time

    from ..cube.journal import cube_busy

    path = Path(cube)
    seen: tuple[int, int] | None = None
    changed = time.monotonic()
    n = 0
    while True:
        busy = cube_busy(path)
        if path.is_file():
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp != seen:
                seen, changed = stamp, time.monotonic()
                res = exporter(path)
                if res["cells"]:
                    n += 1
                    if on_export is not None:
                        on_export(res)
            if not busy and not cube_busy(path) and path.stat().st_mtime_ns == seen[0]:
                return n  # the writer is gone and its last materialization is exported
        if idle_timeout and time.monotonic() - changed > idle_timeout:
            raise CkptError(f"--follow: nothing new in {idle_timeout:g} s (--idle-timeout)",
                            path)
        time.sleep(poll)


class LiveExporter:
    """``exporter(cube_path)`` exports the cells of the cube that no earlier call exported;
    returns ``{"cells": new cells, "scalars": n, "histograms": n, "notes": [...]}``. Call
    :meth:`close` at the end (it flushes and closes the TensorBoard files; also a context
    manager).

    ``label``: the run's name under ``out_dir`` (default: :func:`run_labels` of the cube, as
    the batch export names it). ``overwrite``: start afresh over an earlier export of this run
    (without it, an earlier batch export's event files are refused; an earlier live export's
    record is resumed)."""

    def __init__(self, to: str, out_dir: str | os.PathLike[str],
                 probes: Sequence[str] | None = None, widths: Sequence[int] | None = None,
                 max_scalars: int = MAX_SCALARS, label: str | None = None,
                 overwrite: bool = False, wandb_project: str = "ckpt-analyzer",
                 wandb_mode: str = "offline") -> None:
        if to not in LIVE_TARGETS:
            raise UsageError(f"--follow: exports live to {' or '.join(LIVE_TARGETS)} only "
                             f"(--to {to} writes one table: export it when the run is done)")
        if max_scalars < 1:
            raise UsageError(f"--max-scalars: must be at least 1 (got {max_scalars})")
        self.to, self.out = to, Path(out_dir)
        self.probes = list(probes) if probes else None
        self.widths = list(widths) if widths is not None else None
        self.max_scalars, self.label, self.overwrite = max_scalars, label, overwrite
        self.project, self.mode = wandb_project, wandb_mode
        self._state: dict[str, Any] | None = None
        self._writers: dict[int, Any] = {}

    # ------------------------------------------------------------------ state
    def _load(self, cube: Path) -> dict[str, Any]:
        if self._state is not None:
            return self._state
        if self.label is None:
            from .tidy import run_labels

            self.label = run_labels([cube])[0]
        if self.out.exists() and not self.out.is_dir():
            raise CkptError("is not a folder; export writes into a folder", self.out)
        path = state_path(self.out, self.label)
        state: dict[str, Any] = {"to": self.to, "exported": {}, "wandb_ids": {}}
        if path.is_file() and not self.overwrite:
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CkptError(f"cannot read the live export's record ({exc}); --overwrite "
                                "starts afresh", path) from None
            if old.get("to") != self.to:
                raise CkptError(f"records a live export to {old.get('to')}, not {self.to}",
                                path)
            state = old
        elif self.to == "tensorboard":
            from . import to_tensorboard as tb

            tb._require()
            run = self.out / self.label
            old_events = sorted(run.glob(f"w*/{tb.EVENTS}*")) if run.is_dir() else []
            if old_events and not self.overwrite:
                raise CkptError(f"holds an earlier export ({old_events[0].parent}); "
                                "--overwrite replaces it", self.out)
            for d in {f.parent for f in old_events}:
                tb.clear(d)
        else:
            from .to_wandb import _wandb

            _wandb()
        self._state = state
        return state

    def _save(self) -> None:
        assert self._state is not None and self.label is not None
        self.out.mkdir(parents=True, exist_ok=True)
        path = state_path(self.out, self.label)
        with atomic_path(path, tmp=path.with_name(f"{path.name}.tmp")) as tmp:
            Path(tmp).write_text(json.dumps(self._state, sort_keys=True), encoding="utf-8")

    def _new(self, width: int, probe: str, epochs: np.ndarray) -> np.ndarray:
        """Which of ``epochs`` (of one probe at one width) are not exported yet."""
        assert self._state is not None
        seen = set(self._state["exported"].get(str(width), {}).get(probe, []))
        return np.array([e not in seen for e in epochs.tolist()], dtype=bool)

    def _mark(self, width: int, probe: str, epochs: Sequence[int]) -> None:
        assert self._state is not None
        per = self._state["exported"].setdefault(str(width), {})
        per[probe] = sorted(set(per.get(probe, [])) | {int(e) for e in epochs})

    # ------------------------------------------------------------------ export
    def __call__(self, cube_path: str | os.PathLike[str]) -> dict[str, Any]:
        from ..cube.read import read_cube_info

        cube = Path(cube_path)
        info = read_cube_info(cube)  # checks the format: one line naming the file
        self._load(cube)
        widths = [int(w) for w in info.widths.tolist()
                  if self.widths is None or w in self.widths]
        probes = [p for p in info.probes if self.probes is None or p in self.probes]
        res: dict[str, Any] = {"cells": 0, "scalars": 0, "histograms": 0, "notes": []}
        if not probes:
            return res
        notes: dict[str, None] = {}
        for w in widths:
            if self.to == "tensorboard":
                self._tensorboard(cube, w, probes, res, notes)
            else:
                self._wandb(cube, info, w, probes, res, notes)
        res["notes"] = list(notes)
        if res["cells"] or not state_path(self.out, str(self.label)).is_file():
            self._save()
        return res

    def _tensorboard(self, cube: Path, width: int, probes: list[str], res: dict[str, Any],
                     notes: dict[str, None]) -> None:
        from .tidy import iter_blocks
        from .to_tensorboard import _Writer, run_dir

        plans = Plans(self.max_scalars, histograms=True)
        fresh: dict[str, set[int]] = {}
        for b in iter_blocks(cube, probes, [width], select=plans.select):
            keep = self._new(width, b.probe, b.epochs)
            if not keep.any():
                continue
            if width not in self._writers:
                self._writers[width] = _Writer(run_dir(self.out, str(self.label), width))
            writer = self._writers[width]
            p = plans.of(b.probe, b.metric)
            vals = b.values[keep].reshape(int(keep.sum()), len(p.tags), -1)
            steps = b.epochs[keep].tolist()
            fresh.setdefault(b.probe, set()).update(int(s) for s in steps)
            for step, row in zip(steps, vals):
                if p.kind == "scalars":
                    ok = np.isfinite(row[:, 0])  # NaN: undefined, not a point
                    writer.scalars(step, {t: float(v) for t, v, good in
                                          zip(p.tags, row[:, 0], ok) if good})
                    res["scalars"] += int(ok.sum())
                else:
                    assert p.edges is not None
                    ok = np.isfinite(row).all(axis=1)
                    writer.histograms(step, {t: c for t, c, good in zip(p.tags, row, ok)
                                             if good}, p.edges)
                    res["histograms"] += int(ok.sum())
        if width in self._writers:
            self._writers[width].flush()
        for probe, epochs in fresh.items():
            self._mark(width, probe, sorted(epochs))
            res["cells"] += len(epochs)
        notes.update(dict.fromkeys(plans.notes))

    def _wandb(self, cube: Path, info: Any, width: int, probes: list[str], res: dict[str, Any],
               notes: dict[str, None]) -> None:
        from .to_wandb import _wandb, rows

        wandb = _wandb()
        data = rows(cube, width, probes, self.max_scalars, notes, wandb.Histogram)
        new: dict[int, dict[str, Any]] = {}
        fresh: dict[str, set[int]] = {}
        for ep in sorted(data):
            for key, value in data[ep].items():
                probe = key.split("/", 1)[0]
                if self._new(width, probe, np.array([ep]))[0]:
                    new.setdefault(ep, {})[key] = value
                    fresh.setdefault(probe, set()).add(ep)
        if not new:
            return
        assert self._state is not None
        ids = self._state["wandb_ids"]
        unit = info.time_unit
        kwargs: dict[str, Any] = {"project": self.project, "dir": str(self.out),
                                  "mode": self.mode, "job_type": "analysis",
                                  "name": f"{self.label}/w{width}", "group": self.label,
                                  "config": {"ckpt_analyzer": {
                                      "cube": cube.name, "run": self.label, "width": width,
                                      "time_unit": unit}}}
        if str(width) in ids:
            kwargs.update(id=ids[str(width)], resume="allow")
        self.out.mkdir(parents=True, exist_ok=True)
        run = wandb.init(**kwargs)
        try:
            ids[str(width)] = str(run.id)
            run.define_metric(unit)
            for probe in sorted({k.split("/", 1)[0] for row in new.values() for k in row}):
                run.define_metric(f"{probe}/*", step_metric=unit)
            for ep in sorted(new):
                run.log({unit: ep, **new[ep]})
                res["scalars"] += sum(1 for v in new[ep].values() if isinstance(v, float))
        finally:
            run.finish()
        for probe, epochs in fresh.items():
            self._mark(width, probe, sorted(epochs))
            res["cells"] += len(epochs)

    def close(self) -> None:
        for w in list(self._writers):
            self._writers.pop(w).close()

    def __enter__(self) -> LiveExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
