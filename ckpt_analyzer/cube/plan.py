"""The cells each probe was asked to measure: the root attribute ``plan``.

A probe run on a selection (``ckpt-analyze run --probe sharpness --epochs 0,8,39,300``) leaves
the other cells of the cube's grid empty by design; the report calls a cube *complete* when
every planned cell of every probe is done, not every cell of the grid. The plan is JSON text
(root attributes are strings), ``{probe: [{"epochs": [...], "widths": [...]}, ...]}``: the
union of the rectangles (epochs × widths) of every run that measured the probe, a re-run with
``--overwrite`` starting afresh. Cubes written before the plan was recorded have no attribute:
every cell of their grid counts as planned (as before).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

#: The root attribute holding the plan.
PLAN_ATTR = "plan"


def _parse(text: Any) -> dict[str, list[dict[str, list[int]]]]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        plan = json.loads(text)
    except ValueError:
        return {}
    return plan if isinstance(plan, dict) else {}


def add_plan(old: Any, probe: str, epochs: Iterable[int], widths: Iterable[int],
             replace: bool = False) -> str:
    """The plan text ``old`` with the rectangle ``epochs × widths`` added for ``probe``
    (``replace``: instead of its earlier rectangles)."""
    plan = _parse(old)
    rect = {"epochs": sorted({int(e) for e in epochs}), "widths": sorted({int(w) for w in widths})}
    rects = [] if replace else list(plan.get(probe, []))
    if rect not in rects:
        rects.append(rect)
    plan[probe] = rects
    return json.dumps(plan, sort_keys=True)


def planned_cells(root: Mapping[str, Any], probe: str) -> set[tuple[int, int]] | None:
    """The ``(epoch, width)`` cells planned for ``probe`` by the root attributes ``root``, or
    None when the cube records no plan for it (every cell of the grid is planned)."""
    rects = _parse(root.get(PLAN_ATTR)).get(probe)
    if not rects:
        return None
    return {(int(e), int(w)) for r in rects for e in r.get("epochs", [])
            for w in r.get("widths", [])}
