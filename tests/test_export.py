"""ckpt-analyze export (TensorBoard, W&B, CSV, Parquet) and to_dataframe, read back with the
real readers: TensorBoard's EventAccumulator, the W&B offline run file, pandas/pyarrow."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import analyze, write_cube

from ckpt_analyzer.cli import main
from ckpt_analyzer.cube import Cube
from ckpt_analyzer.schema import Metric, Outputs

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = (0, 2, 5)
WIDTHS = (1, 3)
LAYERS = ("features.0", "features.3", "classifier.1")
BINS = (-1.5, -0.5, 0.5, 1.5, 2.5)  # centres of equal bins of width 1
UNDONE = (5, 3)  # (epoch, width) of the one metrics cell never computed


def metric_value(e: int, w: int, s: int) -> float:
    return 0.1 * e + w / 100 + 0.5 * s


def make_cube(path: Path, time_unit: str = "epoch", epochs: tuple[int, ...] = EPOCHS) -> Path:
    """metrics (subset), wsp (layer; layer x bin; alpha NaN for one layer), spec (k: 40 values)."""
    undone = UNDONE if epochs == EPOCHS else None

    def metrics(e: int, w: int) -> dict[str, np.ndarray] | None:
        return None if (e, w) == undone else {
            "error": np.array([metric_value(e, w, 0), metric_value(e, w, 1)]),
            "loss": np.array(2.0 * e + w)}

    def wsp(e: int, w: int) -> dict[str, np.ndarray]:
        hist = np.zeros((3, 5))
        hist[np.arange(3), (e + w + np.arange(3)) % 5] = 1.0
        return {"alpha": np.array([2.0 + e + w, np.nan, 4.0 + w]), "histogram": hist}

    return write_cube(path, epochs, WIDTHS, {
        "metrics": (Outputs(coords={"subset": ["train", "test"]},
                            metrics={"error": Metric(("subset",)), "loss": Metric(())}), metrics),
        "wsp": (Outputs(coords={"layer": list(LAYERS), "bin": list(BINS)},
                        metrics={"alpha": Metric(("layer",)), "histogram": Metric(("layer", "bin"))}),
                wsp),
        "spec": (Outputs(coords={"k": list(range(40))}, metrics={"R": Metric(("k",))}),
                 lambda e, w: {"R": np.arange(40) * 0.01 + e}),
    }, root={"source": "/runs/digits-run", "time_unit": time_unit}, configs={"metrics": {"a": 1}})


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cube(tmp_path_factory.mktemp("export") / "digits.h5")


def reference_rows(path: Path) -> set[tuple[Any, ...]]:
    """(width, epoch, probe, metric, coords..., value) of every done cell, by plain loops."""
    import h5py

    out = set()
    with h5py.File(path, "r") as f:
        for probe in f:
            g = f[probe]
            if "probe_version" not in g.attrs:
                continue
            epochs, widths, done = g["epoch"][()], g["width"][()], g["done"][()]
            for name, ds in g.items():
                if not isinstance(ds, h5py.Dataset) or name in ("epoch", "width", "done") \
                        or h5py.h5ds.is_scale(ds.id):
                    continue
                dims = [d[0].name.rsplit("/", 1)[-1] for d in list(ds.dims)[2:]]
                for i, e in enumerate(epochs):
                    for j, w in enumerate(widths):
                        if not done[i, j]:
                            continue
                        cell = ds[i, j]
                        for idx in np.ndindex(*cell.shape):
                            coords = []
                            for d, k in zip(dims, idx):
                                v = g[d][k]
                                coords.append((d, v.decode() if isinstance(v, bytes) else v.item()))
                            v = float(cell[idx])
                            out.add((int(w), int(e), probe, name, tuple(coords),
                                     "nan" if v != v else v))
    return out


def df_rows(df: Any, coords: tuple[str, ...] = ("subset", "layer", "bin", "k")
            ) -> set[tuple[Any, ...]]:
    import pandas as pd

    out = set()
    for r in df.itertuples(index=False):
        d = r._asdict()
        cs = tuple((c, d[c].item() if hasattr(d[c], "item") else d[c])
                   for c in coords if c in d and not pd.isna(d[c]))
        v = float(d["value"])
        out.add((int(d["width"]), int(d["epoch"]), d["probe"], d["metric"],
                 tuple(sorted(cs, key=lambda c: c[0])), "nan" if v != v else v))
    return out


def _sorted_ref(rows: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    return {(w, e, p, m, tuple(sorted(c, key=lambda x: x[0])), v) for w, e, p, m, c, v in rows}


# -- the tidy table


def test_to_dataframe_matches_a_loop_over_done_cells(cube: Path) -> None:
    pytest.importorskip("pandas")
    import ckpt_analyzer

    df = ckpt_analyzer.to_dataframe(str(cube))
    assert list(df.columns) == ["run", "width", "epoch", "probe", "metric", "subset", "k",
                                "layer", "bin", "value"]  # coordinates in order of first use
    assert set(df["run"]) == {"digits"}
    assert df_rows(df) == _sorted_ref(reference_rows(cube))
    # 5 cells of metrics (one never computed) x 3 values; 6 cells of wsp x (3 + 15); spec 6 x 40
    assert len(df) == 5 * 3 + 6 * 18 + 6 * 40
    m = df[(df.probe == "metrics") & (df.metric == "error")]
    assert not ((m.epoch == UNDONE[0]) & (m.width == UNDONE[1])).any()
    got = m.set_index(["epoch", "width", "subset"])["value"]
    assert got[(2, 3, "test")] == pytest.approx(metric_value(2, 3, 1))
    # a computed NaN stays (alpha of a layer without a fit); the k coordinate stays integer
    a = df[(df.metric == "alpha") & (df.layer == "features.3")]
    assert len(a) == 6 and a["value"].isna().all()
    assert str(df["k"].dtype) == "Int64" and df["k"].max() == 39


def test_to_dataframe_of_one_probe_and_chunked_reads_agree(cube: Path) -> None:
    pytest.importorskip("pandas")
    import ckpt_analyzer
    from ckpt_analyzer.export.tidy import coordinate_kinds, frame, iter_blocks

    one = ckpt_analyzer.to_dataframe(str(cube), probe="metrics")
    assert set(one.probe) == {"metrics"} and list(one.columns)[5:] == ["subset", "value"]
    whole = ckpt_analyzer.to_dataframe(str(cube))
    kinds = coordinate_kinds([cube])
    tiny = [(b, "digits") for b in iter_blocks(cube, max_bytes=1)]  # one epoch per block
    assert all(b.epochs.size == 1 for b, _ in tiny)
    chunked = frame(tiny, kinds)
    key = ["probe", "metric", "width", "epoch", "subset", "layer", "bin", "k"]
    a = whole.sort_values(key).reset_index(drop=True)
    b = chunked.sort_values(key).reset_index(drop=True)
    assert a.equals(b)


def test_step_cube_names_the_time_column_step(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    import ckpt_analyzer

    path = make_cube(tmp_path / "s.h5", time_unit="step", epochs=(0, 250, 1000))
    df = ckpt_analyzer.to_dataframe(str(path), probe="metrics")
    assert "step" in df.columns and "epoch" not in df.columns
    assert sorted(set(df.step)) == [0, 250, 1000]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_hold_the_tidy_table(cube: Path, tmp_path: Path, kind: str) -> None:
    pytest.importorskip("pyarrow" if kind == "parquet" else "pandas")
    import pandas as pd

    import ckpt_analyzer

    other = tmp_path / "analysis.h5"  # a second cube, named after its run folder
    shutil.copyfile(cube, other)
    out = tmp_path / "out"
    res = analyze("export", str(cube), str(other), "--to", kind, str(out))
    path = out / f"analysis.{kind}"
    df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    assert set(df.run) == {"digits", "digits-run"}  # a stem; analysis.h5: its run folder
    ref = ckpt_analyzer.to_dataframe(str(cube))
    assert len(df) == 2 * len(ref) and f"{len(df)} row(s)" in res.output
    mine = df[df.run == "digits"].reset_index(drop=True)
    assert df_rows(mine) == df_rows(ref)


# -- TensorBoard


def _accumulator(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_runs_read_back_with_the_right_steps(cube: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    res = analyze("export", str(cube), "--to", "tensorboard", str(out))
    assert sorted(p.name for p in (out / "digits").iterdir()) == ["w1", "w3"]
    # spec/R has 40 values per cell (> 32): skipped with a note naming it
    assert "note: spec/R (k 40: 40 values per cell" in res.output
    for w in WIDTHS:
        acc = _accumulator(out / "digits" / f"w{w}")
        tags = acc.Tags()
        assert set(tags["scalars"]) == {
            "metrics/error/train", "metrics/error/test", "metrics/loss",
            "wsp/alpha/features.0", "wsp/alpha/classifier.1"}  # features.3: NaN, not drawn
        assert set(tags["histograms"]) == {f"wsp/histogram/{n}" for n in LAYERS}
        done = [e for e in EPOCHS if (e, w) != UNDONE]
        for s, sub in enumerate(("train", "test")):
            ev = acc.Scalars(f"metrics/error/{sub}")
            assert [x.step for x in ev] == done
            np.testing.assert_allclose([x.value for x in ev],
                                       [metric_value(e, w, s) for e in done], rtol=1e-6)
        assert [x.value for x in acc.Scalars("metrics/loss")] == [2.0 * e + w for e in done]
        assert [x.step for x in acc.Scalars("wsp/alpha/features.0")] == list(EPOCHS)
        for layer_i, name in enumerate(LAYERS):
            hist = acc.Histograms(f"wsp/histogram/{name}")
            assert [h.step for h in hist] == list(EPOCHS)
            for e, h in zip(EPOCHS, hist):
                hv = h.histogram_value
                np.testing.assert_allclose(hv.bucket_limit, [-1, 0, 1, 2, 3])
                expect = np.zeros(5)
                expect[(e + w + layer_i) % 5] = 1.0
                np.testing.assert_allclose(hv.bucket, expect)
                assert hv.num == 1.0 and hv.min == -2.0 and hv.max == 3.0


def test_tensorboard_step_axis_and_max_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    path = make_cube(tmp_path / "steps.h5", time_unit="step", epochs=(0, 250, 1000))
    out = tmp_path / "tb"
    analyze("export", str(path), "--to", "tensorboard", str(out),
                  "--probe", "spec", "--widths", "3", "--max-scalars", "40")
    assert [p.name for p in (out / "steps").iterdir()] == ["w3"]
    acc = _accumulator(out / "steps" / "w3")
    assert len(acc.Tags()["scalars"]) == 40
    ev = acc.Scalars("spec/R/k=7")
    assert [x.step for x in ev] == [0, 250, 1000]
    np.testing.assert_allclose([x.value for x in ev], [0.07, 250.07, 1000.07], rtol=1e-6)


def test_tensorboard_refuses_an_earlier_export_unless_overwrite(cube: Path,
                                                                tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    (out / "train-run").mkdir(parents=True)  # a training logdir: left alone
    (out / "train-run" / "keep.txt").write_text("x")
    args = ["export", str(cube), "--to", "tensorboard", str(out), "--probe", "metrics"]
    analyze(*args)
    res = analyze(*args, code=1)
    assert res.output.strip().splitlines() == [
        f"error: {out}: holds an earlier export ({out / 'digits' / 'w1'} and 1 more); "
        "--overwrite replaces it"]
    res = analyze(*args, "--overwrite")
    acc = _accumulator(out / "digits" / "w1")
    assert [x.step for x in acc.Scalars("metrics/loss")] == list(EPOCHS)  # not twice
    assert (out / "train-run" / "keep.txt").read_text() == "x"


# -- W&B


def read_wandb_records(path: Path) -> list[Any]:
    """The records of an offline ``.wandb`` file: W&B's LevelDB-log framing (a 7-byte
    ``:W&B`` header, 32 KiB blocks of records with a 7-byte header: crc, length, type
    full/first/middle/last) around ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 1:
            out.append(data)
        elif kind == 2:
            buf = data
        elif kind == 3:
            buf += data
        elif kind == 4:
            out.append(buf + data)
    records = []
    for data in out:
        rec = pb.Record()
        rec.ParseFromString(data)
        records.append(rec)
    return records


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-home"),
               WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_DISABLE_GIT="true",
               PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    return env


