"""Events and correlations on any save grid: every epoch vs log grids, unresolved events.

The same training measured on a log save grid and with every epoch saved must give the same
PCC (over epochs, not over checkpoints) and the same events, or say that the grid cannot
resolve an event (saves further apart than the patience near it).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import analyze

from ckpt_analyzer import events as A
from ckpt_analyzer.train.schedule import save_epochs

E = 300
T = np.arange(E + 1, dtype=float)
LOG_GRIDS = ("log:20", "log:30", "log:40")


def ref_epoch_pcc(epochs: np.ndarray, x: np.ndarray, y: np.ndarray, min_pairs: int = 3) -> float:
    """Each series linear in epoch between its finite saved points (a loop), NaN outside its
    finite span, then np.corrcoef over the epochs where both are defined."""
    def dense(v: np.ndarray) -> dict[int, float]:
        pts = [(int(e), float(a)) for e, a in zip(epochs, v, strict=True) if math.isfinite(a)]
        out = {}
        for (e0, a0), (e1, a1) in itertools.pairwise(pts):
            for t in range(e0, e1 + 1):
                out[t] = a0 + (a1 - a0) * (t - e0) / (e1 - e0)
        if len(pts) == 1:
            out[pts[0][0]] = pts[0][1]
        return out

    dx, dy = dense(x), dense(y)
    saved = sum(1 for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b))
    both = sorted(set(dx) & set(dy))
    if saved < min_pairs:
        return math.nan
    xs, ys = np.array([dx[t] for t in both]), np.array([dy[t] for t in both])
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan
    return float(np.corrcoef(xs, ys)[0, 1])


def random_grid(rng: np.random.Generator, n: int, span: int) -> np.ndarray:
    return np.sort(rng.choice(np.arange(span), size=n, replace=False))


# ----------------------------------------------------------------------------- PCC over epochs


def test_epoch_pearson_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(2, 12))
        e = random_grid(rng, n, 60)
        x = rng.standard_normal((n, 3))
        y = x + rng.standard_normal((n, 3))
        x[rng.random((n, 3)) < 0.2] = np.nan
        y[rng.random((n, 3)) < 0.2] = np.nan
        got = A.epoch_pearson(e, x, y)
        want = [ref_epoch_pcc(e, x[:, j], y[:, j]) for j in range(3)]
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, equal_nan=True,
                                   err_msg=str(trial))
        assert A.epoch_pearson(e, x[:, 0], y[:, 0]) == pytest.approx(want[0], nan_ok=True)


def test_linear_functions_of_epoch_have_pcc_one_on_any_grid() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        e = random_grid(rng, int(rng.integers(3, 30)), 1000)
        assert A.epoch_pearson(e, 2 * e + 1.0, 7 - 0.5 * e) == pytest.approx(-1.0, abs=1e-12)
        assert A.epoch_pearson(e, 0.1 * e, 3 * e + 2.0) == pytest.approx(1.0, abs=1e-12)
    # Every epoch saved: eq. (4) over the checkpoints themselves.
    e = np.arange(50)
    x, y = np.sin(e / 7.0), np.cos(e / 5.0)
    assert A.epoch_pearson(e, x, y) == pytest.approx(A.pearson(x, y), abs=1e-12)
    # Fewer than 3 saved pairs: NaN, however many epochs interpolation spans.
    assert math.isnan(A.epoch_pearson([0, 100], [1.0, 2.0], [3.0, 5.0]))
    assert math.isnan(A.epoch_pearson([0, 5, 9], [1.0, 1.0, 1.0], [3.0, 5.0, 4.0]))


def smooth_run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train error, test error (a minimum near 30, a bump near 66) and noisy-subset error
    (steepest fall at 60) of a 300-epoch run, every epoch."""
    train = 0.9 * np.exp(-T / 40) + 0.02
    test = 0.3 + 0.5 * np.exp(-T / 8) + 0.12 * np.exp(-(((T - 70) / 30) ** 2)) - 0.0003 * T
    noisy = 0.9 / (1 + np.exp((T - 60) / 12))
    return train, test, noisy


def test_pcc_agrees_between_every_epoch_and_log_grids() -> None:
    train, test, _ = smooth_run()
    dense = A.epoch_pearson(T.astype(int), train, test)
    old_gap = 0.0
    for spec in LOG_GRIDS:
        e = np.array(save_epochs(spec, E))
        assert A.epoch_pearson(e, train[e], test[e]) == pytest.approx(dense, abs=0.02), spec
        old_gap = max(old_gap, abs(A.pearson(train[e], test[e]) - dense))
    assert old_gap > 0.04  # over the saved checkpoints, the log grids disagree


# ----------------------------------------------------------------------------- resolution


