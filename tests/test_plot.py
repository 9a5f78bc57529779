"""ckpt_analyzer.plot: every kind rendered from a small real cube, the plotted data, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")

from ckpt_analyzer.cli import main
from ckpt_analyzer.cube import Cube, open_cube
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.plot import KINDS, PlotOptions, make_figure, plot
from ckpt_analyzer.probes.base import Metric, Outputs

PROBES = ("metrics", "spectrum", "sharpness", "interpolation", "normalization", "hessian",
          "landscape", "weights_spectrum")
MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<svg"}


@pytest.fixture(scope="module")
def real_cube(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every built-in probe on the shared digits run (widths 1 and 4), small settings."""
    run_dir = tmp_path_factory.mktemp("plot") / "run"
    shutil.copytree(digits_run, run_dir)
    out = run_dir.parent / "cube.h5"
    args = ["run", str(run_dir), "-o", str(out), "--device", "cpu", "--quiet"]
    for p in PROBES:
        args += ["--probe", p]
    args += ["--set", "spectrum.points=20", "--set", "spectrum.n=16",
             "--set", "sharpness.samples=32", "--set", "sharpness.paths=2",
             "--set", "interpolation.pairs=3",
             "--set", "hessian.points=32", "--set", "hessian.iterations=6",
             "--set", "hessian.trace_samples=4", "--set", "landscape.points=32",
             "--set", "landscape.steps=5", "--set", "landscape.barrier_steps=3",
             "--set", "weights_spectrum.min_evals=10"]
    with warnings.catch_warnings():  # tiny layers: alpha NaN by design (tested elsewhere)
        warnings.filterwarnings("ignore", message="weights_spectrum: width")
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def metrics_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plot_m") / "m.h5"
    with Cube(path) as cube:
        cube.set_root({"source": "/runs/x"})
        cube.begin_probe("metrics", "1", {}, 0, Outputs(
            coords={"subset": ["train", "test"]},
            metrics={"error": Metric(("subset",)), "loss": Metric(("subset",))}), {})
        for e in range(3):
            for w in (1, 2):
                v = np.array([0.5 / (e + 1), 0.6 / (e + w)])
                cube.record("metrics", e, w, {"error": v, "loss": 2 * v})
        cube.materialize()
    return path


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders(real_cube: Path, tmp_path: Path, kind: str, fmt: str) -> None:
    out = plot(real_cube, kind, tmp_path / "sub" / f"fig.{fmt}")
    assert out == tmp_path / "sub" / f"fig.{fmt}"
    data = out.read_bytes()
    assert len(data) > 10_000, len(data)
    assert MAGIC[fmt] in data[:400]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left


def test_spectrum_heat_map_is_the_cube(real_cube: Path) -> None:
    from matplotlib.collections import QuadMesh

    fig = make_figure(real_cube, "spectrum", PlotOptions(width=1, epochs=(1, 2, 3, 4)))
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and "epoch" in ax.get_xlabel()
    assert "frequency" in ax.get_ylabel()
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    R = open_cube(real_cube, "spectrum")["R"].sel(width=1, subset="train",
                                                  epoch=[1, 2, 3, 4]).values
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(R.shape[1] - 1, -1),
                               R[:, 1:].T)
    twin = [a for a in fig.axes if a is not ax and a.get_ylabel() == "error (%)"]
    assert len(twin) == 1
    m = open_cube(real_cube, "metrics")
    test = m["error"].sel(width=1, subset="test", epoch=[1, 2, 3, 4]).values
    ys = [line.get_ydata() for line in twin[0].get_lines()]
    assert any(np.allclose(y, 100 * test) for y in ys)
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    assert "width 1" in ax.get_title(loc="left")


def test_double_descent_heat_map_is_the_test_error(real_cube: Path) -> None:
    from matplotlib.collections import QuadMesh

    fig = make_figure(real_cube, "double-descent")
    heat = fig.axes[2]
    assert heat.get_yscale() == "symlog"
    mesh = next(c for c in heat.collections if isinstance(c, QuadMesh))
    test = open_cube(real_cube, "metrics")["error"].sel(subset="test").values
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(test.shape), 100 * test)