def _export_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with a time limit (wandb starts a service process)."""
    return subprocess.run([sys.executable, "-m", "ckpt_analyzer.cli", "export", *args],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def test_wandb_offline_run_holds_every_epoch_on_the_epoch_axis(cube: Path,
                                                               tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    res = _export_cli([str(cube), "--to", "wandb", str(out), "--probe", "metrics",
                       "--probe", "wsp"], _offline_env(tmp_path))
    assert res.returncode == 0, res.stderr
    files = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and "wandb sync" in res.stdout
    by_name = {}
    for f in files:
        recs = read_wandb_records(f)
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.history.item}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        metrics = [r.metric for r in recs if r.WhichOneof("record_type") == "metric"]
        by_name[run.display_name] = (run, history, metrics)
    assert set(by_name) == {"digits/w1", "digits/w3"}
    run, history, metrics = by_name["digits/w3"]
    assert run.run_group == "digits" and run.project == "ckpt-analyzer"
    globs = {m.glob_name: m.step_metric for m in metrics if m.glob_name}
    assert globs == {"metrics/*": "epoch", "wsp/*": "epoch"}
    assert [h["epoch"] for h in history] == list(EPOCHS)
    for h in history:
        e = h["epoch"]
        if e != UNDONE[0]:
            assert h["metrics/error/test"] == pytest.approx(metric_value(e, 3, 1))
        else:
            assert "metrics/error/test" not in h
        assert h["wsp/alpha/classifier.1"] == 7.0 and "wsp/alpha/features.3" not in h
        for layer_i, name in enumerate(LAYERS):  # wandb.Histogram: nested keys
            expect = [0.0] * 5
            expect[(e + 3 + layer_i) % 5] = 1.0
            assert h[f"wsp/histogram/{name}/_type"] == "histogram"
            assert h[f"wsp/histogram/{name}/values"] == expect
            assert h[f"wsp/histogram/{name}/bins"] == [-2, -1, 0, 1, 2, 3]


class FakeRun:
    def __init__(self, calls: list[Any], **kw: Any) -> None:
        self.calls, self.id, self.dir = calls, kw.get("id") or "new", "/tmp/x/files"
        calls.append(("init", kw))

    def define_metric(self, name: str, **kw: Any) -> None:
        self.calls.append(("define_metric", name, kw))

    def log(self, row: dict[str, Any]) -> None:
        self.calls.append(("log", row))

    def finish(self) -> None:
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: FakeRun(calls, **kw)  # type: ignore[attr-defined]
    mod.Histogram = lambda **kw: ("hist", kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def test_wandb_run_resumes_one_existing_run(cube: Path, tmp_path: Path,
                                            fake_wandb: list[Any]) -> None:
    out = tmp_path / "wb"
    analyze("export", str(cube), "--to", "wandb", str(out),
                  "--wandb-run", "abc123", "--widths", "1", "--probe",
                  "metrics", "--wandb-project", "proj")
    init = fake_wandb[0][1]
    assert init["id"] == "abc123" and init["resume"] == "allow" and init["mode"] == "offline"
    assert init["project"] == "proj" and "name" not in init  # the training run keeps its name
    assert init["config"]["ckpt_analyzer"]["probes"]["metrics"]["config"] == {"a": 1}
    assert ("define_metric", "metrics/*", {"step_metric": "epoch"}) in fake_wandb
    logs = [c[1] for c in fake_wandb if c[0] == "log"]
    assert [r["epoch"] for r in logs] == list(EPOCHS)
    assert logs[1]["metrics/error/train"] == pytest.approx(metric_value(2, 1, 0))
    assert fake_wandb[-1] == ("finish",)


def test_wandb_real_offline_resume_keeps_the_id(cube: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    res = _export_cli([str(cube), "--to", "wandb", str(out), "--wandb-run", "trainrun7",
                       "--widths", "1", "--probe", "metrics"], _offline_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (f,) = out.glob("wandb/offline-run-*-trainrun7/run-trainrun7.wandb")
    run = next(r.run for r in read_wandb_records(f) if r.WhichOneof("record_type") == "run")
    assert run.run_id == "trainrun7"


# -- bad input


def test_export_errors_are_one_line(cube: Path, tmp_path: Path, fake_wandb: list[Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: str) -> Any:
        return analyze("export", *args, code=None)

    out = str(tmp_path / "o")
    cases = [
        (run(str(cube), "--to", "tensorbord", out), 2,
         "error: --to: unknown target 'tensorbord' (did you mean 'tensorboard'?)"),
        (run(str(cube), "--to", "csv", out, "--wandb-run", "x"), 2,
         "error: --wandb-run: only with --to wandb"),
        (run(str(cube), "--to", "csv", out, "--max-scalars", "4"), 2,
         "error: --max-scalars: not with --to csv"),
        (run(str(cube), "--to", "csv", out, "--probe", "metric"), 2,
         f"error: {cube}: no probe 'metric' in this cube (did you mean 'metrics'?)"),
        (run(str(cube), "--to", "csv", out, "--widths", "7"), 2,
         "error: --widths: no cube has width(s) 7"),
        (run(str(tmp_path / "nope.h5"), "--to", "csv", out), 1,
         f"error: {tmp_path / 'nope.h5'}: no such cube file"),
        (run(str(cube), "--to", "wandb", out, "--wandb-run", "x"), 2,
         "error: --wandb-run: adds one cube's width to one run, but this export has 2 "
         "(digits w1, digits w3); pick one cube and one --widths W"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((run(str(cube), "--to", "csv", str(tmp_path / "file")), 1,
                  f"error: {tmp_path / 'file'}: is not a folder; export writes into a folder"))
    for res, code, line in cases:
        assert (res.exit_code, res.output.strip().splitlines()) == (code, [line])
    assert not (tmp_path / "o").exists()  # nothing written by a refused export
    for mod, kind, extra in (("tensorboard", "tensorboard", "tensorboard"),
                             ("wandb", "wandb", "wandb"), ("pyarrow", "parquet", "parquet")):
        monkeypatch.setitem(sys.modules, mod, None)  # the extra is not installed
        res = run(str(cube), "--to", kind, out)
        assert res.exit_code == 1
        assert res.output.strip().splitlines()[-1].endswith(
            f"pip install 'ckpt-analyzer[{extra}]'"), res.output
    assert not (tmp_path / "o").exists()


def test_import_stays_cheap() -> None:
    code = ("import sys, ckpt_analyzer; ckpt_analyzer.to_dataframe; "
            "print(sorted(m for m in ('torch', 'h5py', 'pandas', 'wandb', 'tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- live export (export.live.LiveExporter, export --follow)


def _grow(path: Path, epochs: tuple[int, ...]) -> None:
    """Record the cells of ``epochs`` (metrics and wsp, as make_cube) and materialize, as the
    runner's writer does after each batch of checkpoints."""
    with Cube(path) as cube:
        for e in epochs:
            for w in WIDTHS:
                cube.record("metrics", e, w, {
                    "error": np.array([metric_value(e, w, 0), metric_value(e, w, 1)]),
                    "loss": np.array(2.0 * e + w)})
                cube.record("wsp", e, w, {"alpha": np.array([2.0 + e + w, np.nan, 4.0 + w]),
                                          "histogram": np.eye(3, 5)})
        cube.materialize()


