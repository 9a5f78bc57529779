"""ckpt_analyzer.study: several cubes (seeds × noise rates) aggregated, checked, drawn, HTML."""

from __future__ import annotations

import base64
import json
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_analyzer.cli import main
from ckpt_analyzer.cube import Cube
from ckpt_analyzer.errors import UsageError
from ckpt_analyzer.probes.base import Metric, Outputs
from ckpt_analyzer.study import (
    agreement,
    find_runs,
    format_study,
    load_study,
    run_folder_name,
    slope_ci,
    summarize,
)

WIDTHS = [1, 2, 4]
N = 30
K = 3
T_E_MIN = 5
SHORT: dict[str, Any] = {"patience": 10, "window": 2}
# final test error per seed: interior peak at width 2 for seeds 0 and 1, monotone for seed 2
FINAL_TEST = {0: [0.5, 0.6, 0.3], 1: [0.5, 0.55, 0.2], 2: [0.6, 0.5, 0.3]}
FINAL_TRAIN = [0.3, 0.0, 0.0]  # interpolation threshold: width 2
R_OFFSET = [2, 4, 3]
# top Hessian eigenvalue at the last epoch: interior peak at width 2 in every seed
FINAL_HESSIAN = [100.0, 300.0, 50.0]
# input-space tangent Hessian (largest volume, noisy points) at the last epoch: peak at width 2
FINAL_SHARP = [2.0, 5.0, 3.0]
SHARP_SUBSETS = ["clean", "noisy"]
LAMBDA = [0.25, 0.75]
ALPHA = [-1.0, 0.0, 1.0]


def normalized_loss(seed: int, i: int, e: int) -> tuple[float, float]:
    """(train, test) normalized cross-entropy: test exactly 1.5 train - 1.15 (r = 1)."""
    train = 2.3 - 0.001 * e - 0.0003 * i - 0.0001 * seed
    return train, 1.5 * train - 1.15


def weights_alpha(seed: int, i: int, e: int) -> float:
    """alpha of layer 'a' (layer 'b' has no fit): from 8 down to about 3."""
    return 3.0 + 5.0 / (1.0 + e) + 0.1 * seed + 0.01 * i


def landscape_slice(seed: int, i: int) -> list[float]:
    return [(1.0 + i + 0.1 * seed) * a * a + 0.2 for a in ALPHA]


def barrier(seed: int, i: int, e: int) -> float:
    return (1.0 + 0.1 * seed) * (i + 1) / (1.0 + e)


def interp_value(seed: int, i: int, kind: str, metric: str, b: int = 0) -> float:
    """Interpolation at the last epoch: tv peaks at width 2; cdn grows along the path."""
    base = [1.0, 3.0, 2.0][i] * (1 + 0.1 * seed) * (2.0 if kind == "between" else 1.0)
    return base if metric == "tv" else base * LAMBDA[b] / 10
SHARP_METRICS = ("accuracy", "loss", "jacobian", "hessian")


def sharp_value(seed: int, i: int, subset: str, volume: int, metric: str) -> float:
    """Sharpness at the last epoch: noisy points twice the clean ones, volume 0 half the
    largest volume, the Jacobian a third of the Hessian; accuracy and loss flat."""
    if metric in ("accuracy", "loss"):
        return 0.5
    v = FINAL_SHARP[i] * (1 + 0.1 * seed) * (2.0 if subset == "noisy" else 1.0)
    v *= 0.5 if volume == 0 else 1.0
    return v / 3 if metric == "jacobian" else v


def t_e_peak(seed: int, i: int) -> int:
    return 12 + 2 * seed + i


def t_r_peak(seed: int, i: int) -> int:
    return t_e_peak(seed, i) - R_OFFSET[(seed + i) % 3]


def hessian_curve(seed: int, i: int) -> np.ndarray:
    """Top eigenvalue over epochs: a peak one epoch before T_E,peak, then down to the final."""
    final = FINAL_HESSIAN[i] * (1 + 0.1 * seed)
    return np.interp(np.arange(N), [0, t_e_peak(seed, i) - 1, N - 1], [1.0, 4 * final, final])