def test_sharpness_at_a_chosen_epoch(real_cube: Path) -> None:
    fig = make_figure(real_cube, "sharpness", PlotOptions(epochs=(2,), subset="noisy"))
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 4  # one row (noisy), four metrics
    jac = open_cube(real_cube, "sharpness")["jacobian"].sel(epoch=2, subset="noisy").values
    ax = next(a for a in panels if "jacobian" in a.get_title())
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), jac[:, 0])  # volume 0, over widths
    np.testing.assert_allclose(lines[-1].get_ydata(), jac[:, -1])
    assert "epoch 2" in fig.get_suptitle()


def test_interpolation_per_width_at_one_epoch(real_cube: Path) -> None:
    fig = make_figure(real_cube, "interpolation", PlotOptions(epochs=(4,)))
    assert "one line per width, epoch 4" in fig.get_suptitle()
    fig = make_figure(real_cube, "interpolation", PlotOptions(width=4, epochs=(0, 1, 2, 3, 4)))
    assert "width 4, one line per epoch" in fig.get_suptitle()


def test_normalization_fit_is_least_squares(real_cube: Path) -> None:
    fig = make_figure(real_cube, "normalization")
    ax = fig.axes[1]
    ds = open_cube(real_cube, "normalization")
    x = ds["normalized_loss"].sel(subset="train").values.T.ravel()
    y = ds["normalized_loss"].sel(subset="test").values.T.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    slope = np.polyfit(x[ok], y[ok], 1)[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(f"slope {slope:.3g}" in lab for lab in labels), labels
    assert "cross-entropy (nats)" in ax.get_xlabel()


def test_unknown_kind_and_format(real_cube: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'double-descent'"):
        make_figure(real_cube, "double_descent")
    with pytest.raises(UsageError, match="unsupported format '.jpg'"):
        plot(real_cube, "spectrum", tmp_path / "f.jpg")


def test_missing_probe_names_cube_probe_and_command(metrics_only: Path) -> None:
    for kind, probe in (("spectrum", "spectrum"), ("sharpness", "sharpness"),
                        ("interpolation", "interpolation"), ("normalization", "normalization"),
                        ("hessian", "hessian"), ("landscape", "landscape"),
                        ("weights-spectrum", "weights_spectrum")):
        with pytest.raises(CkptError) as exc:
            make_figure(metrics_only, kind)
        msg = str(exc.value)
        assert "\n" not in msg and f"needed by --kind {kind}" in msg
        assert str(metrics_only) in msg and f"no '{probe}' probe" in msg
        assert f"ckpt-analyze run /runs/x --probe {probe} -o {metrics_only}" in msg
    # metrics alone is enough for double descent; without noisy/sharpness it still draws
    make_figure(metrics_only, "double-descent")


@pytest.mark.parametrize(("kind", "opts", "msg"), [
    ("spectrum", PlotOptions(width=3), "--width 3: not in this cube"),
    ("spectrum", PlotOptions(subset="noisy"), "was not measured on it"),
    ("double-descent", PlotOptions(epochs=(50, 60)), "no checkpoint in 50..60"),
    ("sharpness", PlotOptions(subset="trian"), "did you mean 'train'"),
    ("sharpness", PlotOptions(width=4), "--width does not apply"),
    ("interpolation", PlotOptions(subset="train"), "--subset does not apply"),
    ("interpolation", PlotOptions(width=4, epochs=(7,)), "no checkpoint in 7..7"),
    ("hessian", PlotOptions(subset="clean"), "was not measured on it"),
    ("hessian", PlotOptions(width=3), "--width 3: not in this cube"),
    ("landscape", PlotOptions(width=3), "--width 3: not in this cube"),
    ("weights-spectrum", PlotOptions(subset="train"), "--subset does not apply"),
])
def test_bad_options(real_cube: Path, kind: str, opts: PlotOptions, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        make_figure(real_cube, kind, opts)


def test_matplotlib_missing(real_cube: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(CkptError, match=r"matplotlib is not installed: pip install "
                                        r"'ckpt-analyzer\[plot\]'"):
        make_figure(real_cube, "spectrum")


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_cli_plot(real_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "dd.svg"
    res = run("plot", str(real_cube), "--kind", "double-descent", "-o", str(out),
              "--epochs", "1:4", "--width", "4", "--subset", "train")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out) and out.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "code", "msg"), [
    (["--kind", "spectra", "-o", "x.png"], 2, "did you mean 'spectrum'"),
    (["--kind", "spectrum", "-o", "x.gif"], 2, "unsupported format"),
    (["--kind", "spectrum", "-o", "x.png", "--epochs", "a:b"], 2, "--epochs"),
    (["--kind", "spectrum", "-o", "x.png", "--width", "0"], 2, "--width"),
    (["-o", "x.png"], 2, "--kind"),
])
def test_cli_bad_input(real_cube: Path, tmp_path: Path, args: list[str], code: int,
                       msg: str) -> None:
    args = [a if a not in ("x.png", "x.gif") else str(tmp_path / a) for a in args]
    res = run("plot", str(real_cube), *args)
    assert res.exit_code == code, res.output
    assert msg in res.output


def test_cli_missing_probe(metrics_only: Path, tmp_path: Path) -> None:
    res = run("plot", str(metrics_only), "--kind", "spectrum", "-o", str(tmp_path / "s.png"))
    assert res.exit_code == 1
    assert "no 'spectrum' probe" in res.output and "ckpt-analyze run" in res.output


def test_cli_help_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ckpt_analyzer.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0\n"
            "for c in ('plot', 'report'):\n"
            "    assert CliRunner().invoke(main, [c, '--help']).exit_code == 0\n"
            "print(__import__('json').dumps(sorted(m for m in ('torch', 'h5py', 'matplotlib')"
            " if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(res.stdout) == []


# ----------------------------------------------------------------------------- peer probes

PEER_EPOCHS = range(6)
PEER_WIDTHS = (1, 2, 4)
LAYERS = ["conv1", "conv2", "fc"]


def top_eig(e: int, w: int) -> float:
    return (1 + w) * (1 + e) ** 0.5


@pytest.fixture(scope="module")
def peer_cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic metrics, hessian, 2-D landscape and weights_spectrum cells (known values)."""
    path = tmp_path_factory.mktemp("plot_peer") / "peer.h5"
    grid = [-1.0, -0.5, 0.0, 0.5, 1.0]
    sub2 = ["train", "test"]
    with Cube(path) as cube:
        cube.set_root({"source": "/runs/p"})
        cube.begin_probe("metrics", "1", {}, 0, Outputs(
            coords={"subset": sub2}, metrics={"error": Metric(("subset",))}), {})
        cube.begin_probe("hessian", "1", {}, 0, Outputs(
            coords={"subset": sub2, "k": [0, 1]},
            metrics={"eigenvalues": Metric(("subset", "k")), "trace": Metric(("subset",)),
                     "trace_stderr": Metric(("subset",))}), {})
        cube.begin_probe("landscape", "1", {}, 0, Outputs(
            coords={"subset": sub2, "alpha": grid, "beta": grid},
            metrics={"loss": Metric(("subset", "alpha", "beta")),
                     "barrier": Metric(("subset",))}), {})
        cube.begin_probe("weights_spectrum", "1", {"min_evals": 50}, 0, Outputs(
            coords={"layer": LAYERS},
            metrics={m: Metric(("layer",)) for m in ("alpha", "spectral_norm", "stable_rank",
                                                     "num_evals")}), {})
        a = np.array(grid)
        bowl = a[:, None] ** 2 + 2 * a[None, :] ** 2
        for e in PEER_EPOCHS:
            for w in PEER_WIDTHS:
                lam = top_eig(e, w)
                cube.record("metrics", e, w, {"error": np.array([0.5 / (e + 1), 0.6 / (e + w)])})
                cube.record("hessian", e, w, {
                    "eigenvalues": np.array([[lam, lam / 2], [2 * lam, lam]]),
                    "trace": np.array([3 * lam, 4 * lam]), "trace_stderr": np.array([0.1, 0.2])})
                cube.record("landscape", e, w, {
                    "loss": np.stack([0.1 + (1 + e) * bowl, 0.2 + (1 + e) * bowl]),
                    "barrier": np.array([0.5 / (e + 1), 0.4 / (e + 1)])})
                cube.record("weights_spectrum", e, w, {
                    "alpha": np.array([np.nan, 3.0 + 0.1 * e, 4.0 - 0.1 * w]),
                    "spectral_norm": np.array([1.0, 2.0, 3.0]) * (1 + e),
                    "stable_rank": np.array([1.0, 5.0, 9.0]) + w,
                    "num_evals": np.array([9.0, 64.0, 10.0 * w + 60])})
        cube.materialize()
    return path


@pytest.mark.parametrize("kind", ["hessian", "landscape", "weights-spectrum"])
def test_peer_kinds_render_from_a_synthetic_cube(peer_cube: Path, tmp_path: Path,
                                                 kind: str) -> None:
    out = plot(peer_cube, kind, tmp_path / f"{kind}.png")
    assert out.stat().st_size > 10_000


def test_hessian_lines_are_the_cube(peer_cube: Path) -> None:
    fig = make_figure(peer_cube, "hessian")
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 3  # eigenvalue, trace, test error (metrics probe present)
    eig, tr, err = panels
    assert eig.get_xscale() == "symlog" and "train subset" in eig.get_title()
    for line, w in zip(eig.get_lines(), PEER_WIDTHS, strict=True):
        np.testing.assert_allclose(line.get_ydata(), [top_eig(e, w) for e in PEER_EPOCHS])
    np.testing.assert_allclose(tr.get_lines()[0].get_ydata(),
                               [3 * top_eig(e, 1) for e in PEER_EPOCHS])
    assert len(tr.collections) == 3  # one +- stderr band per width
    np.testing.assert_allclose(err.get_lines()[1].get_ydata(),
                               [100 * 0.6 / (e + 2) for e in PEER_EPOCHS])
    # --subset test, one width, chosen epochs
    fig = make_figure(peer_cube, "hessian", PlotOptions(subset="test", width=2, epochs=(1, 2)))
    line, = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), [2 * top_eig(1, 2), 2 * top_eig(2, 2)])


def test_hessian_without_metrics_has_two_panels(real_cube: Path, tmp_path: Path) -> None:
    import h5py

    cube = tmp_path / "h.h5"
    shutil.copy(real_cube, cube)
    with h5py.File(cube, "a") as f:
        del f["metrics"]
    fig = make_figure(cube, "hessian")
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    # eigenvalue, trace and (the real cube has the default density) the density panel
    assert len(panels) == 3 and "eigenvalue density" in panels[2].get_title()
    assert "no metrics probe" in fig.get_suptitle()
    for line in panels[2].get_lines():  # each width's density integrates to one on its grid
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata()) - 1e-7
        assert float(y.sum() * (x[1] - x[0])) == pytest.approx(1.0, abs=1e-5)
    assert len(panels[2].get_lines()) >= 1


def test_landscape_slices_and_contours(peer_cube: Path) -> None:
    fig = make_figure(peer_cube, "landscape")  # width 4 (largest), train, contour at epoch 5
    slices = next(a for a in fig.axes if "loss slices" in a.get_title())
    assert "width 4" in slices.get_title() and "beta = 0" in slices.get_title()
    ys = [line.get_ydata() for line in slices.get_lines() if len(line.get_ydata()) == 5]
    a = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(ys[-1], 0.1 + 6 * a**2)  # epoch 5 on the beta = 0 row
    barrier = next(a for a in fig.axes if "barrier" in a.get_title())
    np.testing.assert_allclose(barrier.get_lines()[0].get_ydata(),
                               [0.5 / (e + 1) for e in PEER_EPOCHS])
    contours = [a for a in fig.axes if "2-D loss surface" in a.get_title()]
    assert len(contours) == 1 and contours[0].get_title().startswith("(c) epoch 5:")
    fig = make_figure(peer_cube, "landscape", PlotOptions(epochs=(0, 1, 2, 3, 4, 5), width=1,
                                                          subset="test"))
    titles = [a.get_title() for a in fig.axes if a.get_title().startswith("epoch ")]
    assert titles == ["epoch 0", "epoch 2", "epoch 3", "epoch 5"]  # at most four, evenly picked


def test_landscape_reads_one_width_of_its_surfaces(peer_cube: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2-D surfaces are the cube's bulk (4 GB at 100k cells): the figure reads one width's
    column of ``loss``, and picks the largest width with a finite surface, as before."""
    import ckpt_analyzer.plot._common as common

    calls: list[tuple[Any, Any]] = []
    real = common.load_probe
    monkeypatch.setattr(common, "load_probe", lambda path, probe, metrics=None, width=None: (
        calls.append((tuple(metrics or ()), width)), real(path, probe, metrics, width))[1])
    make_figure(peer_cube, "landscape")
    assert calls == [(("barrier",), None), (("loss",), 4)]
    calls.clear()
    make_figure(peer_cube, "landscape", PlotOptions(width=1))
    assert calls == [(("barrier",), None), (("loss",), 1)]
    calls.clear()
    cube = shutil.copy(peer_cube, tmp_path / "c.h5")
    with h5py.File(cube, "r+") as f:  # width 4's surfaces all NaN though done: width 2
        f["landscape/loss"][:, -1] = np.nan
    fig = make_figure(cube, "landscape")
    assert calls == [(("barrier",), None), (("loss",), 4), (("loss",), 2)]
    assert "width 2" in next(a for a in fig.axes if "loss slices" in a.get_title()).get_title()


def test_weights_spectrum_omits_unfitted_layers(peer_cube: Path) -> None:
    fig = make_figure(peer_cube, "weights-spectrum", PlotOptions(width=2))
    alpha = fig.axes[0]
    assert "omitted" in alpha.get_title() and "conv1" in alpha.get_title()
    lines = alpha.get_lines()
    assert len(lines) == 2  # conv2 and fc; conv1 has no fit
    np.testing.assert_allclose(lines[0].get_ydata(), [3.0 + 0.1 * e for e in PEER_EPOCHS])
    np.testing.assert_allclose(fig.axes[2].get_lines()[2].get_ydata(), [11.0] * 6)
    assert "width 2" in fig.get_suptitle()


def test_cli_plot_help_lists_every_kind() -> None:
    res = run("plot", "--help")
    assert res.exit_code == 0
    for kind in KINDS:
        assert kind in res.output
    assert "weights_spectrum probe" in res.output


def test_one_table_of_kinds_for_one_cube_and_several(monkeypatch: pytest.MonkeyPatch) -> None:
    """plot.KIND_TABLE names each kind's probe, single-run drawer and study drawer; both the
    single-cube and the several-cube paths read it, with one unknown-kind line."""
    import ckpt_analyzer.plot as plot_pkg
    from ckpt_analyzer.study import figures

    for name, spec in plot_pkg.KIND_TABLE.items():
        assert callable(spec.draw), name
        if spec.study is not None:
            fn = figures.study_drawer(name)
            assert callable(fn) and fn.__name__ == spec.study.rpartition(".")[2], name
    for check in (lambda k: plot_pkg.kind_spec(k), lambda k: figures.check_kind(k),
                  lambda k: figures.study_drawer(k)):
        with pytest.raises(UsageError) as err:
            check("weight-spectrum")
        assert str(err.value) == "unknown plot kind 'weight-spectrum' (did you mean 'weights-spectrum'?)"
    one_cube = plot_pkg.KIND_TABLE["landscape"]._replace(study=None)
    monkeypatch.setitem(plot_pkg.KIND_TABLE, "landscape", one_cube)
    assert plot_pkg.kind_spec("landscape") is one_cube
    with pytest.raises(UsageError, match=r"^--kind landscape draws one cube, not several "
                                         r"\(over several cubes: spectrum, double-descent, "):
        figures.check_kind("landscape")
    assert "landscape probe; one cube only)" in plot_pkg.kinds_help()
