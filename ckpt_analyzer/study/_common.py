"""Shared pieces of the study figures: mean ± std bands over seeds, the agreed-peak marker,
loading every run's probe group, the epochs and widths the runs share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cube.read import load_probe
from ..errors import CkptError, UsageError


def _band(ax: Any, x: np.ndarray, stack: np.ndarray, color: Any, label: str,
          ls: str = "-", marker: str | None = None) -> None:
    """Mean line of ``stack`` (runs, points) with a mean ± std band (std with ddof = 1)."""
    ok = np.isfinite(stack).any(axis=0)
    if not ok.any():
        return
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(stack[:, ok], axis=0)
        n = np.isfinite(stack[:, ok]).sum(axis=0)
        std = np.where(n >= 2, np.nanstd(stack[:, ok], axis=0, ddof=1) if stack.shape[0] > 1
                       else 0.0, 0.0)
    ax.plot(x[ok], mean, ls=ls, marker=marker, color=color, lw=1.8, label=label)
    if stack.shape[0] > 1:
        ax.fill_between(x[ok], mean - std, mean + std, color=color, alpha=0.2, lw=0)


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a: Any) -> None:
        self._w.__exit__(*a)


def _mark_peak(ax: Any, agree: dict[str, Any], widths: list[int], stack: np.ndarray,
               color: Any, scale: float = 1.0) -> None:
    """The agreed model-wise peak (``agreement`` dict) as a marker on the mean curve of
    ``stack`` (runs, widths), labelled with how many runs agree."""
    if agree["value"] is None or int(agree["value"]) not in widths:
        return
    with _quiet():
        y = float(np.nanmean(stack[:, widths.index(int(agree["value"]))])) * scale
    ax.plot([agree["value"]], [y], "v", color=color, mec="black", ms=10,
            label=f"peak w = {agree['value']} ({agree['count']}/{agree['of']} runs)")


def _groups(study: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(g["noise"], list(g["cubes"])) for g in study["groups"]]


def _common_epochs(arrays: Sequence[np.ndarray], notes: list[str]) -> np.ndarray:
    sets = [set(int(e) for e in a.tolist()) for a in arrays]
    common = set.intersection(*sets) if sets else set()
    if any(s != sets[0] for s in sets):
        notes.append("the runs were saved at different epochs: curves use the "
                     f"{len(common)} epochs they share")
    return np.array(sorted(common), dtype=np.int64)


def _on(src: np.ndarray, vals: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    pos = {int(e): i for i, e in enumerate(src.tolist())}
    return np.array([vals[pos[int(e)]] for e in epochs.tolist()], dtype=np.float64)


def _pick_width(widths: Sequence[int], width: int | None) -> int:
    if width is not None:
        if width not in widths:
            raise UsageError(f"--width {width}: not in every cube (common widths: "
                             f"{', '.join(map(str, widths))})")
        return width
    if not widths:
        raise CkptError("the cubes share no width")
    return max(widths)


def _load_all(groups: list[tuple[str, list[str]]], probe: str, metrics: tuple[str, ...],
              kind: str, subset: str | None = None, **sel: Any) -> dict[str, Any]:
    """Each cube's ``probe`` group (only ``metrics``); CkptError naming the cube without it,
    UsageError when ``subset`` is given and the first metric was not measured on it."""
    per_cube: dict[str, Any] = {}
    for _, cubes in groups:
        for c in cubes:
            data = load_probe(c, probe, metrics)
            if data is None:
                raise CkptError(f"no '{probe}' probe, needed by --kind {kind}", c)
            if subset is not None and data.get(metrics[0], subset=subset, **sel) is None:
                raise UsageError(f"--subset {subset}: the {probe} of {c} was not measured on it")
            per_cube[c] = data
    return per_cube


def _shared_coord(per_cube: dict[str, Any], name: str, differ: str) -> np.ndarray:
    """The numeric coordinate ``name`` that every cube's probe shares; UsageError ``differ``."""
    values = {tuple(np.round(np.asarray(d.coords.get(name, ()), dtype=float), 12))
              for d in per_cube.values()}
    if len(values) != 1:
        raise UsageError(differ)
    return np.array(next(iter(values)))


def _common_widths(per_cube: dict[str, Any]) -> list[int]:
    return sorted(set.intersection(*[{int(w) for w in d.widths.tolist()}
                                     for d in per_cube.values()]))


def _title(study: dict[str, Any], what: str) -> str:
    runs = study["runs"]
    ds = sorted({str(r.get("dataset")) for r in runs})
    arch = sorted({str(r.get("arch")) for r in runs})
    return f"{', '.join(arch)} on {', '.join(ds)}, {len(runs)} runs: {what}"