def test_save_spacing_against_a_loop() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        e = random_grid(rng, int(rng.integers(2, 15)), 200)
        v = rng.random(e.size)
        v[rng.random(e.size) < 0.2] = np.nan
        k = e[np.isfinite(v)]
        t = int(rng.integers(0, 200))
        dt = int(rng.integers(0, 6))
        gaps_point = [b - a for a, b in itertools.pairwise(k) if a <= t <= b]
        gaps_win = [b - a for a, b in itertools.pairwise(k)
                    if a < t + dt and b > t - dt - 1]
        assert A.save_spacing(e, v, t) == max(gaps_point, default=0)
        assert A.save_spacing(e, v, t, dt) == max(gaps_win, default=0)


def test_known_minimum_resolved_when_dense_enough_unresolved_when_not() -> None:
    v = ((T - 120) / 100) ** 2  # minimum at epoch 120, rising after it
    assert A.peak_epochs(T.astype(int), v)[0] == 120  # type: ignore[index]
    for step in (1, 5, 10, 20, 30):  # saves <= T = 30 apart near 120 (120 saved)
        e = np.arange(0, E + 1, step)
        ev, raw, bad = A.width_events(e, v[e], None)
        assert ev["T_E_min"] == 120 and "T_E_min" not in bad, step
    e = np.arange(0, E + 1, 7)  # 120 not saved: the nearest saved epoch, 119
    assert A.width_events(e, v[e], None)[0]["T_E_min"] == 119
    e = np.arange(0, E + 1, 40)  # 40 epochs apart near 120 > T = 30: no number
    ev, raw, bad = A.width_events(e, v[e], None)
    assert ev["T_E_min"] is None and raw["T_E_min"] == 120
    assert bad["T_E_min"] == A.Unresolved(120, 40, 30)
    assert bad["T_E_min"].reason() == "unresolved (saves 40 epochs apart near epoch 120; patience 30)"
    assert bad["T_E_min"].reason("step").startswith("unresolved (saves 40 steps apart near step")
    # A longer patience resolves it; no patience (whole curve) never is unresolved.
    assert A.width_events(e, v[e], None, patience=40)[0]["T_E_min"] == 120
    assert A.width_events(e, v[e], None, patience=None)[2] == {}
    assert A.unresolved(e, v[e], None, 30) is None


def test_events_agree_between_grids_or_are_unresolved() -> None:
    train, test, noisy = smooth_run()
    d = T.astype(int)
    dense, _, bad = A.width_events(d, test, None, noisy)
    assert bad == {} and dense["T_E_min"] is not None and dense["T_dP_peak"] is not None
    for spec in (*LOG_GRIDS, "log:10"):
        e = np.array(save_epochs(spec, E))
        ev, raw, bad = A.width_events(e, test[e], None, noisy[e])
        for key in ("T_E_min", "T_E_peak", "T_dP_peak"):
            if key in bad:
                assert ev[key] is None and bad[key].spacing > 30
                continue
            # within the spacing of the saves near it (which is <= the patience)
            gap = A.save_spacing(e, noisy[e] if key == "T_dP_peak" else test[e], raw[key],
                                 5 if key == "T_dP_peak" else None)
            assert abs(ev[key] - dense[key]) <= max(gap, 1), (spec, key, ev[key], dense[key])
    # On log:10 the saves near the events are 37 and more epochs apart: all unresolved.
    e = np.array(save_epochs("log:10", E))
    assert set(A.width_events(e, test[e], None, noisy[e])[2]) == {"T_E_min", "T_E_peak",
                                                                 "T_dP_peak"}


