"""The cube writer at scale: materializing costs what is new (blocks, no space left behind),
memory is bounded by the block size, readers read in blocks (benchmarks/bench_cube_scale.py
measures the same at 16k checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from test_cube import ROOT, begin, metric_bytes, values

from ckpt_analyzer.cube import Cube, open_cube
from ckpt_analyzer.cube.read import iter_cells

EPOCHS, WIDTHS = list(range(40)), [1, 2, 4]


def test_blocks_are_contiguous_runs_bounded_in_bytes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_analyzer.cube.hdf5 as hdf5

    writes: list[tuple[Any, int]] = []
    block = hdf5.write_block
    monkeypatch.setattr(hdf5, "write_block", lambda g, index, cells: (
        writes.append((index, len(next(iter(cells.values()))))), block(g, index, cells))[1])
    p = tmp_path / "c.h5"
    with Cube(p) as cube:
        cube.set_root(ROOT)
        begin(cube)
        cube.record_many([("spectrum", e, w, values(e, w)) for e in EPOCHS for w in WIDTHS
                          if (e, w) != (7, 2)])
        cube.materialize(EPOCHS, WIDTHS)
        # a width's epochs in one block each: width 2 is cut in two by the missing cell
        assert sorted(n for _, n in writes) == [7, 32, 40, 40]
        assert all(isinstance(i[0], slice) and isinstance(i[1], int) for i, _ in writes)
        writes.clear()
        cube.record_many([("spectrum", 40, w, values(40, w)) for w in WIDTHS])
        cube.materialize([*EPOCHS, 40], WIDTHS)  # a new epoch at every width: one block
        assert [(i[0], n) for i, n in writes] == [(40, 3)]
        # bounded: no block holds more than max_bytes of cells
        from ckpt_analyzer.cube.schema import Decl
        with cube._tx() as cur:
            decl = Decl.from_json(cur.execute("SELECT outputs FROM probe").fetchone()[0])
        grid = {"epoch": np.array([*EPOCHS, 40]), "width": np.array(WIDTHS)}
        cell = sum(v.nbytes for v in values(0, 1).values())
        sizes = [len(next(iter(v.values())))
                 for _, v in cube._blocks("spectrum", decl, grid, 0, 10**9, max_bytes=5 * cell)]
        assert max(sizes) == 5 and sum(sizes) == len(EPOCHS) * len(WIDTHS) - 1 + 3
    with h5py.File(p, "r") as f:
        a, done = f["spectrum/A"], f["spectrum/done"][()]
        assert done.sum() == len(EPOCHS) * len(WIDTHS) + 2 and done[7, 1] == 0
        for e in (0, 7, 40):
            for j, w in enumerate(WIDTHS):
                if (e, w) != (7, 2):
                    np.testing.assert_array_equal(a[e, j], values(e, w)["A"])
        assert np.isnan(a[7, 1]).all()


def test_materializing_often_leaves_no_space_behind(tmp_path: Path) -> None:
    """Many incremental materializations end no larger than one full write of the same cells
    (plus a little): nothing is deleted and recreated, nothing compressed rewritten. (A root
    attribute that changes, e.g. ``failures`` growing, still leaves its old copy behind.)"""
    p, ref = tmp_path / "c.h5", tmp_path / "ref.h5"
    with Cube(p) as cube:
        cube.set_root(ROOT)
        begin(cube)
        cube.materialize(EPOCHS, WIDTHS)
        sizes = []
        for e in EPOCHS:
            cube.record_many([("spectrum", e, w, values(e, w)) for w in WIDTHS])
            cube.materialize(EPOCHS, WIDTHS)
            sizes.append(p.stat().st_size)
        for _ in range(20):  # nothing new: the file does not grow at all
            cube.materialize(EPOCHS, WIDTHS)
        assert p.stat().st_size == sizes[-1]
    with Cube(p) as cube:
        cube.materialize(rewrite=True)
    full = p.stat().st_size
    assert sizes[-1] <= full * 1.1 + 8192, (sizes[-1], full)
    with Cube(ref) as cube:  # the same cells written at once: the same arrays
        cube.set_root(ROOT)
        begin(cube)
        cube.record_many([("spectrum", e, w, values(e, w)) for e in EPOCHS for w in WIDTHS])
        cube.materialize(EPOCHS, WIDTHS)
    assert metric_bytes(p) == metric_bytes(ref)


def test_readers_in_blocks_match_whole_reads(tmp_path: Path) -> None:
    p = tmp_path / "c.h5"
    with Cube(p) as cube:
        cube.set_root(ROOT)
        begin(cube)
        cells = [(e, w) for e in EPOCHS for w in WIDTHS if (e + w) % 3]
        cube.record_many([("spectrum", e, w, values(e, w)) for e, w in cells])
        cube.materialize(EPOCHS, WIDTHS)
    with h5py.File(p, "r") as f:
        g = f["spectrum"]
        got = {(e, w): v for e, w, v in iter_cells(g, ["A", "R"], max_bytes=1000)}
    assert set(got) == set(cells)
    for (e, w), v in got.items():
        np.testing.assert_array_equal(v["A"], values(e, w)["A"])
    loaded = open_cube(p, "spectrum")
    with open_cube(p, "spectrum", lazy=True) as lazy:
        assert not lazy["A"].variable._in_memory
        np.testing.assert_array_equal(lazy["A"].isel(width=1).values,
                                      loaded["A"].isel(width=1).values)
        assert lazy.attrs == loaded.attrs and bool((lazy["done"] == loaded["done"]).all())
    # a journal rebuilt from the cube (in blocks) holds the same cells
    Path(f"{p}.journal").unlink()
    with Cube(p) as cube:
        assert cube.done("spectrum") == set(cells)


@pytest.mark.parametrize("col", [slice(None), slice(1, 2), slice(0, 3, 2)])
def test_read_rows_in_slabs_matches_a_whole_read(tmp_path: Path, col: slice,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import ckpt_analyzer.cube.read as read

    monkeypatch.setattr(read, "READ_CHUNKS", 4)  # slabs of one or two epochs
    p = tmp_path / "c.h5"
    with Cube(p) as cube:
        cube.set_root(ROOT)
        begin(cube)
        cube.record_many([("spectrum", e, w, values(e, w)) for e in EPOCHS for w in WIDTHS
                          if (e * w) % 7])
        cube.materialize(EPOCHS, WIDTHS)
    with h5py.File(p, "r") as f:
        for name in ("spectrum/A", "spectrum/R", "spectrum/done", "spectrum/epoch"):
            ds = f[name]
            whole = ds[:, col] if ds.ndim >= 2 else ds[()]
            np.testing.assert_array_equal(read.read_rows(ds, col), whole)


def test_load_probe_reads_one_width(tmp_path: Path) -> None:
    from ckpt_analyzer.cube.read import load_probe

    p = tmp_path / "c.h5"
    with Cube(p) as cube:
        cube.set_root(ROOT)
        begin(cube)
        cube.record_many([("spectrum", e, w, values(e, w)) for e in EPOCHS for w in WIDTHS
                          if (e + w) % 3])
        cube.materialize(EPOCHS, WIDTHS)
    full = load_probe(p, "spectrum")
    one = load_probe(p, "spectrum", ("A",), width=2)
    assert full is not None and one is not None
    assert one.widths.tolist() == [2] and set(one.values) == {"A"}
    np.testing.assert_array_equal(one.values["A"][:, 0], full.values["A"][:, 1])
    np.testing.assert_array_equal(one.done[:, 0], full.done[:, 1])
    assert one.coords == full.coords and one.dims["A"] == full.dims["A"]
    assert load_probe(p, "spectrum", width=3) is None  # not a width of this cube
