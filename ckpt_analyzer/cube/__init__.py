"""The HDF5 cube (format 1; the layout is described in ``docs/cube.md``).

``schema`` names and codecs, ``journal`` the single writer (SQLite journal, atomic
materialization), ``hdf5`` the file writing, ``read`` everything that reads a cube.
"""

from __future__ import annotations

from .journal import Cube
from .read import open_cube, probe_names, read_summary
from .schema import AXES, CUBE_FORMAT, JOURNAL_FORMAT

__all__ = ["AXES", "CUBE_FORMAT", "JOURNAL_FORMAT", "Cube", "open_cube", "probe_names", "read_summary"]