def make_cube(path: Path, seed: int, noise: float = 0.2, arch: str = "mcnn",
              spectrum_points: int = 50, last_epoch: int | None = None) -> Path:
    """Metrics (train, noisy, test), spectrum (train, test) and hessian (train) with known
    events per seed; epochs after ``last_epoch`` left unmeasured (a cube still being
    written)."""
    final_test = FINAL_TEST[seed % 3]
    stop = N - 1 if last_epoch is None else last_epoch
    with Cube(path) as cube:
        cube.set_root({"source": f"/runs/{run_folder_name(noise, seed)}", "run_json": json.dumps(
            {"arch": arch, "dataset": {"name": "digits"}, "seed": seed,
             "label_noise": {"kind": "symmetric", "fraction": noise}})})
        cube.begin_probe("metrics", "1", {"subsets": ["train", "noisy", "test"]}, 0, Outputs(
            coords={"subset": ["train", "noisy", "test"]},
            metrics={"error": Metric(("subset",))}), {})
        cube.begin_probe("spectrum", "1", {"points": spectrum_points}, 0, Outputs(
            coords={"subset": ["train", "test"], "k": list(range(K))},
            metrics={"R": Metric(("subset", "k"))}), {})
        cube.begin_probe("hessian", "1", {"points": 64}, 0, Outputs(
            coords={"subset": ["train"], "k": [0]},
            metrics={"eigenvalues": Metric(("subset", "k"))}), {})
        cube.begin_probe("normalization", "1", {"samples": 64}, 0, Outputs(
            coords={"subset": ["train", "test"]},
            metrics={"loss": Metric(("subset",)), "normalized_loss": Metric(("subset",))}), {})
        cube.begin_probe("landscape", "1", {"steps": 3}, 0, Outputs(
            coords={"subset": ["train"], "alpha": ALPHA},
            metrics={"loss": Metric(("subset", "alpha")), "barrier": Metric(("subset",))}), {})
        cube.begin_probe("weights_spectrum", "1", {"bins": 4}, 0, Outputs(
            coords={"layer": ["a", "b"]}, metrics={"alpha": Metric(("layer",)),
                                                  "spectral_norm": Metric(("layer",))}), {})
        cube.begin_probe("interpolation", "2", {"pairs": 3}, 0, Outputs(
            coords={"kind": ["within", "between"], "lambda": LAMBDA},
            metrics={"cdn": Metric(("kind", "lambda")), "tv": Metric(("kind",))}), {})
        cube.begin_probe("sharpness", "2", {"samples": 8}, 0, Outputs(
            coords={"subset": SHARP_SUBSETS, "volume": [0, 6]},
            metrics={m: Metric(("subset", "volume")) for m in SHARP_METRICS}), {})
        noisy = 0.9 - 0.8 / (1 + np.exp(-(np.arange(N) - 14.5) / 1.5))
        for i, w in enumerate(WIDTHS):
            test = np.interp(np.arange(N), [0, T_E_MIN, t_e_peak(seed, i), N - 1],
                             [0.9, 0.3, 0.7, final_test[i]])
            train = np.linspace(0.9, FINAL_TRAIN[i], N)
            g = np.interp(np.arange(N), [0, 3, t_r_peak(seed, i), N - 1],
                          [-1.0, -2.0, -0.5, -1.0])
            R = g[:, None] * np.arange(K)[None, :]
            rng = np.random.default_rng(seed * 10 + i)
            R_test = R + 0.3 * rng.standard_normal(R.shape)
            top = hessian_curve(seed, i)
            for e in range(stop + 1):
                cube.record("metrics", e, w, {"error": np.array([train[e], noisy[e], test[e]])})
                cube.record("spectrum", e, w, {"R": np.stack([R[e], R_test[e]])})
                cube.record("hessian", e, w, {"eigenvalues": np.array([[top[e]]])})
                raw_train = 1.0 / (1.0 + e)
                cube.record("normalization", e, w, {
                    "loss": np.array([raw_train, 0.4 + 0.1 * rng.standard_normal()]),
                    "normalized_loss": np.array(normalized_loss(seed, i, e))})
                cube.record("weights_spectrum", e, w, {
                    "alpha": np.array([weights_alpha(seed, i, e), np.nan]),
                    "spectral_norm": np.array([1.0 + e, 2.0])})
                cube.record("landscape", e, w, {
                    "loss": np.array([landscape_slice(seed, i) if e == stop
                                      else [np.nan] * len(ALPHA)]),
                    "barrier": np.array([barrier(seed, i, e)])})
                if e == stop:  # interpolation and sharpness at the last epoch only
                    kinds = ("within", "between")
                    cube.record("interpolation", e, w, {
                        "cdn": np.array([[interp_value(seed, i, k, "cdn", b) for b in range(2)]
                                         for k in kinds]),
                        "tv": np.array([interp_value(seed, i, k, "tv") for k in kinds])})
                    cube.record("sharpness", e, w, {m: np.array(
                        [[sharp_value(seed, i, sub, vol, m) for vol in (0, 6)]
                         for sub in SHARP_SUBSETS]) for m in SHARP_METRICS})
        cube.materialize(list(range(N)), WIDTHS)
    return path