def _growing_cube(path: Path) -> Path:
    with Cube(path) as cube:
        cube.set_root({"source": "/runs/live-run"})
        cube.begin_probe("metrics", "1", {"a": 1}, 0, Outputs(
            coords={"subset": ["train", "test"]},
            metrics={"error": Metric(("subset",)), "loss": Metric(())}), {})
        cube.begin_probe("wsp", "1", {}, 0, Outputs(
            coords={"layer": list(LAYERS), "bin": list(BINS)},
            metrics={"alpha": Metric(("layer",)), "histogram": Metric(("layer", "bin"))}), {})
    _grow(path, (0, 2))
    return path


def test_live_tensorboard_appends_only_new_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from ckpt_analyzer.export.live import LiveExporter, state_path

    path = _growing_cube(tmp_path / "live.h5")
    out = tmp_path / "tb"
    with LiveExporter("tensorboard", out) as live:
        first = live(path)
        assert first["cells"] == 2 * 2 * len(WIDTHS)  # 2 probes x 2 epochs x 2 widths
        assert live(path)["cells"] == 0  # nothing new: nothing written
        _grow(path, (5, 9))
        second = live(path)
        assert second["cells"] == 2 * 2 * len(WIDTHS)
    # a restarted follow (a new exporter) resumes from the record: no step twice
    _grow(path, (12,))
    with LiveExporter("tensorboard", out) as again:
        assert again(path)["cells"] == 2 * len(WIDTHS)
    assert json.loads(state_path(out, "live").read_text())["exported"]["3"]["metrics"] == [
        0, 2, 5, 9, 12]
    for w in WIDTHS:
        # the restart's event file may be read first (two files of one second): sort by step
        acc = _accumulator(out / "live" / f"w{w}")
        for s, sub in enumerate(("train", "test")):
            ev = sorted(acc.Scalars(f"metrics/error/{sub}"), key=lambda x: x.step)
            assert [x.step for x in ev] == [0, 2, 5, 9, 12]  # each step once
            np.testing.assert_allclose([x.value for x in ev],
                                       [metric_value(e, w, s) for e in (0, 2, 5, 9, 12)],
                                       rtol=1e-6)
        assert sorted(h.step for h in acc.Histograms("wsp/histogram/features.0")) == [
            0, 2, 5, 9, 12]
        assert "wsp/alpha/features.3" not in acc.Tags()["scalars"]  # NaN: not a point


