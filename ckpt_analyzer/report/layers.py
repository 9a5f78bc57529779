"""The per-layer table of a cube (``ckpt-analyze report CUBE --layers``), as WeightWatcher's
details table: one row per layer (full module names, in module order), one column per
per-layer value of every probe at one width and epoch.

Generic over probes: every metric whose dimensions include ``layer`` is a column (a metric
with other dimensions too gets a column per value of them, ``layer_norm`` →
``metric[subset]``, when they have at most :data:`MAX_EXTRA` values; larger ones, such as the
``weights_spectrum`` histogram over ``bin``, are left out with a note). Only the one cell is
read from each metric. Probes whose ``layer`` coordinates differ (the normalization probe's
folded layers, the weights spectrum's conv/linear ones) share the rows of the names they have
in common, merged in module order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cube.read import is_probe, read_cube_info, read_group
from ..errors import UsageError
from ..schema import time_label

if TYPE_CHECKING:
    import pandas

#: The most values the other dimensions of a per-layer metric may have to get columns.
MAX_EXTRA = 4


def _merge(order: list[str], names: list[str]) -> None:
    """Add ``names`` to ``order``, each new one right after the name before it in ``names``."""
    prev = -1
    for n in names:
        if n in order:
            prev = order.index(n)
        else:
            order.insert(prev + 1, n)
            prev += 1


def _pick(values: list[int], chosen: int | None, what: str, path: Path) -> int | None:
    if chosen is None:
        return None
    if chosen not in values:
        raise UsageError(f"{path}: no {what} {chosen} in this cube (it has "
                         f"{', '.join(map(str, values)) or 'none'})")
    return chosen


def layer_table(cube: str | os.PathLike[str], width: int | None = None,
                epoch: int | None = None) -> dict[str, Any]:
    """The per-layer values of ``cube`` at ``width`` (default: the largest) and ``epoch``
    (default: the last one at which a per-layer probe measured that width)::

        {"cube", "width", "epoch", "time_unit", "layers": [module names],
         "columns": [{"probe", "metric", "coords": {dim: value}, "header"}],
         "values": [[float | None per column] per layer]  (None: not measured or NaN),
         "measured": [[bool ...] ...]  (the probe has this layer and the cell is done),
         "notes": [...]}
    """
    import h5py

    p = Path(cube)
    info = read_cube_info(p)
    unit = info.time_unit
    w = _pick([int(v) for v in info.widths.tolist()], width, "width", p)
    if w is None:
        if not info.widths.size:
            raise UsageError(f"{p}: the cube has no widths")
        w = int(info.widths.max())
    e_sel = _pick([int(v) for v in info.epochs.tolist()], epoch, time_label(unit), p)
    notes: list[str] = []
    found: list[tuple[str, Any, dict[str, tuple[Any, ...]], list[tuple[str, tuple[str, ...]]]]] = []
    with h5py.File(p, "r") as f:
        for name, g in f.items():
            if not is_probe(g):
                continue
            decl, _ = read_group(g)
            metrics = [(m, dims) for m, dims, _, _ in decl.metrics if "layer" in dims]
            if metrics:
                found.append((name, g, {n: v for n, _, v in decl.coords}, metrics))
        if not found:
            raise UsageError(f"{p}: no probe with per-layer values in this cube (run "
                             "weights_spectrum or normalization: "
                             f"{info.rerun_hint('weights_spectrum')})")
        # the epoch: given, or the last one at which any per-layer probe has this width
        if e_sel is None:
            last = []
            for _, g, _, _ in found:
                widths = g["width"][()].tolist()
                if w in widths:
                    rows = np.flatnonzero(g["done"][:, widths.index(w)])
                    if rows.size:
                        last.append(int(g["epoch"][int(rows[-1])]))
            if not last:
                raise UsageError(f"{p}: no per-layer probe has measured width {w} yet")
            e_sel = max(last)
        layers: list[str] = []
        columns: list[dict[str, Any]] = []
        cells: list[dict[str, float]] = []  # per column: layer -> value
        for name, g, coords, metrics in found:
            widths, epochs = g["width"][()].tolist(), g["epoch"][()].tolist()
            lay = [str(v) for v in coords["layer"]]
            _merge(layers, lay)
            done = (w in widths and e_sel in epochs
                    and bool(g["done"][epochs.index(e_sel), widths.index(w)]))
            if not done:
                notes.append(f"{name}: width {w} {time_label(unit)} {e_sel} not measured")
            for metric, dims in metrics:
                rest = [d for d in dims if d != "layer"]
                size = math.prod(len(coords[d]) for d in rest)
                if size > MAX_EXTRA:
                    notes.append(f"{name}.{metric} ({', '.join(f'{d} {len(coords[d])}' for d in rest)}"
                                 " per layer) is not shown; it is in to_dataframe / --to csv")
                    continue
                cell = (np.asarray(g[metric][epochs.index(e_sel), widths.index(w)],
                                   dtype=np.float64) if done else None)
                # (layer, *rest) flattened to (layer, size): one column per value of rest
                flat_cells = (None if cell is None else
                              np.moveaxis(cell, list(dims).index("layer"), 0).reshape(len(lay), -1))
                for flat in range(size):
                    idx = np.unravel_index(flat, [len(coords[d]) for d in rest]) if rest else ()
                    sel = {d: coords[d][int(i)] for d, i in zip(rest, idx)}
                    col: dict[str, float] = ({} if flat_cells is None
                                             else dict(zip(lay, flat_cells[:, flat].tolist())))
                    columns.append({"probe": name, "metric": metric, "coords": sel})
                    cells.append(col)
    owners: dict[str, set[str]] = {}
    for c in columns:
        owners.setdefault(c["metric"], set()).add(c["probe"])
    for c in columns:  # a metric name two probes use is qualified by its probe
        head = c["metric"] if len(owners[c["metric"]]) == 1 else f"{c['probe']}.{c['metric']}"
        c["header"] = head + "".join(f"[{v}]" for v in c["coords"].values())
    values = [[(None if (v := col.get(layer)) is None or v != v else v) for col in cells]
              for layer in layers]
    measured = [[layer in col for col in cells] for layer in layers]
    return {"cube": str(p), "width": w, "epoch": e_sel, "time_unit": unit, "layers": layers,
            "columns": columns, "values": values, "measured": measured, "notes": notes}


def _num(v: float | None, measured: bool) -> str:
    if not measured:
        return "-"
    if v is None:
        return "nan"
    return f"{v:.4g}"


def format_layer_table(table: dict[str, Any]) -> str:
    """The table as text: ``#``, ``layer`` and one column per per-layer value; ``-`` where the
    probe has no such layer or did not measure the cell, ``nan`` where the value is undefined
    (e.g. ``alpha`` of a layer too small for a fit)."""
    cols = table["columns"]
    headers = ["#", "layer", *[c["header"] for c in cols]]
    rows = [[str(i), layer, *[_num(v, m) for v, m in zip(vals, meas)]]
            for i, (layer, vals, meas) in enumerate(zip(table["layers"], table["values"],
                                                        table["measured"]))]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  " + "  ".join(c.ljust(widths[i]) if i == 1 else c.rjust(widths[i])
                                for i, c in enumerate(r))

    probes: dict[str, list[str]] = {}
    for c in cols:
        probes.setdefault(c["probe"], []).append(c["header"])
    out = [f"{table['cube']}: per-layer values at width {table['width']}, "
           f"{time_label(table['time_unit'])} {table['epoch']}",
           "  columns: " + "; ".join(f"{p} ({', '.join(h)})" for p, h in probes.items()),
           "", line(headers), line(["-" * w for w in widths]), *[line(r) for r in rows]]
    out.append("  '-' = the probe has no such layer or did not measure this cell; "
               "nan = undefined (e.g. alpha of a layer too small for a fit)")
    if table["notes"]:
        out += ["", "Notes"] + [f"  - {n}" for n in table["notes"]]
    return "\n".join(out)


def layer_dataframe(cube: str | os.PathLike[str], width: int | None = None,
                    epoch: int | None = None) -> pandas.DataFrame:
    """:func:`layer_table` as a :class:`pandas.DataFrame` indexed by layer (module name),
    one column per header, NaN where not measured; ``attrs`` holds width, epoch, time unit
    and notes."""
    try:
        import pandas as pd
    except ImportError:
        from ..errors import CkptError

        raise CkptError("the layer table as a DataFrame needs pandas: "
                        "pip install 'ckpt-analyzer[parquet]'") from None
    t = layer_table(cube, width, epoch)
    data = np.array([[np.nan if v is None else v for v in row] for row in t["values"]],
                    dtype=np.float64).reshape(len(t["layers"]), len(t["columns"]))
    df = pd.DataFrame(data, index=pd.Index(t["layers"], name="layer"),
                      columns=[f"{c['probe']}/{c['header']}" for c in t["columns"]])
    df.attrs.update({k: t[k] for k in ("cube", "width", "epoch", "time_unit", "notes")})
    return df