@pytest.fixture(scope="module")
def cubes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    out = {}
    for s in (0, 1, 2):
        out[f"s{s}"] = make_cube(root / f"n0.2-s{s}.h5", s)
    out["n01"] = make_cube(root / "n0.1-s0.h5", 0, noise=0.1)
    return out


def three(cubes: dict[str, Path]) -> list[Path]:
    return [cubes["s0"], cubes["s1"], cubes["s2"]]


# ----------------------------------------------------------------------------- aggregation


def test_summarize_and_agreement_by_hand() -> None:
    s = summarize([12, 14, None, 16])
    assert s["n"] == 3 and s["mean"] == 14.0 and s["std"] == pytest.approx(2.0)
    assert (s["min"], s["max"]) == (12.0, 16.0)
    one = summarize([3.0, None])
    assert one["n"] == 1 and one["mean"] == 3.0 and one["std"] is None
    assert summarize([None, None])["mean"] is None
    a = agreement([2, 2, None, 4, 2])
    assert (a["value"], a["count"], a["of"]) == (2, 3, 5)
    assert a["counts"] == {"2": 3, "none": 1, "4": 1}
    tie = agreement([4, 2, None])
    assert tie["value"] == 2  # ties: a width over "none", the smallest width


def test_per_width_mean_and_std_against_hand_computed(cubes: dict[str, Path]) -> None:
    study = load_study([*three(cubes), cubes["n01"]], **SHORT)
    assert study["n_runs"] == 4
    assert [g["noise"] for g in study["groups"]] == ["0.1", "0.2"]
    g = study["groups"][1]
    assert g["seeds"] == [0, 1, 2] and g["widths"] == WIDTHS
    for i, pw in enumerate(g["per_width"]):
        peaks = [t_e_peak(s, i) for s in (0, 1, 2)]
        assert pw["T_E_peak"]["values"] == peaks
        assert pw["T_E_peak"]["mean"] == pytest.approx(statistics.mean(peaks))
        assert pw["T_E_peak"]["std"] == pytest.approx(statistics.stdev(peaks))  # 2.0
        rp = [t_r_peak(s, i) for s in (0, 1, 2)]
        assert pw["T_R_peak"]["mean"] == pytest.approx(statistics.mean(rp))
        assert pw["T_R_peak"]["std"] == pytest.approx(statistics.stdev(rp))
        fin = [FINAL_TEST[s][i] for s in (0, 1, 2)]
        assert pw["final_test_error"]["mean"] == pytest.approx(statistics.mean(fin))
        assert pw["final_test_error"]["std"] == pytest.approx(statistics.stdev(fin))
        assert pw["T_E_min"]["mean"] == T_E_MIN and pw["T_E_min"]["std"] == 0.0
    # one run at noise 0.1: a mean, no spread
    one = study["groups"][0]["per_width"][0]["T_E_peak"]
    assert one["n"] == 1 and one["mean"] == t_e_peak(0, 0) and one["std"] is None


def test_agreement_count_over_seeds(cubes: dict[str, Path]) -> None:
    study = load_study(three(cubes), **SHORT)
    mw = study["groups"][0]["model_wise"]
    a = mw["test_error_peak_width"]
    assert a["values"] == [2, 2, None]
    assert (a["value"], a["count"], a["of"]) == (2, 2, 3)
    thr = mw["interpolation_threshold"]
    assert (thr["value"], thr["count"], thr["of"]) == (2, 3, 3)
    text = format_study(study)
    assert "test error peak at width 2 in 2 of 3 runs" in text
    assert "interpolation threshold at width 2 in 3 of 3 runs" in text


