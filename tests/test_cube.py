"""The HDF5 cube: layout (docs/cube.md), xarray access, journal durability, resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ckpt_analyzer.cube import Cube, open_cube, read_summary
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.probes.base import Metric, Outputs

REPO = Path(__file__).resolve().parents[1]
SUBSETS = ["train", "test"]
K = 5
ROOT = {"source": "/runs/digits", "run_json": json.dumps({"arch": "mcnn"})}
CONFIG = {"points": 3, "n": 8, "subsets": SUBSETS, "space": "pixel"}


def outputs() -> Outputs:
    return Outputs(
        coords={"subset": SUBSETS, "k": list(range(K))},
        metrics={"A": Metric(("subset", "k"), description="mean |F_k|"),
                 "R": Metric(("subset", "k"), dtype="float32"),
                 "total": Metric(())},
    )


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"train/index": np.array([4, 0, 9]),
            "train/direction": rng.standard_normal((3, 1, 2, 2)).astype(np.float32),
            "train/noisy": np.array([True, False, True]),
            "test/index": np.array([1, 2, 3]),
            "classes": np.array(["zero", "one"])}


def values(epoch: int, width: int) -> dict[str, np.ndarray]:
    """Deterministic, distinct per cell; includes a NaN result to tell it from 'not done'."""
    rng = np.random.default_rng([epoch, width])
    a = rng.standard_normal((len(SUBSETS), K))
    if (epoch, width) == (1, 2):
        a[0, 0] = np.nan
    return {"A": a, "R": rng.standard_normal((len(SUBSETS), K)).astype(np.float32),
            "total": np.float64(epoch * 100 + width)}


def begin(cube: Cube, config: dict[str, Any] | None = None, **kw: Any) -> None:
    cube.begin_probe("spectrum", kw.pop("version", "1"), config or CONFIG, kw.pop("seed", 0),
                     kw.pop("outputs", outputs()), kw.pop("inputs", inputs()), **kw)


def fill(path: Path, cells: list[tuple[int, int]], epochs: list[int], widths: list[int],
         fsync: bool = True) -> None:
    with Cube(path, fsync=fsync) as cube:
        cube.set_root(ROOT)
        begin(cube)
        for e, w in cells:
            cube.record("spectrum", e, w, values(e, w))
        cube.materialize(epochs, widths)


def metric_bytes(path: Path) -> dict[str, bytes]:
    """Raw bytes, dtype and shape of every dataset in every probe group."""
    out = {}
    with h5py.File(path, "r") as f:
        for g in f:
            if not isinstance(f[g], h5py.Group):
                continue
            for m, ds in f[g].items():
                if isinstance(ds, h5py.Dataset):
                    raw = (json.dumps(ds.asstr()[()].tolist()).encode()
                           if h5py.check_string_dtype(ds.dtype) else ds[()].tobytes())
                    out[f"{g}/{m}"] = raw + f"{ds.dtype}{ds.shape}".encode()
    return out


EPOCHS, WIDTHS = [0, 1, 2], [1, 2, 4]
PARTIAL = [(0, 1), (0, 4), (1, 2), (2, 2)]


@pytest.fixture()
def cube_path(tmp_path: Path) -> Path:
    p = tmp_path / "analysis.h5"
    fill(p, PARTIAL, EPOCHS, WIDTHS)
    return p


# ------------------------------------------------------------------------------- layout


def test_layout_matches_design(cube_path: Path) -> None:
    with h5py.File(cube_path, "r") as f:
        assert f.attrs["format"] == "ckpt-analyzer.cube/1"
        assert f.attrs["version"] and f.attrs["source"] == "/runs/digits"
        assert json.loads(f.attrs["run_json"]) == {"arch": "mcnn"}
        for name, vals in (("epoch", EPOCHS), ("width", WIDTHS)):
            assert f[name].dtype == np.int64 and f[name][()].tolist() == vals
            assert h5py.h5ds.is_scale(f[name].id)
        g = f["spectrum"]
        assert g.attrs["probe_version"] == "1" and int(g.attrs["seed"]) == 0
        assert json.loads(g.attrs["config"]) == CONFIG
        # extra coordinates: scales; strings as variable-length UTF-8
        assert h5py.h5ds.is_scale(g["k"].id) and g["k"][()].tolist() == list(range(K))
        assert h5py.check_string_dtype(g["subset"].dtype).encoding == "utf-8"
        assert h5py.check_string_dtype(g["subset"].dtype).length is None
        assert g["subset"].asstr()[()].tolist() == SUBSETS
        for m, extra, dtype in (("A", ("subset", "k"), np.float64),
                                ("R", ("subset", "k"), np.float32), ("total", (), np.float64)):
            ds = g[m]
            assert ds.dtype == dtype
            assert ds.shape == (3, 3, *[{"subset": 2, "k": K}[d] for d in extra])
            assert ds.chunks == (1, 1, *ds.shape[2:])
            assert ds.compression == "gzip" and ds.shuffle
            names = [d[0].name for d in ds.dims]
            assert names == [f"/spectrum/{d}" for d in ("epoch", "width", *extra)]
            data = ds[()]
            for i, e in enumerate(EPOCHS):
                for j, w in enumerate(WIDTHS):
                    if (e, w) in PARTIAL:
                        assert np.array_equal(data[i, j], values(e, w)[m], equal_nan=True)
                    else:
                        assert np.isnan(data[i, j]).all()
        assert g["A"].attrs["description"] == "mean |F_k|"
        done = g["done"][()]
        assert done.dtype == np.uint8
        assert [[int((e, w) in PARTIAL) for w in WIDTHS] for e in EPOCHS] == done.tolist()
        assert [d[0].name for d in g["done"].dims] == ["/spectrum/epoch", "/spectrum/width"]
        # a NaN result in a computed cell stays NaN and is marked done
        assert np.isnan(g["A"][1, 1, 0, 0]) and done[1, 1] == 1
        for key, arr in inputs().items():
            ds = g[f"inputs/{key}"]
            if arr.dtype.kind == "U":
                assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
                assert ds.asstr()[()].tolist() == arr.tolist()
            else:
                assert np.array_equal(ds[()], arr) and ds.dtype == arr.dtype
            assert all(len(d) == 1 for d in ds.dims)  # every axis has a dimension
        assert json.loads(f.attrs["failures"]) == []


def test_materialize_is_deterministic_and_order_free(tmp_path: Path) -> None:
    cells = [(e, w) for e in EPOCHS for w in WIDTHS]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    fill(a, cells, EPOCHS, WIDTHS)
    shuffled = [cells[i] for i in np.random.default_rng(1).permutation(len(cells))]
    fill(b, shuffled, list(reversed(EPOCHS)), [4, 1, 2], fsync=False)
    assert metric_bytes(a) == metric_bytes(b)
    with Cube(a) as cube:
        cube.materialize()
    assert metric_bytes(a) == metric_bytes(b)


def test_coordinates_grow_and_never_shrink(tmp_path: Path) -> None:
    p = tmp_path / "c.h5"
    fill(p, [(0, 1), (1, 1)], [0, 1], [1])
    before = h5py.File(p, "r")["spectrum/A"][()]
    with Cube(p) as cube:
        begin(cube)
        cube.record("spectrum", 3, 2, values(3, 2))  # training went on; a new width too
        cube.materialize([0, 1])  # fewer epochs asked: the coordinate keeps what it had
    with h5py.File(p, "r") as f:
        assert f["epoch"][()].tolist() == [0, 1, 3]
        assert f["spectrum/epoch"][()].tolist() == [0, 1, 3]
        assert f["spectrum/width"][()].tolist() == [1, 2]
        a = f["spectrum/A"][()]
        assert np.array_equal(a[:2, :1], before, equal_nan=True)
        assert np.array_equal(a[2, 1], values(3, 2)["A"])
        assert np.isnan(a[2, 0]).all() and np.isnan(a[:2, 1]).all()
        assert f["spectrum/done"][()].tolist() == [[1, 0], [1, 0], [0, 1]]


def test_incremental_materialization_equals_full_rewrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    import ckpt_analyzer.cube.journal as journal

    update = journal.update_probe
    monkeypatch.setattr(journal, "update_probe",
                        lambda g, *a: (calls.append(g.name.strip("/")), update(g, *a))[1])
    p = tmp_path / "c.h5"
    fill(p, [(0, 1), (1, 2)], [0, 1], [1, 2])
    assert calls == []  # a new cube is written whole

    def step(record: list[tuple[int, int]], incremental: bool, **kw: Any) -> None:
        calls.clear()
        with Cube(p) as cube:
            for e, w in record:
                cube.record("spectrum", e, w, values(e, w))
            cube.materialize(**kw)
            assert calls == (["spectrum"] if incremental else [])
            quick = metric_bytes(p)
            cube.materialize(rewrite=True)
            assert metric_bytes(p) == quick
            cube.materialize()  # nothing new: copy only
        assert metric_bytes(p) == quick

    step([(0, 2), (3, 1)], incremental=True)  # a new cell, a new epoch at the end
    step([(4, 4)], incremental=True, widths=[8])  # a new width at the end
    step([(2, 2)], incremental=False)  # epoch 2 falls between 1 and 3: rewrite
    with Cube(p) as cube:  # a cell measured again (e.g. after a failure) replaces the old one
        cube.record("spectrum", 0, 1, values(9, 9))
        cube.materialize()
    cells = {(0, 1): (9, 9), (1, 2): (1, 2), (0, 2): (0, 2), (3, 1): (3, 1), (4, 4): (4, 4),
             (2, 2): (2, 2)}
    with h5py.File(p, "r") as f:
        g = f["spectrum"]
        assert f["epoch"][()].tolist() == g["epoch"][()].tolist() == [0, 1, 2, 3, 4]
        assert f["width"][()].tolist() == g["width"][()].tolist() == [1, 2, 4, 8]
        a, done = g["A"][()], g["done"][()]
        for i, e in enumerate([0, 1, 2, 3, 4]):
            for j, w in enumerate([1, 2, 4, 8]):
                assert done[i, j] == ((e, w) in cells)
                if (e, w) in cells:
                    assert np.array_equal(a[i, j], values(*cells[e, w])["A"], equal_nan=True)
                else:
                    assert np.isnan(a[i, j]).all()
    p2 = tmp_path / "copy.h5"
    p2.write_bytes(p.read_bytes())
    os.replace(p2, p)  # the file changed behind the journal's back: rewrite
    step([(4, 1)], incremental=False)
    with Cube(p) as cube:  # a probe recomputed from scratch: rewrite
        begin(cube, {**CONFIG, "n": 16}, overwrite=True)
    step([(4, 1)], incremental=False)
    assert read_summary(p)["probes"]["spectrum"]["coverage"]["done"] == 1


# ------------------------------------------------------------------------------- xarray


def test_xarray_opens_probe_group_with_labeled_dims(cube_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(cube_path, group="spectrum", engine="h5netcdf") as ds:
        assert ds["A"].dims == ("epoch", "width", "subset", "k")
        assert ds["total"].dims == ("epoch", "width")
        assert ds["epoch"].values.tolist() == EPOCHS
        assert ds["width"].values.tolist() == WIDTHS
        assert ds["subset"].values.tolist() == SUBSETS
        assert ds["k"].values.tolist() == list(range(K))
        sel = ds["A"].sel(epoch=2, width=2, subset="test").values
        assert np.array_equal(sel, values(2, 2)["A"][1])
        assert np.isnan(ds["A"].sel(epoch=0, width=2).values).all()
    with xr.open_dataset(cube_path, group="spectrum/inputs/train", engine="h5netcdf") as ds:
        assert np.array_equal(ds["index"].values, inputs()["train/index"])
        assert ds["direction"].dims == tuple(f"direction_dim{i}" for i in range(4))
        assert set(ds.variables) == {"index", "direction", "noisy"}  # dims are not variables
        assert ds["noisy"].values.tolist() == [True, False, True]
    with xr.open_dataset(cube_path, group="spectrum/inputs", engine="h5netcdf") as ds:
        assert ds["classes"].values.tolist() == ["zero", "one"]
    with xr.open_dataset(cube_path, engine="h5netcdf") as ds:
        assert ds["epoch"].values.tolist() == EPOCHS
        assert ds.attrs["format"] == "ckpt-analyzer.cube/1"
    with Cube(cube_path) as cube:  # grown in place of a copy: still opens
        cube.record("spectrum", 5, 1, values(5, 1))
        cube.materialize()
    with xr.open_dataset(cube_path, group="spectrum", engine="h5netcdf") as ds:
        assert ds["A"].shape == (4, 3, 2, K) and ds["epoch"].values.tolist() == [*EPOCHS, 5]
        assert np.array_equal(ds["A"].sel(epoch=5, width=1).values, values(5, 1)["A"])
        assert int(ds["done"].sum()) == len(PARTIAL) + 1


def test_open_cube_attrs_and_errors(cube_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    ds = open_cube(cube_path, "spectrum")
    assert ds.attrs["format"] == "ckpt-analyzer.cube/1"
    assert ds.attrs["source"] == "/runs/digits"
    assert json.loads(ds.attrs["run_json"]) == {"arch": "mcnn"}
    assert json.loads(ds.attrs["config"]) == CONFIG
    assert ds.attrs["config.points"] == 3 and list(ds.attrs["config.subsets"]) == SUBSETS
    assert ds.attrs["probe_version"] == "1"
    assert ds["done"].dtype == bool and int(ds["done"].sum()) == len(PARTIAL)
    assert np.array_equal(ds["R"].sel(epoch=0, width=4).values, values(0, 4)["R"])
    with pytest.raises(UsageError, match="did you mean 'spectrum'"):
        open_cube(cube_path, "spectrun")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CkptError, match="not a ckpt-analyzer cube"):
        open_cube(foreign, "spectrum")


# ------------------------------------------------------------------------------- summary


def test_read_summary(cube_path: Path) -> None:
    with Cube(cube_path) as cube:
        cube.record_failure(2, 4, "/runs/digits/w4/e00002.safetensors", "truncated file")
        cube.materialize()
    s = read_summary(cube_path)
    assert s["root"]["format"] == "ckpt-analyzer.cube/1" and s["root"]["version"]
    assert s["root"]["source"] == "/runs/digits" and s["run"] == {"arch": "mcnn"}
    assert s["epochs"] == EPOCHS and s["widths"] == WIDTHS
    p = s["probes"]["spectrum"]
    assert p["coverage"] == {"done": len(PARTIAL), "total": len(EPOCHS) * len(WIDTHS)}
    assert p["config"] == CONFIG and p["version"] == "1" and p["seed"] == 0
    assert p["metrics"] == {"A": ["epoch", "width", "subset", "k"],
                            "R": ["epoch", "width", "subset", "k"], "total": ["epoch", "width"]}
    assert p["dtypes"] == {"A": "float64", "R": "float32", "total": "float64"}
    assert p["coords"] == {"subset": SUBSETS, "k": list(range(K))}
    assert p["inputs"]["train/direction"]["shape"] == [3, 1, 2, 2]
    assert set(p["inputs"]) == set(inputs())
    assert s["failures"] == [{"path": "/runs/digits/w4/e00002.safetensors", "epoch": 2,
                              "width": 4, "probe": None, "error": "truncated file"}]
    json.dumps(s)  # JSON-able for `inspect --json`


# ------------------------------------------------------------------------------- resume rules


def test_changed_config_is_refused_naming_keys(cube_path: Path) -> None:
    with Cube(cube_path) as cube:
        with pytest.raises(UsageError) as err:
            begin(cube, {**CONFIG, "points": 500, "n": 128}, version="2")
        msg = str(err.value)
        assert "points: 3 -> 500" in msg and "n: 8 -> 128" in msg and "version: 1 -> 2" in msg
        assert "space" not in msg and "--overwrite" in msg and str(cube_path) in msg
        with pytest.raises(UsageError, match="seed: 0 -> 5"):
            begin(cube, seed=5)
        changed = inputs()
        changed["train/index"] = np.array([4, 0, 8])
        with pytest.raises(UsageError, match=r"fixed inputs differ from the cube's \(train/index\)"):
            begin(cube, inputs=changed)
        other = Outputs(coords={"subset": SUBSETS, "k": list(range(K + 1))},
                        metrics=dict(outputs().metrics))
        with pytest.raises(UsageError, match=r"different outputs than the cube \(k\)"):
            begin(cube, outputs=other)
        # a float input measured on another device: float32 rounding is the same input...
        noisy = inputs()
        noisy["train/direction"] = noisy["train/direction"] * np.float32(1 + 3e-7)
        noisy["train/direction"][0, 0, 0, 0] += np.float32(1e-6)  # a 1e-6 rounding step
        assert not np.array_equal(noisy["train/direction"], inputs()["train/direction"])
        begin(cube, inputs=noisy)
        # ...another draw or other data is not
        moved = inputs()
        moved["train/direction"][0, 0, 0, 0] += np.float32(1e-3)
        with pytest.raises(UsageError, match=r"fixed inputs differ.*\(train/direction\)"):
            begin(cube, inputs=moved)
        begin(cube)  # unchanged: accepted, nothing lost
        assert cube.done("spectrum") == set(PARTIAL)
        begin(cube, {**CONFIG, "points": 500}, overwrite=True)
        assert cube.done("spectrum") == set()
        cube.record("spectrum", 0, 1, values(0, 1))
        cube.materialize()
    with h5py.File(cube_path, "r") as f:
        assert json.loads(f["spectrum"].attrs["config"])["points"] == 500
        assert f["spectrum/done"][()].sum() == 1
        assert f["epoch"][()].tolist() == EPOCHS  # the grid is kept


def test_failures_are_recorded_and_cleared(tmp_path: Path) -> None:
    with Cube(tmp_path / "c.h5") as cube:
        begin(cube)
        cube.begin_probe("other", "1", {}, 0, Outputs(metrics={"x": Metric()}), {})
        cube.record_failure(0, 1, "w1/e00000.safetensors", "corrupt header")
        cube.record_failure(0, 2, "w2/e00000.safetensors", "spectrum: boom", probe="spectrum")
        cube.record_failure(None, None, "junk.safetensors", "no metadata")
        cube.record_failure(0, 1, "w1/e00000.safetensors", "corrupt header again")  # replaces
        assert [f["error"] for f in cube.failures()] == [
            "no metadata", "corrupt header again", "spectrum: boom"]
        cube.materialize()
        with h5py.File(cube.path, "r") as f:
            assert len(json.loads(f.attrs["failures"])) == 3
        cube.record("other", 0, 1, {"x": np.float64(1)})  # the checkpoint loads now
        cube.record("other", 0, 2, {"x": np.float64(1)})  # another probe: spectrum's stays
        assert [(f["path"], f["probe"]) for f in cube.failures()] == [
            ("junk.safetensors", None), ("w2/e00000.safetensors", "spectrum")]
        cube.record("spectrum", 0, 2, values(0, 2))
        assert [f["path"] for f in cube.failures()] == ["junk.safetensors"]


def test_journal_is_rebuilt_from_a_copied_cube(cube_path: Path, tmp_path: Path) -> None:
    with Cube(cube_path) as cube:
        cube.record_failure(2, 4, "w4/e00002.safetensors", "truncated")
        cube.materialize()
    copy = tmp_path / "copy" / "cube.h5"
    copy.parent.mkdir()
    copy.write_bytes(cube_path.read_bytes())
    with Cube(copy) as cube:
        assert cube.done("spectrum") == set(PARTIAL)
        assert cube.failures()[0]["path"] == "w4/e00002.safetensors"
        begin(cube)  # same config and inputs recognized after the round trip
        with pytest.raises(UsageError, match="points: 3 -> 4"):
            begin(cube, {**CONFIG, "points": 4})
        cube.materialize()
    assert metric_bytes(copy) == metric_bytes(cube_path)
    assert read_summary(copy)["root"] == read_summary(cube_path)["root"]


# ------------------------------------------------------------------------------- bad input


def test_foreign_files_are_never_touched(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(CkptError, match=r"notes\.h5: is not a ckpt-analyzer cube"):
        Cube(text).open()
    assert text.read_text() == "not hdf5"
    foreign = tmp_path / "data.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    before = foreign.read_bytes()
    with pytest.raises(CkptError, match="HDF5 file but not a ckpt-analyzer cube"):
        Cube(foreign).open()
    assert foreign.read_bytes() == before
    assert not Path(f"{foreign}.journal").exists()
    with pytest.raises(CkptError, match="no such cube"):
        read_summary(tmp_path / "missing.h5")
    journal = tmp_path / "x.h5.journal"
    journal.write_text("not sqlite either")
    with pytest.raises(CkptError, match=r"x\.h5\.journal: is not a ckpt-analyzer journal"):
        Cube(tmp_path / "x.h5").open()
    assert journal.read_text() == "not sqlite either"


def test_open_cube_without_xarray_says_what_to_install(
        cube_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)  # import fails
    with pytest.raises(CkptError, match=r"pip install 'ckpt-analyzer\[xarray\]'"):
        open_cube(cube_path, "spectrum")


def test_unwritable_location_and_second_writer(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CkptError, match=str(blocker)):
        Cube(blocker / "sub" / "cube.h5").open()
    p = tmp_path / "deep" / "er" / "cube.h5"  # missing folders are created
    with Cube(p) as first:
        begin(first)
        with pytest.raises(CkptError, match="another process is writing this cube"):
            Cube(p).open()
    with Cube(p) as again:  # released on close
        assert again.probes() == ["spectrum"]


def test_bad_results_and_declarations(tmp_path: Path) -> None:
    with Cube(tmp_path / "c.h5") as cube:
        begin(cube)
        bad = values(0, 1)
        bad["A"] = bad["A"][:, :3]
        with pytest.raises(CkptError, match=r"metric 'A' has shape \(2, 3\)"):
            cube.record("spectrum", 0, 1, bad)
        with pytest.raises(CkptError, match="returned the wrong metrics"):
            cube.record("spectrum", 0, 1, {"A": values(0, 1)["A"]})
        with pytest.raises(CkptError, match="not begun"):
            cube.record("nope", 0, 1, values(0, 1))
        with pytest.raises(CkptError, match="epoch must be an integer"):
            cube.record("spectrum", 1.5, 1, values(0, 1))  # type: ignore[arg-type]
        assert cube.done("spectrum") == set()
        for out, msg in (
            (Outputs(coords={"k": [0]}, metrics={"x": Metric(("q",))}), "undeclared dimension"),
            (Outputs(metrics={"x": Metric(dtype="int64")}), "float dtype"),
            (Outputs(coords={"epoch": [0]}, metrics={"x": Metric()}), "reserved"),
            (Outputs(coords={"k": []}, metrics={"x": Metric(("k",))}), "non-empty"),
        ):
            with pytest.raises(CkptError, match=msg):
                cube.begin_probe("p", "1", {}, 0, out, {})
        ok = Outputs(metrics={"x": Metric()})
        with pytest.raises(CkptError, match="input 'a' has unsupported dtype"):
            cube.begin_probe("p", "1", {}, 0, ok, {"a": np.array([{}], dtype=object)})
        with pytest.raises(CkptError, match="both an array and a group"):
            cube.begin_probe("p", "1", {}, 0, ok, {"a": np.zeros(1), "a/b": np.zeros(1)})
        assert cube.probes() == ["spectrum"]  # nothing half-declared


def test_stale_tmp_file_is_replaced(cube_path: Path) -> None:
    tmp = Path(f"{cube_path}.tmp")
    tmp.write_bytes(b"half-written garbage")
    with Cube(cube_path) as cube:
        cube.materialize()
    assert not tmp.exists()
    assert read_summary(cube_path)["probes"]["spectrum"]["coverage"]["done"] == len(PARTIAL)


# ------------------------------------------------------------------------------- durability


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from ckpt_analyzer.cube import Cube
    from test_cube import EPOCHS_BIG, ROOT, WIDTHS_BIG, begin, values

    if os.environ.get("STALL_MATERIALIZE"):  # 2nd materialization: hold the .tmp half-written
        calls = []
        def stall(write):
            def stalled(*args):
                write(*args)
                calls.append(1)
                if len(calls) == 2:
                    print("writing", flush=True)
                    time.sleep(5)
            return stalled
        import ckpt_analyzer.cube.journal as journal
        journal.write_probe = stall(journal.write_probe)  # whole-file rewrite
        journal.update_probe = stall(journal.update_probe)  # copy + new cells
    cube = Cube(Path(sys.argv[1]), fsync=not os.environ.get("NO_FSYNC")).open()
    cube.set_root(ROOT)
    begin(cube)
    done = cube.done("spectrum")
    n = 0
    for e in EPOCHS_BIG:
        for w in WIDTHS_BIG:
            if (e, w) in done:
                continue
            cube.record("spectrum", e, w, values(e, w))
            print("rec", e, w, flush=True)
            n += 1
            if n % 2 == 0:
                cube.materialize(EPOCHS_BIG, WIDTHS_BIG)
    cube.materialize(EPOCHS_BIG, WIDTHS_BIG)
    print("end", flush=True)
""")
EPOCHS_BIG, WIDTHS_BIG = list(range(12)), [1, 2, 4]


