"""A foreign run's own preprocessing: --normalize mean,std | none | dataset, recorded in the cube,
and the one-line warning when the checkpoint's recorded test error says it does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckpt_analyzer.checkpoints import load_state_into, read_run_json, read_state_dict
from ckpt_analyzer.cli import main as analyze_main
from ckpt_analyzer.data import load_dataset
from ckpt_analyzer.data.preprocessing import Normalize, parse_normalize, recorded_error
from ckpt_analyzer.errors import UsageError
from ckpt_analyzer.models import build_model

M = ["--probe", "metrics", "--model", "mcnn", "--width", "4", "--dataset", "digits",
     "--pattern", "e{epoch}.safetensors", "--quiet"]


@pytest.fixture(scope="module")
def foreign(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The width-4 checkpoints of epochs 2 and 4 without run.json: a foreign folder whose
    files record their test error (metadata test_error)."""
    out = tmp_path_factory.mktemp("foreign") / "run"
    out.mkdir()
    for e in (2, 4):
        shutil.copy(digits_run / "w4" / f"e{e:05d}.safetensors", out / f"e{e}.safetensors")
    return out


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(analyze_main, list(args))
    return r.exit_code, r.output


def test_errors(cube: Path) -> tuple[np.ndarray, dict[str, object]]:
    with h5py.File(cube, "r") as f:
        subsets = [s.decode() if isinstance(s, bytes) else s for s in f["metrics/subset"][()]]
        return np.asarray(f["metrics/error"][()][:, 0, subsets.index("test")]), dict(f.attrs)


test_errors.__test__ = False  # type: ignore[attr-defined]


def reference_error(path: Path, mean: float, std: float) -> float:
    """The slow obvious reference: the digits test images (the analyzer's own split of a
    foreign folder) as (x - mean) / std, one forward pass."""
    data = load_dataset("digits")
    model = build_model("mcnn", 4, 10, 1)
    load_state_into(model, read_state_dict(path), path)
    with torch.no_grad():
        out = model.eval()((data.x_test - mean) / std)
    return float((out.argmax(1) != data.y_test).float().mean())


def test_parse() -> None:
    assert parse_normalize(None) is None
    assert parse_normalize("none") == Normalize("none")
    assert parse_normalize("0.5,0.25") == Normalize("values", (0.5,), (0.25,))
    assert parse_normalize("1,2,3,4,5,6").resolve((0, 0, 0), (1, 1, 1)) == ((1, 2, 3), (4, 5, 6))
    assert Normalize("none").resolve((0.3,), (0.2,)) == ((0.0,), (1.0,))
    for bad, why in (("x", "is not dataset, none"), ("1,2,3", "even number"),
                     ("0.5,0", "must be positive"), ("nan,1", "finite")):
        with pytest.raises(UsageError, match=why):
            parse_normalize(bad)
    with pytest.raises(UsageError, match="give 1 or 3"):
        parse_normalize("1,2,3,4").resolve((0, 0, 0), (1, 1, 1))  # type: ignore[union-attr]
    assert recorded_error({"test_error": "0.25"}) == ("test_error", 0.25)
    assert recorded_error({"test_acc": 91.0}) == ("test_acc", pytest.approx(0.09))
    assert recorded_error({"epoch": 3}) is None


def test_normalize_is_applied_recorded_and_checked(foreign: Path, digits_run: Path) -> None:
    stats = load_dataset("digits")
    mean, std = stats.mean[0], stats.std[0]
    # the default (the dataset's statistics): the trainer's preprocessing, no warning
    code, out = run("run", str(foreign), *M)
    assert code == 0 and "preprocessing may not" not in out
    default, attrs = test_errors(foreign / "analysis.h5")
    rec = json.loads(str(attrs["normalize"]))
    assert rec == {"normalize": "dataset", "mean": [pytest.approx(mean)],
                   "std": [pytest.approx(std)]}
    assert default[-1] == pytest.approx(reference_error(foreign / "e4.safetensors", mean, std),
                                        abs=1e-6)
    # the same numbers stated: the same errors
    code, _ = run("run", str(foreign), *M, "-o", str(foreign / "b.h5"), "--normalize",
                  f"{mean!r},{std!r}")
    assert code == 0
    assert np.array_equal(test_errors(foreign / "b.h5")[0], default)
    # none: the pixels as they are, which these checkpoints were not trained on: one warning
    code, out = run("run", str(foreign), *M, "-o", str(foreign / "c.h5"), "--normalize", "none")
    assert code == 0
    warn = [ln for ln in out.splitlines() if "preprocessing may not" in ln]
    assert len(warn) == 1 and warn[0].startswith(f"warning: {foreign / 'e4.safetensors'} "
                                                 "(test_error in its metadata): test error ")
    assert "with --normalize none" in warn[0] and "with --normalize dataset" in warn[0]
    none, attrs = test_errors(foreign / "c.h5")
    assert "  preprocessing none (mean [0.0], std [1.0])" in run("inspect", str(foreign / "c.h5"))[1]
    assert json.loads(str(attrs["normalize"]))["normalize"] == "none"
    assert none[-1] == pytest.approx(reference_error(foreign / "e4.safetensors", 0.0, 1.0),
                                     abs=1e-6)
    assert none[-1] != default[-1]
    # the same cube with another preprocessing: refused, then started afresh with --overwrite
    code, out = run("run", str(foreign), *M, "--normalize", "none")
    assert code == 2 and "measured with another preprocessing dataset -> none" in out
    code, _ = run("run", str(foreign), *M, "--normalize", "none", "--overwrite")
    assert code == 0 and np.array_equal(test_errors(foreign / "analysis.h5")[0], none)


def test_run_json_states_the_preprocessing(digits_run: Path, tmp_path: Path) -> None:
    assert read_run_json(digits_run) is not None
    code, out = run("run", str(digits_run), "--probe", "metrics", "-o", str(tmp_path / "x.h5"),
                    "--normalize", "none", "--quiet")
    assert code == 2 and "states the preprocessing of this run" in out
    code, out = run("run", str(digits_run), "--probe", "metrics", "--normalize", "0,0")
    assert code == 2 and "must be positive" in out