def test_slope_ci_matches_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    x = np.arange(12, dtype=float)
    y = 0.8 * x + 3 + rng.standard_normal(12)
    res = stats.linregress(x, y)
    t = stats.t.ppf(0.975, 10)
    f = slope_ci([*list(x), None], [*list(y), 5.0])  # the None pair is dropped
    assert f["n"] == 12
    assert f["slope"] == pytest.approx(res.slope)
    assert f["intercept"] == pytest.approx(res.intercept)
    assert f["r"] == pytest.approx(res.rvalue)
    assert f["stderr"] == pytest.approx(res.stderr)
    assert f["slope_ci"] == pytest.approx([res.slope - t * res.stderr, res.slope + t * res.stderr])
    # with scipy's own interval machinery
    lo, hi = stats.t.interval(0.95, 10, loc=res.slope, scale=res.stderr)
    assert f["slope_ci"] == pytest.approx([lo, hi])
    assert slope_ci([1, 2], [1, 3])["slope_ci"] is None  # n = 2: a line, no interval
    assert slope_ci([1], [1])["slope"] is None


def test_fit_pools_every_width_of_every_run(cubes: dict[str, Path]) -> None:
    study = load_study(three(cubes), **SHORT)
    xs = [t_e_peak(s, i) for s in (0, 1, 2) for i in range(3)]
    ys = [t_r_peak(s, i) for s in (0, 1, 2) for i in range(3)]
    f = study["fit"]["all"]["T_R_peak_vs_T_E_peak"]
    assert f == slope_ci(xs, ys)
    assert f["n"] == 9 and f["slope_ci"][0] < f["slope"] < f["slope_ci"][1]
    assert "95% CI" in format_study(study)


# ----------------------------------------------------------------------------- bad input


def test_refuses_mixed_architectures_unless_allowed(cubes: dict[str, Path],
                                                     tmp_path: Path) -> None:
    other = make_cube(tmp_path / "resnet.h5", 1, arch="preact_resnet18")
    with pytest.raises(UsageError, match=r"different archs: mcnn .*preact_resnet18"):
        load_study([cubes["s0"], other], **SHORT)
    study = load_study([cubes["s0"], other], allow_mixed=True, **SHORT)
    assert any("--allow-mixed" in n for n in study["notes"])


def test_refuses_different_probe_configs(cubes: dict[str, Path], tmp_path: Path) -> None:
    other = make_cube(tmp_path / "other.h5", 1, spectrum_points=99)
    with pytest.raises(UsageError, match=r"probe 'spectrum' .*points: 50 vs 99"):
        load_study([cubes["s0"], other], **SHORT)