def check_cube_file(path: Path) -> set[tuple[int, int]]:
    """The file opens and every cell marked done holds exactly its values."""
    with h5py.File(path, "r") as f:
        g = f["spectrum"]
        done = g["done"][()]
        cells = set()
        for i, e in enumerate(g["epoch"][()].tolist()):
            for j, w in enumerate(g["width"][()].tolist()):
                if done[i, j]:
                    cells.add((e, w))
                    for m, v in values(e, w).items():
                        assert np.array_equal(g[m][i, j], v, equal_nan=True)
                else:
                    assert np.isnan(g["A"][i, j]).all()
        return cells


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    ref = tmp_path / "ref.h5"
    cells = [(e, w) for e in EPOCHS_BIG for w in WIDTHS_BIG]
    fill(ref, list(reversed(cells)), EPOCHS_BIG, WIDTHS_BIG)  # uninterrupted, other order

    path = tmp_path / "killed.h5"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    committed: set[tuple[int, int]] = set()
    for round_ in range(6):
        # odd rounds: killed inside a materialization (the new file half-composed); even rounds:
        # killed after a random number of committed cells, wherever the worker then is
        # (rounds 2 and 3 commit without fsync: still safe against a killed process)
        stall = round_ % 2 == 1
        extra = {"STALL_MATERIALIZE": "1"} if stall else {}
        if round_ in (2, 3):
            extra["NO_FSYNC"] = "1"
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(REPO),
                                 str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True,
                                env={**env, **extra})
        assert proc.stdout is not None
        wait = int(rng.integers(1, 5))
        for line in proc.stdout:
            if line.startswith("rec"):
                _, e, w = line.split()
                committed.add((int(e), int(w)))
                wait -= 1
            if (stall and line.startswith("writing")) or (not stall and wait <= 0):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "worker finished before it was killed"
        if stall:  # killed while writing the new file: the previous one is whole
            assert path.exists() and check_cube_file(path) <= committed
        with Cube(path) as cube:  # reopen: every reported commit survived
            assert not Path(f"{path}.tmp").exists()  # the half-written one is removed
            assert committed <= cube.done("spectrum")
            committed = cube.done("spectrum")
        if path.exists():  # always a complete earlier state
            assert check_cube_file(path) <= committed
    assert len(committed) < len(cells)
    proc = subprocess.run([sys.executable, str(script), str(path), str(REPO),
                           str(Path(__file__).parent)], capture_output=True, text=True, env=env,
                          check=True)
    recomputed = {(int(x.split()[1]), int(x.split()[2]))
                  for x in proc.stdout.splitlines() if x.startswith("rec")}
    assert recomputed == set(cells) - committed  # only the missing cells
    assert check_cube_file(path) == set(cells)
    assert metric_bytes(path) == metric_bytes(ref)
    assert read_summary(path)["root"] == read_summary(ref)["root"]


def test_group_size_is_counted_and_bounded() -> None:
    from ckpt_analyzer.cube.schema import MAX_GROUP_BYTES, group_size_problem

    per_cell = len(SUBSETS) * K * 8 + len(SUBSETS) * K * 4 + 8  # A float64, R float32, total
    exact = 300 * 8 * per_cell
    assert group_size_problem("spectrum", outputs(), 300, 8, limit=exact) is None
    msg = group_size_problem("spectrum", outputs(), 300, 8, limit=exact - 1)
    assert msg is not None and msg.startswith("probe 'spectrum': its results would take")
    assert f"largest metric 'A': subset {len(SUBSETS)}, k {K} per cell" in msg
    assert group_size_problem("spectrum", outputs(), 300, 8) is None  # far below 1 TiB
    assert MAX_GROUP_BYTES == 2**40
