"""A lost journal rebuilt from the materialized cube (bit-exact cell values, read in blocks)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from .hdf5 import IDENTITIES
from .read import is_probe, iter_cells, read_group, read_identities, scalar, text, walk_inputs
from .schema import AXES, encode


def file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def rebuild_journal(cur: sqlite3.Cursor, path: Path) -> None:
    """Fill an empty journal from a materialized cube (bit-exact cell values)."""
    import h5py

    with h5py.File(path, "r") as f:
        root = {k: scalar(v) for k, v in f.attrs.items() if k not in ("format", "failures")}
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('root', ?)", (json.dumps(root),))
        for a in AXES:
            vals = f[a][()].tolist() if a in f else []
            cur.executemany("INSERT OR IGNORE INTO axis VALUES (?, ?)", [(a, v) for v in vals])
        identities = read_identities(f)
        if identities:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (f"extra:{IDENTITIES}", json.dumps(identities, sort_keys=True)))
        for fl in json.loads(text(f.attrs.get("failures", "[]"))):
            cur.execute("INSERT OR REPLACE INTO failure VALUES (?, ?, ?, ?, ?)",
                        (fl["path"], fl.get("probe") or "", fl["epoch"], fl["width"],
                         fl["error"]))
        for name, g in f.items():
            if not is_probe(g):
                continue
            decl, names = read_group(g)
            cur.execute("INSERT INTO probe VALUES (?, ?, ?, ?, ?)",
                        (name, str(text(g.attrs["probe_version"])), text(g.attrs["config"]),
                         int(g.attrs["seed"]), decl.to_json()))
            for key, arr in walk_inputs(g["inputs"]) if "inputs" in g else ():
                cur.execute("INSERT INTO input VALUES (?, ?, ?, ?, ?)",
                            (name, key, *encode(arr)))
            for e, w, vals in iter_cells(g, names):  # in blocks: memory stays bounded
                blob = b"".join(np.ascontiguousarray(
                    vals[m], dtype=vals[m].dtype.newbyteorder("<")).tobytes() for m in names)
                cur.execute("INSERT INTO cell (probe, epoch, width, data) VALUES (?, ?, ?, ?)",
                            (name, e, w, blob))