def test_refuses_a_seed_given_twice(cubes: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5"
    shutil.copyfile(cubes["s1"], copy)
    with pytest.raises(UsageError, match=r"seed 1 at label noise 0.2 is given twice"):
        load_study([cubes["s0"], cubes["s1"], copy], **SHORT)
    with pytest.raises(UsageError, match="given twice"):
        load_study([cubes["s0"], cubes["s0"]], **SHORT)
    # the same seed at another noise rate is another run
    load_study([cubes["s0"], cubes["n01"]], **SHORT)


def test_unfinished_cube_is_used_as_far_as_it_goes(cubes: dict[str, Path],
                                                   tmp_path: Path) -> None:
    part = make_cube(tmp_path / "partial.h5", 1, last_epoch=20)
    study = load_study([cubes["s0"], part], **SHORT)
    assert any("incomplete" in n and "using the cells finished so far" in n
               for n in study["notes"])
    row = study["runs"][1]
    assert row["complete"] is False
    assert "partial" in format_study(study)


# ----------------------------------------------------------------------------- CLI


def test_report_cli_several_cubes_json_and_text(cubes: dict[str, Path]) -> None:
    args = ["report", *map(str, three(cubes)), "--patience", "10", "--window", "2"]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    study = json.loads(res.output)
    assert study["format"] == "ckpt-analyzer.study/1" and study["n_runs"] == 3
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "Label noise 0.2: 3 run(s)" in res.output
    res = CliRunner().invoke(main, ["report", str(cubes["s0"]), str(cubes["s0"])])
    assert res.exit_code == 2 and "given twice" in res.output


def test_plot_cli_several_cubes(cubes: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    all4 = [*map(str, three(cubes)), str(cubes["n01"])]
    from ckpt_analyzer.plot import KIND_TABLE, KINDS

    assert all(k.study for k in KIND_TABLE.values())  # every kind has its study figure
    for kind in KINDS:  # every figure kind over several cubes
        out = tmp_path / f"{kind}.png"
        res = CliRunner().invoke(main, ["plot", *all4, "--kind", kind, "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    res = CliRunner().invoke(main, ["plot", *all4, "--kind", "spectrum", "--epochs", "3",
                                    "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--epochs is not yet supported for several cubes" in res.output


def test_band_is_mean_and_std_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "double-descent", PlotOptions())
    ax = fig.axes[0]
    line = ax.get_lines()[0]  # mean final test error against width
    want = [100 * statistics.mean(FINAL_TEST[s][i] for s in (0, 1, 2)) for i in range(3)]
    assert np.allclose(line.get_ydata(), want)
    band = ax.collections[0].get_paths()[0].vertices
    top = 100 * (statistics.mean(FINAL_TEST[s][0] for s in (0, 1, 2))
                 + statistics.stdev(FINAL_TEST[s][0] for s in (0, 1, 2)))
    assert np.isclose(band[:, 1].max(), max(
        100 * (statistics.mean(FINAL_TEST[s][i] for s in (0, 1, 2))
               + statistics.stdev(FINAL_TEST[s][i] for s in (0, 1, 2))) for i in range(3)))
    assert band[:, 1].max() >= top


def test_hessian_band_and_events_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "hessian", PlotOptions())
    a1, a2 = fig.axes[:2]
    final = a1.get_lines()[0]  # mean final top eigenvalue against width
    want = [statistics.mean(FINAL_HESSIAN[i] * (1 + 0.1 * s) for s in (0, 1, 2))
            for i in range(3)]
    assert np.allclose(final.get_xdata(), WIDTHS) and np.allclose(final.get_ydata(), want)
    assert a1.get_yscale() == "log"  # values from 1 (initialization) to 1,440: > 2 decades
    marker = a1.get_lines()[1]  # the agreed model-wise peak
    assert marker.get_xdata()[0] == 2
    curve = a2.get_lines()[0]  # width 4 over epochs, mean over seeds
    mean = np.mean([hessian_curve(s, 2) for s in (0, 1, 2)], axis=0)
    assert np.allclose(curve.get_ydata(), mean)
    # mean T_H,peak of width 4 is one epoch before its mean T_E,peak (seeds 0, 1, 2)
    vlines = sorted(ln.get_xdata()[0] for ln in a2.get_lines()[1:3])
    t_e = statistics.mean(t_e_peak(s, 2) for s in (0, 1, 2))
    assert vlines == pytest.approx([t_e - 1, t_e])


def test_sharpness_band_and_agreed_peak_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "sharpness", PlotOptions())
    axes = fig.axes[:4]  # rows jacobian, hessian; columns clean, noisy
    for ax, (metric, subset) in zip(axes, [("jacobian", "clean"), ("jacobian", "noisy"),
                                           ("hessian", "clean"), ("hessian", "noisy")]):
        largest, at_points, marker = ax.get_lines()[:3]
        for line, vol in ((largest, 6), (at_points, 0)):
            want = [statistics.mean(sharp_value(s, i, subset, vol, metric) for s in (0, 1, 2))
                    for i in range(3)]
            assert np.allclose(line.get_xdata(), WIDTHS)
            assert np.allclose(line.get_ydata(), want), (metric, subset, vol)
        assert marker.get_xdata()[0] == 2  # the agreed peak of the largest volume
        assert marker.get_label().endswith("(3/3 runs)")
    with pytest.raises(UsageError, match="--subset test: not measured in every cube"):
        make_study_figure(study, "sharpness", PlotOptions(subset="test"))


def test_interpolation_bands_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "interpolation", PlotOptions(width=2))
    top_within, top_between, tv_within, tv_between = fig.axes[:4]
    for ax, kind in ((top_within, "within"), (top_between, "between")):
        line = ax.get_lines()[0]  # cdn of width 2 against lambda, mean over seeds
        want = [statistics.mean(interp_value(s, 1, kind, "cdn", b) for s in (0, 1, 2))
                for b in range(2)]
        assert np.allclose(line.get_xdata(), LAMBDA) and np.allclose(line.get_ydata(), want)
    for ax, kind in ((tv_within, "within"), (tv_between, "between")):
        line = ax.get_lines()[0]  # tv against width
        want = [statistics.mean(interp_value(s, i, kind, "tv") for s in (0, 1, 2))
                for i in range(3)]
        assert np.allclose(line.get_xdata(), WIDTHS) and np.allclose(line.get_ydata(), want)


