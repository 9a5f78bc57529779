"""ckpt_analyzer.report: events read from cubes with known curves, storage, the report CLI."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import analyze, measure

from ckpt_analyzer import events as an
from ckpt_analyzer.cube import Cube, open_cube
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.probes.base import Metric, Outputs
from ckpt_analyzer.report import (
    build_report,
    epoch_spacing,
    format_report,
    read_report,
    write_report,
)

WIDTHS = [1, 2, 4, 8]
N = 30  # checkpoints
SUBSETS = ["train", "clean", "noisy", "test"]
K = 5
VOLUMES = [0, 1, 2, 3]
# Known construction, per width index i (checkpoint indices, not epochs):
T_E_MIN = [5, 6, 7, 8]
T_E_PEAK = [12, 14, 16, 18]
T_R_MIN = 3
T_R_PEAK = [t - 2 for t in T_E_PEAK]  # T_R,peak = T_E,peak - 2 in checkpoints
T_DP_PEAK = 15  # noisy error drops fastest here (logistic centred at 14.5)
# Model-wise test error: the global maximum is the smallest (underfitting) width; the peak is
# the interior maximum at width 4 (prominence 0.49 - max(0.41, 0.25) = 0.08).
FINAL_TEST = [0.66, 0.41, 0.49, 0.25]
FINAL_TRAIN = [0.3, 0.1, 0.0, 0.0]  # interpolation threshold: width 4
#: Patience and window (epochs) that fit the 30-epoch synthetic run; the paper's defaults
#: (T = 30, dT = 5) are longer than it.
SHORT: dict[str, Any] = {"patience": 10, "window": 2}
# Hessian top eigenvalue (train subset, k = 0): a minimum at epoch T_H_MIN, a peak at T_H_PEAK[i],
# then falling to FINAL_EIG[i]; over width the final values peak at width 2 (an interior maximum,
# prominence 3.0 - max(1.0, 2.0) = 1.0), one step below the interpolation threshold (width 4).
T_H_MIN = 4
T_H_PEAK = [10, 11, 13, 15]
FINAL_EIG = [1.0, 3.0, 2.0, 2.5]
LOG_EPOCHS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 23, 27,
              32, 37, 44, 52, 61, 72, 85, 100]  # save_epochs("log:30", 100)


def curve_test_error(i: int) -> np.ndarray:
    """Down to a minimum, up to a bump, then a second descent (strictly monotone pieces)."""
    return np.interp(np.arange(N), [0, T_E_MIN[i], T_E_PEAK[i], N - 1],
                     [0.9, 0.3, 0.7, FINAL_TEST[i]])


def r_curve(i: int) -> np.ndarray:
    """g(t) with a minimum at T_R_MIN and a peak at T_R_PEAK[i]; R_k = k * g (k >= 1)."""
    g = np.interp(np.arange(N), [0, T_R_MIN, T_R_PEAK[i], N - 1], [-1.0, -2.0, -0.5, -1.0])
    return g[:, None] * np.arange(K)[None, :]


def top_eigenvalue(i: int) -> np.ndarray:
    return np.interp(np.arange(N), [0, T_H_MIN, T_H_PEAK[i], N - 1], [5.0, 1.0, 8.0, FINAL_EIG[i]])


def noisy_error() -> np.ndarray:
    return 0.9 - 0.8 / (1 + np.exp(-(np.arange(N) - 14.5) / 1.5))


def r_test(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return r_curve(i) + 0.3 * rng.standard_normal((N, K))


def sharp_values(i: int, final: bool) -> dict[str, np.ndarray]:
    """At the final epoch the Jacobian peaks at width 4 (volume 0) and width 2 (volume 3);
    at epoch 0 it peaks elsewhere (width 8) so using the wrong epoch would show."""
    jac = np.zeros((3, len(VOLUMES)))
    if final:
        jac[:, 0] = [1.0, 2.0, 5.0, 3.0][i]
        jac[:, -1] = [1.0, 6.0, 2.0, 0.5][i]
        jac[:, 1:-1] = 1.0
    else:
        jac[:] = [1.0, 1.0, 1.0, 9.0][i]
    # accuracy dips at width 4 (interior minimum; its maximum is the widest model), so the
    # loss -log(acc) peaks there
    acc = np.full((3, len(VOLUMES)), [0.5, 0.9, 0.7, 1.0][i] if final else 0.1)
    return {"accuracy": acc, "loss": -np.log(np.maximum(acc, 1e-3)), "jacobian": jac,
            "hessian": np.full((3, len(VOLUMES)), np.nan)}


def make_cube(path: Path, probes: Iterable[str] = ("metrics", "spectrum", "sharpness"),
              epochs: list[int] | None = None, r_subsets: tuple[str, ...] = ("train", "test"),
              extra_probe: str | None = None) -> Path:
    epochs = list(range(N)) if epochs is None else epochs
    probes = set(probes)
    with Cube(path) as cube:
        cube.set_root({"source": "/runs/synthetic", "run_json": json.dumps(
            {"arch": "mcnn", "dataset": {"name": "digits"},
             "label_noise": {"kind": "symmetric", "fraction": 0.2}})})
        if "metrics" in probes:
            cube.begin_probe("metrics", "1", {"subsets": SUBSETS}, 0, Outputs(
                coords={"subset": SUBSETS},
                metrics={"loss": Metric(("subset",)), "error": Metric(("subset",))}), {})
            for i, w in enumerate(WIDTHS):
                train = np.linspace(0.9, FINAL_TRAIN[i], N)
                err = np.stack([train, train, noisy_error(), curve_test_error(i)], axis=1)
                for t, e in enumerate(epochs):
                    cube.record("metrics", e, w, {"loss": err[t] * 2, "error": err[t]})
        if "spectrum" in probes:
            subs = list(r_subsets)
            cube.begin_probe("spectrum", "1", {"subsets": subs}, 0, Outputs(
                coords={"subset": subs, "k": list(range(K))},
                metrics={"A": Metric(("subset", "k")), "R": Metric(("subset", "k"))}), {})
            for i, w in enumerate(WIDTHS):
                by = {"train": r_curve(i), "test": r_test(i), "noisy": r_curve(i) + 1}
                R = np.stack([by[s] for s in subs], axis=1)  # (N, S, K)
                for t, e in enumerate(epochs):
                    cube.record("spectrum", e, w, {"A": np.exp(R[t]), "R": R[t]})
        if "sharpness" in probes:
            dims = ("subset", "volume")
            cube.begin_probe("sharpness", "1", {}, 0, Outputs(
                coords={"subset": ["clean", "noisy", "train"], "volume": VOLUMES},
                metrics={m: Metric(dims) for m in ("accuracy", "loss", "jacobian",
                                                   "hessian")}), {})
            for i, w in enumerate(WIDTHS):
                cube.record("sharpness", epochs[0], w, sharp_values(i, False))
                cube.record("sharpness", epochs[-1], w, sharp_values(i, True))
        if "hessian" in probes:
            cube.begin_probe("hessian", "1", {}, 0, Outputs(
                coords={"subset": ["test", "train"], "k": [0, 1]},
                metrics={"eigenvalues": Metric(("subset", "k"))}), {})
            for i, w in enumerate(WIDTHS):
                lam = top_eigenvalue(i)
                for t, e in enumerate(epochs):
                    # test subset and k = 1 peak elsewhere: using them would show
                    eig = np.array([[10 * lam[t] * (t < 20), 1.0], [lam[t], 0.5 + t % 3]])
                    cube.record("hessian", e, w, {"eigenvalues": eig})
        if extra_probe:
            cube.begin_probe(extra_probe, "1", {}, 0, Outputs(
                coords={"c": [0]}, metrics={"m": Metric(("c",))}), {})
            cube.record(extra_probe, epochs[0], WIDTHS[0], {"m": np.ones(1)})
        cube.materialize(epochs, WIDTHS)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """make_cube once per distinct arguments (journal writes fsync every cell: slow)."""
    root = tmp_path_factory.mktemp("cubes")
    cache: dict[str, Path] = {}

    def get(tmp: Path, **kw: Any) -> Path:
        key = json.dumps(kw, sort_keys=True)
        if key not in cache:
            cache[key] = make_cube(root / f"c{len(cache)}.h5", **kw)
        dst = tmp / "cube.h5"
        shutil.copyfile(cache[key], dst)  # the cube alone, without its journal
        return dst

    return get


@pytest.fixture
def cube(built: Any, tmp_path: Path) -> Path:
    return built(tmp_path)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- events


def test_events_have_the_constructed_answers(cube: Path) -> None:
    rep = build_report(cube, patience=10, window=2)
    assert [r["width"] for r in rep["per_width"]] == WIDTHS
    for i, r in enumerate(rep["per_width"]):
        assert (r["T_E_min"], r["T_E_peak"]) == (T_E_MIN[i], T_E_PEAK[i])
        assert (r["T_R_min"], r["T_R_peak"]) == (T_R_MIN, T_R_PEAK[i])
        assert r["T_dP_peak"] == T_DP_PEAK
        assert r["E_peak_found"] and r["R_peak_found"]
        assert r["final_epoch"] == N - 1
        assert r["final_test_error"] == pytest.approx(FINAL_TEST[i])
        assert r["final_train_error"] == pytest.approx(FINAL_TRAIN[i])
    m = rep["model_wise"]
    assert m["interpolation_threshold"] == 4
    assert m["test_error_peak_width"] == 4  # not 1, the global maximum
    peak = m["test_error_peak"]
    assert peak["width"] == 4 and peak["kind"] == "max"
    assert peak["value"] == pytest.approx(0.49) and peak["prominence"] == pytest.approx(0.08)
    assert peak["threshold_distance"] == {"ratio": 1.0, "difference": 0, "steps": 0}
    assert "prominence" in m["peak_rule"]
    fit = rep["correlations"]["T_R_peak_vs_T_E_peak"]
    assert fit["slope"] == pytest.approx(1.0)
    assert fit["intercept"] == pytest.approx(-2.0)
    assert fit["r"] == pytest.approx(1.0)
    assert fit["n"] == 4
    # T_dP,peak is the same for every width: constant x, no line
    assert rep["correlations"]["T_R_peak_vs_T_dP_peak"]["slope"] is None
    assert rep["parameters"]["epoch_spacing"] == "every epoch"
    assert rep["parameters"]["unit"] == "epochs"
    assert "epochs" in rep["parameters"]["counting"]
    json.dumps(rep, allow_nan=False)  # strictly JSON


def test_pcc_matches_a_loop_reference(cube: Path) -> None:
    rep = build_report(cube)
    for i, r in enumerate(rep["per_width"]):
        a, b = r_curve(i), r_test(i)
        ref = [float(np.corrcoef(a[:, k], b[:, k])[0, 1]) for k in range(1, K)]
        assert r["pcc_R"] == pytest.approx(sum(ref) / len(ref))
        assert r["pcc_R_std"] == pytest.approx(float(np.std(ref)))
        train = np.linspace(0.9, FINAL_TRAIN[i], N)
        assert r["pcc_error"] == pytest.approx(float(np.corrcoef(train, curve_test_error(i))[0, 1]))


def test_log_spaced_epochs_report_epochs_not_indices(built: Any, tmp_path: Path) -> None:
    cube = built(tmp_path, epochs=LOG_EPOCHS)
    rep = build_report(cube, patience=10, window=2)
    for i, r in enumerate(rep["per_width"]):
        assert r["T_E_min"] == LOG_EPOCHS[T_E_MIN[i]]
        assert r["T_E_peak"] == LOG_EPOCHS[T_E_PEAK[i]]
        assert r["T_R_peak"] == LOG_EPOCHS[T_R_PEAK[i]]
        assert r["T_dP_peak"] == LOG_EPOCHS[T_DP_PEAK]
    assert rep["parameters"]["epoch_spacing"] == "log-spaced"
    assert rep["parameters"]["epochs"] == [0, 100]
    fit = rep["correlations"]["T_R_peak_vs_T_E_peak"]
    x = [LOG_EPOCHS[t] for t in T_E_PEAK]
    y = [LOG_EPOCHS[t] for t in T_R_PEAK]
    slope, intercept = np.polyfit(x, y, 1)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)


def test_patience_changes_the_answer(cube: Path) -> None:
    # Without patience the minimum is the global one: the last checkpoint for widths whose
    # second descent goes below the first minimum (FINAL_TEST < 0.3: width 8).
    rep = build_report(cube, patience=None)
    last = rep["per_width"][-1]
    assert last["T_E_min"] == N - 1 and not last["E_peak_found"]
    assert rep["parameters"]["patience"] is None
    # A short patience stops the peak search on the way up: T_E,peak earlier than the bump.
    short = build_report(cube, patience=1)
    assert short["per_width"][0]["T_E_peak"] == T_E_PEAK[0]  # monotone rise: still found
    # With a 1-checkpoint patience the decrease window must be respected too
    assert build_report(cube, window=0)["per_width"][0]["T_dP_peak"] == T_DP_PEAK


def test_sharpness_peaks_at_the_final_epoch(cube: Path) -> None:
    sh = build_report(cube)["model_wise"]["sharpness"]
    assert sh["volumes"] == [0, 3]
    assert sh["epochs"] == {str(w): N - 1 for w in WIDTHS}
    for s in ("clean", "noisy", "train"):
        assert sh["peaks"]["jacobian"][s] == {"0": 4, "3": 2}
        assert sh["peaks"]["accuracy"][s] == {"0": 4, "3": 4}  # interior minimum, not 8
        assert sh["peaks"]["loss"][s] == {"0": 4, "3": 4}  # not 1, the global maximum
        assert sh["peaks"]["hessian"][s] == {"0": None, "3": None}
        jac = sh["details"]["jacobian"][s]
        assert jac["0"]["prominence"] == pytest.approx(2.0)  # 5 - max(2, 3)
        assert jac["3"]["threshold_distance"] == {"ratio": 0.5, "difference": -2, "steps": -1}
        acc = sh["details"]["accuracy"][s]["0"]
        assert acc["kind"] == "min" and acc["prominence"] == pytest.approx(0.2)
    assert sh["kinds"] == {"accuracy": "min", "loss": "max", "jacobian": "max",
                           "hessian": "max"}
    rep = build_report(cube)
    assert any("hessian" in n and "not computed" in n for n in rep["notes"])
    text = format_report(rep)
    assert "accuracy (min)" in text and "4 (2.000)" in text


def test_r_subset_choice(built: Any, tmp_path: Path) -> None:
    cube = built(tmp_path, r_subsets=("test", "noisy"))
    rep = build_report(cube)  # default train is absent: skipped with a note
    assert all(r["T_R_peak"] is None for r in rep["per_width"])
    assert any("no 'train' subset" in n for n in rep["notes"])
    rep = build_report(cube, subset="noisy", **SHORT)  # R + 1: same events
    assert [r["T_R_peak"] for r in rep["per_width"]] == T_R_PEAK
    with pytest.raises(UsageError, match="not measured on subset 'clean'"):
        build_report(cube, subset="clean")
    with pytest.raises(UsageError, match="did you mean 'test'"):
        build_report(cube, subset="tset")


@pytest.mark.parametrize("probes", [("metrics",), ("spectrum",), ("sharpness",), ()])
def test_missing_probes_degrade_gracefully(built: Any, tmp_path: Path,
                                          probes: tuple[str, ...]) -> None:
    cube = built(tmp_path, probes=list(probes), extra_probe="other")
    rep = build_report(cube, **SHORT)
    rows = rep["per_width"]
    assert [r["width"] for r in rows] == WIDTHS
    has_m, has_s = "metrics" in probes, "spectrum" in probes
    assert all((r["T_E_peak"] is not None) == has_m for r in rows)
    assert all((r["T_R_peak"] is not None) == has_s for r in rows)
    assert (rep["model_wise"]["interpolation_threshold"] == 4) == has_m
    assert (rep["model_wise"]["sharpness"] is not None) == ("sharpness" in probes)
    for p in {"metrics", "spectrum", "sharpness"} - set(probes):
        assert any(f"no '{p}' probe" in n and f"--probe {p}" in n for n in rep["notes"])
    text = format_report(rep)
    assert "Per width" in text and "Notes" in text
    json.dumps(rep, allow_nan=False)


def test_monotone_final_test_error_has_no_peak(built: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "FINAL_TEST", [0.6, 0.45, 0.35, 0.25])
    cube = make_cube(tmp_path / "mono.h5", probes=("metrics",))
    rep = build_report(cube, patience=10, window=2)
    m = rep["model_wise"]
    assert m["test_error_peak_width"] is None
    assert m["test_error_peak"]["width"] is None and m["test_error_peak"]["prominence"] is None
    assert any("no interior maximum" in n for n in rep["notes"])
    assert "test error peak: none" in format_report(rep)


def test_patience_longer_than_the_run_is_one_note_and_not_found(cube: Path) -> None:
    rep = build_report(cube)  # defaults T = 30, dT = 5 on a 30-checkpoint (29-epoch) run
    assert (rep["parameters"]["patience"], rep["parameters"]["window"]) == (30, 5)
    rows = rep["per_width"]
    assert all(r[k] is None for r in rows for k in ("T_E_min", "T_E_peak", "T_R_min",
                                                    "T_R_peak"))
    assert not any(r["E_peak_found"] or r["R_peak_found"] for r in rows)
    lines = [n for n in rep["notes"] if "longer than the run" in n]
    assert lines == ["patience T = 30 epochs is longer than the run (epochs 0..29, 29 epochs): "
                     "T_min and T_peak are reported as not found"]
    assert all(r["T_dP_peak"] == T_DP_PEAK for r in rows)  # 2*5+1 = 11 epochs fit
    rep = build_report(cube, patience=10, window=15)
    assert all(r["T_dP_peak"] is None for r in rep["per_width"])
    assert any("window 2*dT+1 = 31 epochs is longer than the run" in n for n in rep["notes"])
    # A peak whose patience runs past the end is not found, with a note naming the widths.
    rep = build_report(cube, patience=12)
    assert [r["T_E_peak"] for r in rep["per_width"]] == [12, 14, 16, None]
    assert [r["E_peak_found"] for r in rep["per_width"]] == [True, True, True, False]
    assert any(n.startswith("T_E events not found for width 8") for n in rep["notes"])


def test_log_grid_patience_counts_epochs(built: Any, tmp_path: Path) -> None:
    """On LOG_EPOCHS the widest width's T_E,peak (epoch 18) is confirmed with T = 30 epochs
    (checkpoints up to epoch 100 follow), where the old checkpoint-counting rule would have
    waited 30 checkpoints, more than the run has."""
    cube = built(tmp_path, epochs=LOG_EPOCHS)
    rep = build_report(cube, patience=30, window=2)
    assert [r["T_E_peak"] for r in rep["per_width"]] == [LOG_EPOCHS[t] for t in T_E_PEAK]
    assert not any("longer than the run" in n for n in rep["notes"])


def test_bad_parameters(cube: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="patience"):
        build_report(cube, patience=0)
    with pytest.raises(UsageError, match="window"):
        build_report(cube, window=-1)
    with pytest.raises(TypeError, match="patience"):
        build_report(cube, patience=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        build_report(cube, window=-1)
    with pytest.raises(CkptError, match="no such cube"):
        build_report(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(CkptError, match="not a ckpt-analyzer cube"):
        build_report(other)


@pytest.mark.parametrize(("epochs", "want"), [
    (list(range(10)), "every epoch"), ([0, 5, 10, 15], "every 5 epochs"),
    (LOG_EPOCHS, "log-spaced"), ([0, 1, 2, 3, 4, 5, 7, 10, 15, 22, 32, 46, 68, 100, 147, 215,
                                  316, 464, 681, 1000], "log-spaced"),
    ([0, 1, 5, 6, 20, 21], "irregular"), ([3], "single checkpoint")])
def test_epoch_spacing(epochs: list[int], want: str) -> None:
    assert epoch_spacing(epochs) == want


# ----------------------------------------------------------------------------- storage


def probe_arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in ("metrics", "spectrum", "sharpness"):
        ds = open_cube(path, p)
        for v in ds.data_vars:
            out[f"{p}/{v}"] = ds[v].values
    return out


def test_report_is_stored_without_breaking_the_cube(cube: Path) -> None:
    before = probe_arrays(cube)
    rep = build_report(cube, **SHORT)
    write_report(cube, rep)
    write_report(cube, rep)  # replaces the earlier one
    assert not Path(f"{cube}.tmp").exists()
    assert read_report(cube) == rep
    after = probe_arrays(cube)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    import xarray as xr

    with xr.open_dataset(cube, group="report", engine="h5netcdf") as ds:
        assert ds["width"].values.tolist() == WIDTHS
        assert ds["T_E_peak"].values.tolist() == [float(t) for t in T_E_PEAK]
        assert json.loads(ds.attrs["report"]) == rep
    with xr.open_dataset(cube, group="spectrum", engine="h5netcdf") as ds:
        assert ds["R"].dims == ("epoch", "width", "subset", "k")
    # the stored group is derived data: a rematerialization of the cube drops it
    with Cube(cube) as c:
        c.materialize()
    assert read_report(cube) is None
    after = probe_arrays(cube)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_undefined_values_are_stored_as_nan(built: Any, tmp_path: Path) -> None:
    cube = built(tmp_path, probes=["metrics"])
    write_report(cube, build_report(cube, **SHORT))
    with h5py.File(cube, "r") as f:
        assert np.isnan(f["report/T_R_peak"][()]).all()
        assert f["report/T_E_peak"][()].tolist() == [float(t) for t in T_E_PEAK]


def test_store_refuses_while_the_cube_is_written(cube: Path) -> None:
    rep = build_report(cube)
    with Cube(cube), pytest.raises(CkptError, match="is writing this cube.*--no-store"):
        write_report(cube, rep)
    assert read_report(cube) is None
    assert not Path(f"{cube}.tmp").exists()


def test_store_refuses_a_probe_named_report(tmp_path: Path) -> None:
    cube = make_cube(tmp_path / "a.h5", probes=("metrics",), extra_probe="report")
    with pytest.raises(CkptError, match="probe named .report."):
        write_report(cube, build_report(cube))


# ----------------------------------------------------------------------------- CLI


def run(*args: str) -> Any:
    return analyze(*args, code=None)


def test_cli_report_text_json_and_store(cube: Path) -> None:
    res = run("report", str(cube))
    assert res.exit_code == 0, res.output
    assert "T_E,peak" in res.output and "interpolation threshold" in res.output
    assert "patience T = 30 epochs, window dT = 5 epochs" in res.output
    assert "events in epochs" in res.output and "longer than the run" in res.output
    stored = read_report(cube)
    assert stored is not None and stored["parameters"]["patience"] == an.DEFAULT_PATIENCE
    res = run("report", str(cube), "--json", "--patience", "5", "--window", "1",
              "--subset", "train")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["parameters"]["patience"] == 5 and data["parameters"]["window"] == 1
    assert data["parameters"]["unit"] == "epochs"
    assert read_report(cube) == data


def test_cli_no_store(cube: Path) -> None:
    res = run("report", str(cube), "--no-store")
    assert res.exit_code == 0
    assert read_report(cube) is None


@pytest.mark.parametrize(("args", "code", "msg"), [
    (["--patience", "0"], 2, "patience"),
    (["--window", "x"], 2, "window"),
    (["--subset", "nosiy"], 2, "did you mean 'noisy'"),
])
def test_cli_bad_input(cube: Path, args: list[str], code: int, msg: str) -> None:
    res = run("report", str(cube), *args)
    assert res.exit_code == code
    assert msg in res.output


def test_cli_not_a_cube(tmp_path: Path) -> None:
    res = run("report", str(tmp_path / "nope.h5"))
    assert res.exit_code == 1 and "no such cube file" in res.output
    txt = tmp_path / "x.h5"
    txt.write_text("hello")
    res = run("report", str(txt))
    assert res.exit_code == 1 and "not an HDF5 file" in res.output


# ----------------------------------------------------------------------------- a real cube


@pytest.fixture(scope="module")
def real_cube(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return measure(digits_run, root, ["metrics", "spectrum"], {
        "spectrum.points": 20, "spectrum.n": 16, "spectrum.subsets": "train,test"},
        out=root / "cube.h5")


def test_real_cube_report_matches_the_analysis_functions(real_cube: Path) -> None:
    rep = build_report(real_cube)
    m = open_cube(real_cube, "metrics")
    s = open_cube(real_cube, "spectrum")
    epochs = m["epoch"].values
    assert [r["width"] for r in rep["per_width"]] == m["width"].values.tolist()
    finals = []
    for r in rep["per_width"]:
        w = r["width"]
        test = m["error"].sel(width=w, subset="test").values
        noisy = m["error"].sel(width=w, subset="noisy").values
        R = s["R"].sel(width=w, subset="train").values
        ref = an.events_for_width(epochs, test, R, noisy)
        assert {k: r[k] for k in an.EVENT_KEYS} == ref
        train = m["error"].sel(width=w, subset="train").values
        finals.append(float(train[-1]))
        ks = range(1, s.sizes["k"])
        Rt = s["R"].sel(width=w, subset="test").values
        ref_pcc = np.mean([np.corrcoef(R[:, k], Rt[:, k])[0, 1] for k in ks])
        assert r["pcc_R"] == pytest.approx(ref_pcc)
    interp = [w for w, e in zip(m["width"].values.tolist(), finals, strict=True) if e == 0]
    assert rep["model_wise"]["interpolation_threshold"] == (min(interp) if interp else None)
    assert any("no 'sharpness' probe" in n for n in rep["notes"])
    res = run("report", str(real_cube))
    assert res.exit_code == 0, res.output
    assert read_report(real_cube) == rep


# ----------------------------------------------------------------------------- hessian events


def test_hessian_events_have_the_constructed_answers(built: Any, tmp_path: Path) -> None:
    cube = built(tmp_path, probes=["metrics", "spectrum", "sharpness", "hessian"])
    rep = build_report(cube, **SHORT)
    for i, r in enumerate(rep["per_width"]):
        assert (r["T_H_min"], r["T_H_peak"]) == (T_H_MIN, T_H_PEAK[i])
        assert r["H_peak_found"]
        assert (r["T_E_min"], r["T_E_peak"]) == (T_E_MIN[i], T_E_PEAK[i])  # unchanged
    h = rep["model_wise"]["hessian"]
    assert rep["model_wise"]["hessian_peak_width"] == 2
    assert h["subset"] == "train" and h["k"] == 0
    assert h["epochs"] == {str(w): N - 1 for w in WIDTHS}
    assert h["peak"]["width"] == 2 and h["peak"]["kind"] == "max"
    assert h["peak"]["value"] == pytest.approx(3.0)
    assert h["peak"]["prominence"] == pytest.approx(1.0)
    assert h["peak"]["threshold_distance"] == {"ratio": 0.5, "difference": -2, "steps": -1}
    assert not any("'hessian' probe" in n or "Hessian" in n for n in rep["notes"])
    text = format_report(rep)
    assert "T_H,peak" in text
    assert "top Hessian eigenvalue peak (train subset): width 2 (value 3.000, prominence 1.000)" \
        in text
    # same patience as the test-error events: the whole curve finds the same peaks here
    whole = build_report(cube, patience=None)
    assert [r["T_H_peak"] for r in whole["per_width"]] == T_H_PEAK
    write_report(cube, rep)
    assert read_report(cube) == json.loads(json.dumps(rep))
    with h5py.File(cube, "r") as f:
        np.testing.assert_array_equal(f["report/T_H_peak"][()], T_H_PEAK)
    json.dumps(rep, allow_nan=False)


def test_no_hessian_probe_is_a_note_and_no_events(cube: Path) -> None:
    rep = build_report(cube, **SHORT)
    assert all(r["T_H_min"] is None and r["T_H_peak"] is None and not r["H_peak_found"]
               for r in rep["per_width"])
    assert rep["model_wise"]["hessian"] is None and rep["model_wise"]["hessian_peak_width"] is None
    assert any("no 'hessian' probe" in n and "--probe hessian" in n for n in rep["notes"])
    text = format_report(rep)
    assert "T_H,peak" not in text and "Hessian eigenvalue peak" not in text


def test_report_of_an_older_version_still_formats(cube: Path) -> None:
    rep = build_report(cube, **SHORT)
    for r in rep["per_width"]:
        for key in ("T_H_min", "T_H_peak", "H_peak_found"):
            del r[key]
    for key in ("hessian", "hessian_peak_width"):
        del rep["model_wise"][key]
    assert "Per width" in format_report(rep)
