"""Derived (non-probe) groups of a cube, such as the stored report: replaced atomically while the
journal is held, never part of the journal (a later materialization drops them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..errors import CkptError
from .filewrite import copy_file
from .journal import Cube
from .read import check_cube, is_probe


def store_derived_group(path: str | os.PathLike[str], group: str, attrs: Mapping[str, str],
                        per_width: Mapping[str, np.ndarray], widths: np.ndarray) -> None:
    """Replace the derived (non-probe) group ``group`` of a cube, atomically: the file is copied
    (by the kernel) to ``<cube>.tmp``, the group written there (``attrs`` plus float datasets on a ``width``
    scale), fsynced and ``os.replace``-d. The journal (if any) is held meanwhile, so a
    concurrent ``ckpt-analyze run`` is refused rather than raced. Derived groups do not survive
    a later materialization from the journal (which holds probe cells only)."""
    import h5py

    p = Path(path)
    check_cube(p)
    with h5py.File(p, "r") as f:
        g = f.get(group)
        if isinstance(g, h5py.Group) and is_probe(g):
            raise CkptError(f"a probe named '{group}' occupies this group; not writing it", p)
    lock = Cube(p).open() if Path(f"{p}.journal").exists() else None
    try:
        with atomic_path(p, tmp=f"{p}.tmp") as tmp:
            copy_file(p, tmp)  # a reflink or the kernel's copy: a 4 GB cube costs no memory
            with h5py.File(tmp, "r+") as f:
                if group in f:
                    del f[group]
                g = f.create_group(group)
                for k, v in attrs.items():
                    g.attrs[k] = v
                w = g.create_dataset("width", data=np.asarray(widths, dtype=np.int64))
                w.make_scale("width")
                for key, vals in per_width.items():
                    ds = g.create_dataset(key, data=np.asarray(vals, dtype=np.float64))
                    ds.dims[0].attach_scale(w)
    except OSError as exc:
        raise CkptError(f"cannot write the cube ({exc.strerror or exc})", p) from None
    finally:
        if lock is not None:
            lock.close()