def test_normalization_and_landscape_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "normalization", PlotOptions())
    raw, normalized = fig.axes[:2]
    points = normalized.collections[0].get_offsets()
    assert len(points) == 3 * N * len(WIDTHS)  # every (epoch, width) of every run
    want = sorted(normalized_loss(s, i, e) for s in (0, 1, 2) for i in range(3) for e in range(N))
    assert np.allclose(sorted(map(tuple, np.asarray(points))), want)
    labels = [t.get_text() for t in normalized.get_legend().get_texts()]
    assert any("r = 1.000 ± 0.000 over 3 run(s)" in t for t in labels), labels
    assert any("slope 1.5" in t for t in labels), labels  # the pooled line: exactly 1.5
    assert not any("r = 1.000" in t.get_text() for t in raw.get_legend().get_texts())

    fig = make_study_figure(study, "landscape", PlotOptions())
    slice_ax, barrier_ax = fig.axes[:2]
    line = slice_ax.get_lines()[0]  # the largest width (4): mean slice over seeds
    want = np.mean([landscape_slice(s, 2) for s in (0, 1, 2)], axis=0)
    assert np.allclose(line.get_xdata(), ALPHA) and np.allclose(line.get_ydata(), want)
    curve = barrier_ax.get_lines()[0]
    assert np.allclose(curve.get_ydata(),
                       [np.mean([barrier(s, 2, e) for s in (0, 1, 2)]) for e in range(N)])


def test_weights_spectrum_alpha_over_seeds(cubes: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.figures import make_study_figure

    study = load_study(three(cubes), **SHORT)
    fig = make_study_figure(study, "weights-spectrum", PlotOptions(width=2))
    layer_a, layer_b = fig.axes[:2]
    line = layer_a.get_lines()[0]
    want = [np.mean([weights_alpha(s, 1, e) for s in (0, 1, 2)]) for e in range(N)]
    assert np.allclose(line.get_xdata(), range(N)) and np.allclose(line.get_ydata(), want)
    assert not layer_b.get_lines()  # no fit in any run: said in words, nothing drawn
    assert any("no power-law fit" in t.get_text() for t in layer_b.texts)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "action", "data", "poster") and v is not None:
                self.refs.append((tag, k, v))


