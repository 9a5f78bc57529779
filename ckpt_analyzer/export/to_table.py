"""CSV and Parquet export: the tidy table of every cube in one file, written in batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CkptError
from .tidy import Block, coordinate_kinds, frame, iter_blocks, time_column

#: Rows gathered before a batch is written (a Parquet row group, a CSV append).
BATCH_ROWS = 200_000

FILE = {"csv": "analysis.csv", "parquet": "analysis.parquet"}


def output_paths(out_dir: Path, kind: str) -> list[Path]:
    return [out_dir / FILE[kind]]


def require(kind: str) -> None:
    """A CkptError naming the extra unless pandas (and for parquet pyarrow) import."""
    try:
        import pandas  # noqa: F401
        if kind == "parquet":
            import pyarrow  # noqa: F401
    except ImportError:
        raise CkptError(f"--to {kind} needs pandas" + (" and pyarrow" if kind == "parquet" else "")
                        + ": pip install 'ckpt-analyzer[parquet]'") from None


def write_table(cubes: Sequence[str | os.PathLike[str]], labels: Sequence[str], out_dir: Path,
                kind: str, probes: Sequence[str] | None = None,
                widths: Sequence[int] | None = None) -> dict[str, Any]:
    """Write ``out_dir/analysis.csv`` or ``.parquet`` (through ``<name>.tmp``, then renamed);
    returns ``{"files": [...], "rows": n}``."""
    require(kind)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
    kinds = coordinate_kinds(cubes, probes)
    time = time_column(cubes)
    dest = out_dir / FILE[kind]
    tmp = dest.with_name(dest.name + ".tmp")
    rows = 0
    writer: Any = None
    batch: list[tuple[Block, str]] = []
    pending = 0

    def flush() -> None:
        nonlocal writer, rows, batch, pending
        if not batch and writer is not None:
            return
        df = frame(batch, kinds, time)
        if kind == "csv":
            df.to_csv(tmp, mode="a" if writer else "w", header=writer is None, index=False)
            writer = True
        else:
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
        rows += len(df)
        batch, pending = [], 0

    try:
        for path, label in zip(cubes, labels):
            for b in iter_blocks(path, probes, widths):
                batch.append((b, label))
                pending += b.values.size
                if pending >= BATCH_ROWS:
                    flush()
        flush()  # the rest, or the header of an empty table
        if kind == "parquet":
            writer.close()
            writer = None
        os.replace(tmp, dest)
    finally:
        if kind == "parquet" and writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return {"files": [str(dest)], "rows": rows}
