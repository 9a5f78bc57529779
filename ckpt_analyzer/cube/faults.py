"""One line for a failure of the cube's SQLite journal: read-only or not permitted, full,
damaged, other (SQLite's words carry no errno, so the folder is looked at)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import CkptError, disk_error, folder_cause

ELSEWHERE = "write the cube elsewhere (-o)"


def journal_error(exc: sqlite3.Error, path: Path) -> CkptError:
    """One line for an SQLite failure: a read-only folder or no permission, a full disk or
    file-size limit, a damaged file, other. SQLite's own words ("disk I/O error", "unable to
    open database file") do not say which, so the folder is looked at."""
    msg = str(exc)
    code = str(getattr(exc, "sqlite_errorname", ""))
    cause = ("read-only or permission denied" if "READONLY" in code or "readonly" in msg
             or "PERM" in code else "disk full or a file-size limit reached"
             if "FULL" in code or "full" in msg else None)
    if cause is None and ("I/O error" in msg or "unable to open" in msg or "IOERR" in code
                          or "CANTOPEN" in code or "too large" in msg):
        cause = folder_cause(path) or ("file-size limit reached" if "too large" in msg
                                       else None)
    if cause == "read-only or permission denied":
        return disk_error(msg, cause, path, "the cube's journal", ELSEWHERE)
    if cause is not None or "I/O error" in msg:
        return disk_error(msg, cause or "disk full, a file-size limit or a disk fault", path,
                          "the cube's journal", "cells recorded before are kept, re-run when "
                          "there is room")
    if "malformed" in msg or "not a database" in msg or "corrupt" in msg:
        return CkptError(f"the cube's journal is damaged ({msg}); move it aside and re-run: it "
                         "is rebuilt from the cube file (cells not yet in the cube are measured "
                         "again)", path)
    return CkptError(f"cannot use the cube's journal ({msg})", path)