def test_html_is_self_contained_and_embeds_every_figure(cubes: dict[str, Path],
                                                        tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", *map(str, three(cubes)), str(cubes["n01"]),
                                    "--patience", "10", "--window", "2", "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    p = _Refs()
    p.feed(page)
    p.close()
    assert p.tags[0] == "html" and "body" in p.tags
    imgs = [v for tag, k, v in p.refs if tag == "img"]
    assert len(imgs) == 5  # double-descent, spectrum, fit, sharpness, hessian: every one
    assert page.count("<figure") == 5
    for v in imgs:
        assert v.startswith("data:image/png;base64,")
        assert base64.b64decode(v.split(",", 1)[1])[:4] == b"\x89PNG"
    # nothing outside the file: no other references, scripts, style sheets or URLs
    assert all(v.startswith("data:") for _, _, v in p.refs)
    assert "script" not in p.tags and "link" not in p.tags
    assert "http://" not in page and "https://" not in page and "@import" not in page
    # provenance and the paper claims with a verdict
    assert "ckpt-analyzer version" in page and "runs/noise0.2-seed1" in page
    assert "/runs/noise0.2-seed1" not in page  # no absolute path of the machine
    assert '"points": 50' in page
    assert page.count("The paper:") == 5
    assert "peaks within one width of the interpolation threshold in 4 of 4 runs" in page
    # the Hessian verdict: peak at width 2 in every run, test error peak in 2 of 3
    assert "Hessian peak at width 2 in 3 of 3 runs, test error peak at width 2 in 2 of 3 " \
           "runs" in page
    assert "test error peak at width 2 in 2 of 3 runs" in format_study(
        load_study(three(cubes), **SHORT))


def test_one_cube_keeps_todays_report(cubes: dict[str, Path], tmp_path: Path) -> None:
    c = tmp_path / "c.h5"
    shutil.copyfile(cubes["s0"], c)
    res = CliRunner().invoke(main, ["report", str(c), "--json", "--patience", "10",
                                    "--window", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["format"] == "ckpt-analyzer.report/1"


# ----------------------------------------------------------------------------- run folders


def test_find_runs(tmp_path: Path) -> None:
    for name in ("noise0.1-seed0", "noise0.1-seed1", ".hidden"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text("{}")
    (tmp_path / "noise0.1-seed0" / "nested").mkdir()
    (tmp_path / "noise0.1-seed0" / "nested" / "run.json").write_text("{}")
    assert find_runs(tmp_path) == [tmp_path / "noise0.1-seed0", tmp_path / "noise0.1-seed1"]
    assert find_runs(tmp_path / "noise0.1-seed1") == [tmp_path / "noise0.1-seed1"]
    assert run_folder_name(0.2, 3) == "noise0.2-seed3"


def test_train_refuses_duplicate_seeds_and_rates(tmp_path: Path) -> None:
    from ckpt_analyzer.train.cli import main as train

    res = CliRunner().invoke(train, [str(tmp_path / "s"), "--seeds", "0,1,0"])
    assert res.exit_code == 2 and "seed 0 is given twice" in res.output
    res = CliRunner().invoke(train, [str(tmp_path / "s"), "--label-noise", "0.1,0.1"])
    assert res.exit_code == 2 and "rate 0.1 is given twice" in res.output
    res = CliRunner().invoke(train, [str(tmp_path / "s"), "--seeds", "0,1", "--seed", "3"])
    assert res.exit_code == 2 and "--seeds" in res.output
    res = CliRunner().invoke(train, [str(tmp_path / "s"), "--label-noise", "0.1,1.5",
                                     "--seeds", "0"])
    assert res.exit_code == 2 and "[0, 1)" in res.output
    assert not (tmp_path / "s").exists()  # checked before anything is trained


def test_train_and_analyze_a_tiny_study(tmp_path: Path) -> None:
    """ckpt-train --seeds 0,1 writes two run folders; ckpt-analyze run ROOT analyzes each."""
    from ckpt_analyzer.train.cli import main as train

    root = tmp_path / "study"
    res = CliRunner().invoke(train, [str(root), "--widths", "1", "--epochs", "2",
                                     "--seeds", "0,1", "--label-noise", "0.2", "--device",
                                     "cpu", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)  # one JSON document for the whole study
    assert sorted(Path(k).name for k in rows) == ["noise0.2-seed0", "noise0.2-seed1"]
    runs = find_runs(root)
    assert [r.name for r in runs] == ["noise0.2-seed0", "noise0.2-seed1"]
    for r, s in zip(runs, (0, 1), strict=True):
        man = json.loads((r / "run.json").read_text())
        assert man["seed"] == s and man["label_noise"]["fraction"] == 0.2
    res = CliRunner().invoke(main, ["run", str(root), "--probe", "metrics", "--device", "cpu",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    cubes = [r / "analysis.h5" for r in runs]
    assert all(c.is_file() for c in cubes)
    res = CliRunner().invoke(main, ["run", str(root), "--probe", "metrics", "-o", "x.h5"])
    assert res.exit_code == 2 and "study root" in res.output
    res = CliRunner().invoke(main, ["report", *map(str, cubes), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["groups"][0]["seeds"] == [0, 1]
    res = CliRunner().invoke(main, ["report", str(root), "--json"])  # the root stands for both
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["provenance"]["cubes"] == list(map(str, cubes))


def test_one_cube_with_html_prints_todays_report_and_writes_the_page(
        cubes: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    c = tmp_path / "c.h5"
    shutil.copyfile(cubes["s0"], c)
    out = tmp_path / "one.html"
    res = CliRunner().invoke(main, ["report", str(c), "--patience", "10", "--window", "2",
                                    "--html", str(out), "--no-store"])
    assert res.exit_code == 0, res.output
    assert "Per width" in res.output  # the single-cube text
    assert out.read_text().count("data:image/png;base64,") == 5


def test_cube_being_written_is_named(cubes: dict[str, Path], tmp_path: Path) -> None:
    c = tmp_path / "busy.h5"
    shutil.copyfile(cubes["s1"], c)
    with Cube(c):  # holds the journal, as a running 'ckpt-analyze run' does
        study = load_study([cubes["s0"], c], **SHORT)
    assert study["runs"][1]["being_written"] is True
    assert any("is still being written" in n for n in study["notes"])
    study = load_study([cubes["s0"], c], **SHORT)  # writer gone
    assert study["runs"][1]["being_written"] is False
