"""``ckpt-analyze report --layers``: every probe's per-layer values at one width and epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import analyze, measure, write_cube

from ckpt_analyzer.report.layers import format_layer_table, layer_table
from ckpt_analyzer.schema import Metric, Outputs

EPOCHS, WIDTHS = (0, 1, 2), (2, 8)
WS_LAYERS = ("conv1", "conv2", "fc")
NORM_LAYERS = ("conv1", "conv2", "extra.affine", "fc")
HESS_LAYERS = ("conv2", "fc")


def v(probe: int, metric: int, e: int, w: int, layer: int, sub: int = 0) -> float:
    return 1000 * probe + 100 * metric + 10 * e + w + 0.1 * layer + 0.01 * sub


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def ws(e: int, w: int) -> dict[str, np.ndarray]:
        nl = np.arange(3)
        alpha = v(1, 1, e, w, nl)
        alpha[2] = np.nan  # a layer without a fit
        return {"alpha": alpha, "spectral_norm": v(1, 2, e, w, nl), "histogram": np.zeros((3, 20))}

    def norm(e: int, w: int) -> dict[str, np.ndarray] | None:
        if (e, w) == (2, 8):
            return None
        n4 = np.arange(4)
        return {"layer_norm": v(2, 1, e, w, n4), "loss": np.zeros(2),
                "by_subset": np.stack([v(2, 3, e, w, n4, s) for s in (0, 1)])}

    return write_cube(tmp_path_factory.mktemp("layers") / "c.h5", EPOCHS, WIDTHS, {
        "ws": (Outputs(coords={"layer": list(WS_LAYERS), "bin": list(np.linspace(0, 1, 20))},
                       metrics={"alpha": Metric(("layer",)), "spectral_norm": Metric(("layer",)),
                                "histogram": Metric(("layer", "bin"))}), ws),
        "norm": (Outputs(coords={"layer": list(NORM_LAYERS), "subset": ["train", "test"]},
                         metrics={"layer_norm": Metric(("layer",)), "loss": Metric(("subset",)),
                                  "by_subset": Metric(("subset", "layer"))}), norm),
        "hess": (Outputs(coords={"layer": list(HESS_LAYERS)}, metrics={"alpha": Metric(("layer",))}),
                 lambda e, w: {"alpha": v(3, 1, e, w, np.arange(2))}),
    })


def test_table_defaults_merge_layers_and_read_the_right_cells(cube: Path) -> None:
    t = layer_table(cube)
    assert (t["width"], t["epoch"]) == (8, 2)  # largest width, last epoch measured
    assert t["layers"] == ["conv1", "conv2", "extra.affine", "fc"]
    heads = [c["header"] for c in t["columns"]]
    assert heads == ["hess.alpha", "layer_norm", "by_subset[train]", "by_subset[test]",
                     "ws.alpha", "spectral_norm"]  # probes in file order; alpha qualified
    assert any("ws.histogram (bin 20 per layer) is not shown" in n for n in t["notes"])
    assert "norm: width 8 epoch 2 not measured" in t["notes"]
    col = {h: i for i, h in enumerate(heads)}
    for i, layer in enumerate(t["layers"]):
        row, meas = t["values"][i], t["measured"][i]
        assert meas[col["layer_norm"]] is False and row[col["layer_norm"]] is None
        if layer in WS_LAYERS:
            k = WS_LAYERS.index(layer)
            assert row[col["spectral_norm"]] == pytest.approx(v(1, 2, 2, 8, k))
            assert meas[col["ws.alpha"]]
            assert row[col["ws.alpha"]] == (None if k == 2 else pytest.approx(v(1, 1, 2, 8, k)))
        else:
            assert not meas[col["spectral_norm"]] and row[col["spectral_norm"]] is None
        if layer in HESS_LAYERS:
            assert row[col["hess.alpha"]] == pytest.approx(v(3, 1, 2, 8, HESS_LAYERS.index(layer)))
    text = format_layer_table(t)
    fc = next(line for line in text.splitlines() if " fc " in line)
    assert fc.split() == ["3", "fc", f"{v(3, 1, 2, 8, 1):.4g}", "-", "-", "-", "nan",
                          f"{v(1, 2, 2, 8, 2):.4g}"]


def test_table_at_a_chosen_width_and_epoch(cube: Path) -> None:
    t = layer_table(cube, width=2, epoch=1)
    heads = [c["header"] for c in t["columns"]]
    i = t["layers"].index("extra.affine")
    assert t["values"][i][heads.index("by_subset[test]")] == pytest.approx(v(2, 3, 1, 2, 2, 1))
    assert t["values"][i][heads.index("layer_norm")] == pytest.approx(v(2, 1, 1, 2, 2))
    assert t["notes"] == ["ws.histogram (bin 20 per layer) is not shown; it is in "
                          "to_dataframe / --to csv"]


def test_layers_as_a_dataframe(cube: Path) -> None:
    pytest.importorskip("pandas")
    import ckpt_analyzer

    df = ckpt_analyzer.to_dataframe(str(cube), layers=True, width=2, epoch=0)
    assert list(df.index) == ["conv1", "conv2", "extra.affine", "fc"]
    assert df.loc["conv2", "ws/spectral_norm"] == pytest.approx(v(1, 2, 0, 2, 1))
    assert np.isnan(df.loc["extra.affine", "ws/spectral_norm"])
    assert df.attrs["width"] == 2 and df.attrs["epoch"] == 0
    tidy = ckpt_analyzer.to_dataframe(str(cube), probe="hess")  # the tidy table has them too
    row = tidy[(tidy.width == 2) & (tidy.epoch == 0) & (tidy.layer == "fc")]
    assert row["value"].tolist() == [pytest.approx(v(3, 1, 0, 2, 1))]


def test_report_layers_cli(cube: Path, tmp_path: Path) -> None:
    res = analyze("report", cube, "--layers", "--width", "2")
    assert res.output.startswith(f"{cube}: per-layer values at width 2, epoch 2")
    assert "extra.affine" in res.output
    res = analyze("report", cube, "--layers", "--json")
    assert json.loads(res.output)["layers"] == ["conv1", "conv2", "extra.affine", "fc"]
    other = write_cube(tmp_path / "m.h5", [0], [1], {"metrics": (
        Outputs(coords={}, metrics={"loss": Metric(())}), lambda e, w: {"loss": 1.0})}, root={})
    cases = [
        (["--layers", "--width", "3"], 2,
         f"error: {cube}: no width 3 in this cube (it has 2, 8)"),
        (["--layers", "--epoch", "7"], 2, f"error: {cube}: no epoch 7 in this cube (it has 0, 1, 2)"),
        (["--layers", "--html", "x.html"], 2, "error: --html: not with --layers"),
        (["--width", "2"], 2, "error: --width: only with --layers"),
        (["--layers", str(cube)], 2, "error: --layers: takes one cube (2 given)"),
    ]
    for args, code, line in cases:
        res = analyze("report", cube, *args, code=code)
        assert res.output.strip().splitlines() == [line]
    res = analyze("report", other, "--layers", code=2)
    assert res.output.startswith(f"error: {other}: no probe with per-layer values")


# -- a real cube: the trained digits run through the per-layer probes


@pytest.fixture(scope="module")
def real_cube(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny layers: alpha NaN by design (tested elsewhere)
    return measure(digits_run, tmp_path_factory.mktemp("layers_real"),
                   ["metrics", "normalization", "weights_spectrum"],
                   {"weights_spectrum.min_evals": 10}, quiet_warnings=["weights_spectrum: width"])


def test_real_cube_layer_table_and_tensorboard_export(real_cube: Path, tmp_path: Path) -> None:
    from ckpt_analyzer.cube.read import load_probe

    res = analyze("report", real_cube, "--layers")
    ws = load_probe(real_cube, "weights_spectrum")
    norm = load_probe(real_cube, "normalization")
    assert ws is not None and norm is not None
    t = layer_table(real_cube)
    assert (t["width"], t["epoch"]) == (4, 4)
    assert set(ws.coords["layer"]) <= set(t["layers"]) and set(norm.coords["layer"]) <= set(t["layers"])
    heads = [c["header"] for c in t["columns"]]
    sn = ws.get("spectral_norm")
    assert sn is not None
    j = ws.column(4)
    for k, name in enumerate(ws.coords["layer"]):
        row = t["values"][t["layers"].index(name)]
        assert row[heads.index("spectral_norm")] == pytest.approx(float(sn[-1, j, k]))
        line = next(x.split() for x in res.output.splitlines()
                    if len(x.split()) > 2 and x.split()[1] == name)  # module names as rows
        assert line[heads.index("spectral_norm") + 2] == f"{float(sn[-1, j, k]):.4g}"
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    analyze("export", real_cube, "--to", "tensorboard", out)
    acc = EventAccumulator(str(out / "run" / "w4"), size_guidance={"scalars": 0})
    acc.Reload()
    ev = acc.Scalars("metrics/error/test")
    err = load_probe(real_cube, "metrics").get("error", subset="test")  # type: ignore[union-attr]
    assert [x.step for x in ev] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([x.value for x in ev], err[:, j], rtol=1e-6)
    name = ws.coords["layer"][-1]
    assert f"weights_spectrum/spectral_norm/{name}" in acc.Tags()["scalars"]