def test_live_export_refuses_a_batch_export_and_tables(cube: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from ckpt_analyzer.errors import CkptError, UsageError
    from ckpt_analyzer.export.live import LiveExporter

    out = tmp_path / "tb"
    assert CliRunner().invoke(main, ["export", str(cube), "--to", "tensorboard",
                                     str(out)]).exit_code == 0
    with pytest.raises(CkptError, match="holds an earlier export"):
        LiveExporter("tensorboard", out)(cube)
    with LiveExporter("tensorboard", out, overwrite=True) as live:  # starts afresh
        assert live(cube)["cells"] > 0
    acc = _accumulator(out / "digits" / "w1")
    assert [x.step for x in acc.Scalars("metrics/loss")] == list(EPOCHS)
    with pytest.raises(UsageError, match="tensorboard or wandb only"):
        LiveExporter("csv", out)


def test_live_wandb_resumes_its_run_and_logs_new_epochs_only(tmp_path: Path,
                                                             fake_wandb: list[Any]) -> None:
    from ckpt_analyzer.export.live import LiveExporter

    path = _growing_cube(tmp_path / "live.h5")
    out = tmp_path / "wb"
    live = LiveExporter("wandb", out, probes=["metrics"], widths=[3])
    live(path)
    _grow(path, (5,))
    live(path)
    inits = [c[1] for c in fake_wandb if c[0] == "init"]
    assert len(inits) == 2 and inits[0]["name"] == "live/w3" and "id" not in inits[0]
    assert inits[1]["id"] == "new" and inits[1]["resume"] == "allow"  # the first run's id
    logs = [c[1] for c in fake_wandb if c[0] == "log"]
    assert [r["epoch"] for r in logs] == [0, 2, 5]
    assert logs[2]["metrics/error/test"] == pytest.approx(metric_value(5, 3, 1))
    assert ("define_metric", "metrics/*", {"step_metric": "epoch"}) in fake_wandb


def test_export_follow_exports_and_ends_when_no_run_writes(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    path = _growing_cube(tmp_path / "live.h5")
    out = tmp_path / "tb"
    res = CliRunner().invoke(main, ["export", str(path), "--to", "tensorboard", str(out),
                                    "--follow", "--poll", "0.05"])
    assert res.exit_code == 0, res.output
    assert "exported live to tensorboard (1 update(s))" in res.output
    assert [x.step for x in _accumulator(out / "live" / "w1").Scalars("metrics/loss")] == [0, 2]
    res = CliRunner().invoke(main, ["export", str(path), "--to", "csv", str(out), "--follow"])
    assert res.exit_code == 2 and "tensorboard or wandb only" in res.output


def test_follow_exports_every_materialization_while_the_writer_holds_the_cube(
        tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    import threading
    import time

    from ckpt_analyzer.cube.journal import cube_busy
    from ckpt_analyzer.export.live import LiveExporter, follow

    path = _growing_cube(tmp_path / "live.h5")
    out = tmp_path / "tb"
    results: list[dict[str, Any]] = []
    held, caught_up = threading.Event(), threading.Semaphore(0)

    def exported(res: dict[str, Any]) -> None:
        results.append(res)
        caught_up.release()

    def writer() -> None:  # a run: holds the journal, materializes twice, then ends
        with Cube(path) as cube:
            held.set()
            for e in (5, 9):
                assert caught_up.acquire(timeout=60)  # the exporter saw the previous state
                time.sleep(0.05)  # another modification time
                for w in WIDTHS:
                    cube.record("metrics", e, w, {"error": np.zeros(2), "loss": np.array(e)})
                cube.materialize()
            assert caught_up.acquire(timeout=60)

    t = threading.Thread(target=writer)
    t.start()
    held.wait()
    assert cube_busy(path)
    with LiveExporter("tensorboard", out, probes=["metrics"]) as live:
        n = follow(live, path, 0.05, 120, exported)
    t.join()
    assert not cube_busy(path)
    assert n == len(results) == 3  # the cube as found, then each materialization
    assert [r["cells"] for r in results] == [4, 2, 2]
    assert [x.step for x in _accumulator(out / "live" / "w3").Scalars("metrics/loss")] == [
        0, 2, 5, 9]
