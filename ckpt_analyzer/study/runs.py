"""Run folders of a study root: one contract run folder per (label noise, seed) combination."""

from __future__ import annotations

import os
from pathlib import Path


def run_folder_name(noise: float, seed: int) -> str:
    """``noise0.2-seed1``: the folder ``ckpt-train --seeds/--label-noise`` writes a run to."""
    return f"noise{noise:g}-seed{seed}"


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run folders (holding a ``run.json``) under ``root``, sorted; ``root`` itself if it is
    one. Hidden folders are skipped; the search does not descend into a run folder."""
    base = Path(root)
    if (base / "run.json").is_file():
        return [base]
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(base):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        if d != base and (d / "run.json").is_file():
            found.append(d)
            dirnames[:] = []
    return sorted(found)


def expand_cubes(args: list[str] | tuple[str, ...]) -> list[str]:
    """Cube arguments with each folder replaced by the ``analysis.h5`` of every run folder
    under it that has one (a study root, or one run folder); files are kept as given."""
    from ..errors import CkptError

    out: list[str] = []
    for a in args:
        p = Path(a)
        if not p.is_dir():
            out.append(a)
            continue
        found = [str(r / "analysis.h5") for r in find_runs(p) if (r / "analysis.h5").is_file()]
        if not found:
            raise CkptError("holds no run folder with an analysis.h5 (analyze it first: "
                            f"ckpt-analyze run {a} --probe ...)", p)
        out += found
    return out