def test_decrease_rate_peak_centred_on_an_interpolated_segment() -> None:
    # The steepest drop of a sigmoid at c, saved sparsely: the straight line between two
    # saves holds the drop; the peak is that segment's centre, within half the gap of c.
    for c in (47.3, 61.2, 88.6):
        p = 0.9 / (1 + np.exp((T - c) / 10))
        for spec in LOG_GRIDS:
            e = np.array(save_epochs(spec, E))
            t = A.decrease_rate_peak(e, p[e])
            assert t is not None
            gap = A.save_spacing(e, p[e], t, 5)
            assert abs(t - c) <= gap / 2 + 6, (c, spec, t, gap)
        assert A.decrease_rate_peak(T.astype(int), p) == round(c + 0.5)  # the drop ending there


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def run_60(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A digits run trained 60 epochs with every epoch saved, and the same run on a log grid
    (its checkpoints at save_epochs('log:15', 60)), each analyzed into a cube."""
    import torch

    from ckpt_analyzer.train.loop import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("grids")
    every = root / "every"
    cfg = TrainConfig(widths=(4,), epochs=60, label_noise=0.2, lr=1e-3, seed=3)
    trainer = Trainer(cfg, every, torch.device("cpu"))
    trainer.prepare()
    trainer.run()
    log = root / "log"
    shutil.copytree(every, log)
    keep = save_epochs("log:15", 60)
    for f in (log / "w4").glob("e*.safetensors"):
        if int(f.stem[1:]) not in keep:
            f.unlink()
    meta = json.loads((log / "run.json").read_text())
    meta["save"] = {"spec": "log:15", "epochs": keep}
    (log / "run.json").write_text(json.dumps(meta))
    cubes = []
    for run_dir in (every, log):
        out = root / f"{run_dir.name}.h5"
        analyze("run", run_dir, "-o", out, "--probe", "metrics", "--probe", "spectrum",
                "--set", "spectrum.points=20", "--set", "spectrum.n=16",
                "--set", "spectrum.subsets=train,test", "--device", "cpu", "--quiet")
        cubes.append(out)
    return cubes[0], cubes[1]


@pytest.mark.slow  # trains 60 epochs and analyzes 61 + 15 checkpoints (~1 min on 2 cores)
def test_real_run_every_epoch_vs_log_grid(run_60: tuple[Path, Path]) -> None:
    from ckpt_analyzer.cube import open_cube
    from ckpt_analyzer.report import build_report

    args = {"patience": 10, "window": 2}  # the paper's T = 30 is half this run
    dense, log = build_report(run_60[0], **args), build_report(run_60[1], **args)
    assert log["parameters"]["epoch_spacing"] == "log-spaced"
    assert log["parameters"]["checkpoints"] == 15 and dense["parameters"]["checkpoints"] == 61
    a, b = dense["per_width"][0], log["per_width"][0]
    # PCC over epochs agrees between the grids; over the checkpoints it did not.
    assert b["pcc_error"] == pytest.approx(a["pcc_error"], abs=0.05)
    assert b["pcc_R"] == pytest.approx(a["pcc_R"], abs=0.01)
    m = open_cube(run_60[0], "metrics")
    train = m["error"].sel(width=4, subset="train").values
    test = m["error"].sel(width=4, subset="test").values
    i = np.array(save_epochs("log:15", 60))
    assert a["pcc_error"] == pytest.approx(A.pearson(train, test), abs=1e-12)
    assert abs(A.pearson(train[i], test[i]) - a["pcc_error"]) > 0.05
    # Each event of the error curves: the same within the spacing of the saves near it, or
    # unresolved. (R_t with spectrum.points=20 is a noisy estimate: a value above R at T_R,peak
    # on one unsaved epoch inside the patience window continues the dense search, so T_R,peak
    # moved 3 -> 47 between these grids on one machine, 'none' -> 38 with another thread count;
    # the save-spacing rule cannot see that: a limitation noted for the event search.)
    for key in ("T_E_min", "T_E_peak", "T_dP_peak"):
        if key in b["unresolved"]:
            u = b["unresolved"][key]
            assert b[key] is None and u["spacing"] > 10 and u["reason"].startswith("unresolved")
        elif a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key  # not found on both
        else:
            assert abs(a[key] - b[key]) <= 10, (key, a[key], b[key])


# ----------------------------------------------------------------------------- the report


#: 12 epochs saved every epoch, then one save every 40 epochs up to 731.
SPARSE_TAIL = [*range(12), *(11 + 40 * j for j in range(1, 19))]


def sparse_cube(path: Path) -> Path:
    """Test error down to epoch 5, up to epoch 51 (checkpoint 12), down to the end; the
    noisy-subset error falls fastest between epochs 131 and 171; saved on SPARSE_TAIL."""
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.probes.base import Metric, Outputs

    subsets = ["train", "clean", "noisy", "test"]
    n = len(SPARSE_TAIL)
    idx = np.arange(n)
    test = np.interp(idx, [0, 5, 12, n - 1], [0.9, 0.3, 0.7, 0.2])
    noisy = np.interp(idx, [0, 14, 15, n - 1], [0.9, 0.8, 0.2, 0.1])
    train = np.linspace(0.9, 0.0, n)
    err = np.stack([train, train, noisy, test], axis=1)
    with Cube(path) as cube:
        cube.set_root({"source": "/runs/sparse", "run_json": json.dumps(
            {"arch": "mcnn", "dataset": {"name": "digits"}})})
        cube.begin_probe("metrics", "1", {"subsets": subsets}, 0, Outputs(
            coords={"subset": subsets},
            metrics={"loss": Metric(("subset",)), "error": Metric(("subset",))}), {})
        for t, e in enumerate(SPARSE_TAIL):
            cube.record("metrics", e, 1, {"loss": err[t], "error": err[t]})
        cube.materialize(SPARSE_TAIL, [1])
    return path


def test_report_says_unresolved_instead_of_a_number(tmp_path: Path) -> None:
    from ckpt_analyzer.report import build_report, format_report, read_report, write_report
    from ckpt_analyzer.study.aggregate import aggregate
    from ckpt_analyzer.study.text import format_study

    cube = sparse_cube(tmp_path / "c.h5")
    rep = build_report(cube)  # T = 30, dT = 5
    row = rep["per_width"][0]
    assert row["T_E_min"] == 5 and row["T_E_peak"] is None and not row["E_peak_found"]
    assert row["T_dP_peak"] is None
    assert row["unresolved"] == {
        "T_E_peak": {"reason": "unresolved (saves 40 epochs apart near epoch 51; patience 30)",
                     "epoch": 51, "spacing": 40, "patience": 30},
        "T_dP_peak": {"reason": "unresolved (saves 40 epochs apart near epoch 151; patience "
                                "30)", "epoch": 151, "spacing": 40, "patience": 30}}
    assert "width 1 T_E,peak: unresolved (saves 40 epochs apart near epoch 51; patience 30)" \
        in rep["notes"]
    assert not any("not found" in n for n in rep["notes"])  # unresolved is not "not found"
    assert "resolution" in rep["parameters"]
    json.dumps(rep, allow_nan=False)
    text = format_report(rep)
    assert text.count("unresolved") >= 4  # two cells, the legend, the notes
    write_report(cube, rep)
    assert read_report(cube) == rep
    # A patience longer than the saves' spacing resolves both (the search is the same).
    rep = build_report(cube, patience=40)
    row = rep["per_width"][0]
    assert (row["T_E_peak"], row["T_dP_peak"], row["unresolved"]) == (51, 151, {})
    # The study counts the runs that could not resolve an event and keeps their reasons.
    study = aggregate([build_report(cube), build_report(cube)])
    pw = study["groups"][0]["per_width"][0]
    assert pw["T_E_peak"]["n"] == 0 and pw["T_E_peak"]["unresolved"] == 2
    assert pw["T_E_peak"]["reasons"][0].startswith("unresolved (saves 40 epochs")
    assert pw["T_E_min"]["unresolved"] == 0 and pw["T_E_min"]["mean"] == 5
    assert "unresolved (2/2)" in format_study(study)


def test_an_absent_event_is_unresolved_only_where_the_grid_has_a_gap_wider_than_patience() -> None:
    from ckpt_analyzer.events import unresolved_absence

    epochs = np.arange(0, 61)
    # no event anywhere on a grid saved every epoch: the absence is resolved
    assert unresolved_absence(epochs, np.linspace(1, 0, 61), patience=10) is None
    # the same curve on a log grid: a gap of 16 > 10 after epoch 44 cannot rule one out
    log = np.array(save_epochs("log:15", 60))
    u = unresolved_absence(log, np.linspace(1, 0, log.size), patience=10)
    assert u is not None and u.absent and (u.epoch, u.spacing, u.patience) == (44, 16, 10)
    assert u.reason() == ("unresolved (none found, but saves 16 epochs apart after epoch 44 "
                          "cannot rule one out; patience 10)")
    # a peak is searched after its minimum: gaps before it do not count
    assert unresolved_absence(log, np.linspace(1, 0, log.size), patience=10, after=60) is None
    assert unresolved_absence(log, np.linspace(1, 0, log.size), patience=20) is None
    # NaN (unmeasured) saves do not count as saves
    v = np.linspace(1, 0, 61)
    v[20:35] = np.nan
    u = unresolved_absence(epochs, v, patience=10)
    assert u is not None and (u.epoch, u.spacing) == (19, 16)


def test_a_peak_in_a_coarse_gap_is_reported_unresolved_not_absent() -> None:
    """A rise and fall within the patience, between two saves further apart than it: saved
    every epoch the peak is found; on the coarse grid the search sees a straight line, and the
    report says the grid cannot tell instead of 'none'."""
    epochs = np.arange(0, 61)
    test = np.interp(epochs, [0, 20, 26, 32, 60], [0.9, 0.3, 0.5, 0.3, 0.1])
    r = np.tile(np.linspace(1, 2, 4), (61, 1))
    noisy = np.linspace(0.9, 0.1, 61)
    dense, _, bad = A.width_events(epochs, test, r, noisy, patience=10, window=2)
    assert dense["T_E_peak"] == 26 and "T_E_peak" not in bad
    coarse = np.array([0, 5, 10, 15, 20, 35, 40, 45, 50, 55, 60])
    events, found, bad = A.width_events(coarse, test[coarse], r[coarse], noisy[coarse],
                                        patience=10, window=2)
    assert found["T_E_peak"] is None and events["T_E_peak"] is None
    assert bad["T_E_peak"].absent and bad["T_E_peak"].spacing == 15
