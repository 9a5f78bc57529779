"""Storing the report in its cube (group ``report/``) and reading it back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..cube.derived import store_derived_group
from ..cube.read import read_cube_info, text
from ..errors import CkptError
from .build import REPORT_FORMAT, WIDTH_FIELDS, _clean

#: Name of the cube group holding the stored report (cubes of 0.1 used ``analysis``).
GROUP = "report"
_OLD_GROUP = "analysis"


def write_report(cube_path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Store ``report`` in the cube under ``report/`` (attribute ``report``: the JSON text; the
    per-width events as datasets on a ``width`` scale), atomically; an earlier report is
    replaced. The group is dropped when a later ``ckpt-analyze run`` rewrites the cube."""
    rows = report.get("per_width", [])
    per_width = {key: np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
                 for key in WIDTH_FIELDS}
    attrs = {"format": REPORT_FORMAT,
             "description": ("derived by 'ckpt-analyze report'; dropped when "
                             "'ckpt-analyze run' rewrites the cube"),
             "report": json.dumps(_clean(report), sort_keys=False)}
    try:
        store_derived_group(cube_path, GROUP, attrs, per_width, np.array([r["width"] for r in rows]))
    except CkptError as exc:
        if "another process" not in str(exc):
            raise
        raise CkptError("a 'ckpt-analyze run' is writing this cube; not storing the report "
                        "(use --no-store to print it without storing)", cube_path) from None


def read_report(cube_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The report stored by :func:`write_report`, or ``None`` if the cube has none."""
    import h5py

    p = Path(cube_path)
    read_cube_info(p)
    with h5py.File(p, "r") as f:
        for name in (GROUP, _OLD_GROUP):
            g = f.get(name)
            if isinstance(g, h5py.Group) and "report" in g.attrs and "probe_version" not in g.attrs:
                return dict(json.loads(text(g.attrs["report"])))
    return None
