"""Which values of a metric become TensorBoard / W&B series, and their names.

A metric with at most ``max_scalars`` values per cell becomes one scalar series per value,
tagged ``probe/metric`` followed by its coordinates: string values as they are
(``metrics/error/test``, ``weights_spectrum/alpha/features.0``), numbers as ``name=value``
(``hessian/eigenvalues/train/k=0``). A metric whose last dimension is ``bin`` (a histogram,
such as ``weights_spectrum/histogram``) becomes one histogram per value of its other
dimensions. Larger metrics (spectrum's ``k``, landscape's grids) are skipped with a note: they
are in the tidy table (``--to csv|parquet``, ``to_dataframe``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default of ``--max-scalars``: the most series one metric of one probe may become.
MAX_SCALARS = 32


@dataclass(frozen=True)
class Plan:
    """How one metric is exported: ``kind`` ``scalars`` (``tags`` in C order of its dims),
    ``histogram`` (``tags`` in C order of the dims before ``bin``; ``edges`` of the bins) or
    ``skip`` (``reason``)."""

    kind: str
    tags: tuple[str, ...] = ()
    edges: np.ndarray | None = None
    reason: str = ""


def _part(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value.replace("/", "_") if value else f"{name}="
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def tags(probe: str, metric: str, dims: tuple[str, ...],
         coords: dict[str, tuple[Any, ...]]) -> tuple[str, ...]:
    """One tag per value of ``dims`` in C order (``probe/metric`` for a scalar metric)."""
    combos = itertools.product(*[coords[d] for d in dims])
    return tuple("/".join([probe, metric, *(_part(d, v) for d, v in zip(dims, c))])
                 for c in combos)


def bin_edges(centres: np.ndarray) -> np.ndarray:
    """Edges of bins from their centres: halfway between neighbours, the ends as far out as
    the neighbouring half-width (exact for equal bins)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def plan(probe: str, metric: str, dims: tuple[str, ...], coords: dict[str, tuple[Any, ...]],
         max_scalars: int = MAX_SCALARS) -> Plan:
    """How ``probe/metric`` (of ``dims``) is exported."""
    size = math.prod(len(coords[d]) for d in dims)
    if dims and dims[-1] == "bin" and not isinstance(coords["bin"][0], str):
        rest = dims[:-1]
        if math.prod(len(coords[d]) for d in rest) <= max_scalars:
            return Plan("histogram", tags(probe, metric, rest, coords),
                        bin_edges(np.asarray(coords["bin"])))
    elif size <= max_scalars:
        return Plan("scalars", tags(probe, metric, dims, coords))
    shape = ", ".join(f"{d} {len(coords[d])}" for d in dims)
    return Plan("skip", reason=f"{probe}/{metric} ({shape}: {size} values per cell, more than "
                               f"--max-scalars {max_scalars}) is not exported as series; it is "
                               "in --to csv|parquet")


class Plans:
    """The plans of one export, made once per metric: :meth:`select` (for
    :func:`~ckpt_analyzer.export.tidy.iter_blocks`) reads only what is exported, and ``notes``
    says what is not."""

    def __init__(self, max_scalars: int = MAX_SCALARS, histograms: bool = True) -> None:
        self.max_scalars, self.histograms = max_scalars, histograms
        self.plans: dict[tuple[str, str], Plan] = {}
        self.notes: list[str] = []

    def select(self, probe: str, metric: str, dims: tuple[str, ...],
               coords: dict[str, tuple[Any, ...]]) -> bool:
        if (probe, metric) not in self.plans:
            p = plan(probe, metric, dims, coords, self.max_scalars)
            if p.kind == "histogram" and not self.histograms:
                p = Plan("skip", reason=f"{probe}/{metric}: histograms are not exported here")
            self.plans[(probe, metric)] = p
            if p.kind == "skip":
                self.notes.append(p.reason)
        return self.plans[(probe, metric)].kind != "skip"

    def of(self, probe: str, metric: str) -> Plan:
        return self.plans[(probe, metric)]
