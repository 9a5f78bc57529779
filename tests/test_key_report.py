"""The key-matching report: one line naming the file by default; every missing, unexpected and
mis-shaped key, the prefix and the width that fit with ``run -v`` and ``inspect-checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckpt_analyzer.checkpoints import (
    fitting_widths,
    format_key_report,
    key_report,
    load_state_into,
    read_state_dict,
)
from ckpt_analyzer.cli import main as analyze_main
from ckpt_analyzer.errors import CheckpointError
from ckpt_analyzer.models import build_model


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def w4(digits_run: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(digits_run / "w4" / "e00004.safetensors")


def test_report_lists_every_key(w4: dict[str, torch.Tensor]) -> None:
    model = shapes(build_model("mcnn", 4, 10, 1))
    state = {f"net.{k}": v for k, v in w4.items() if k != "0.bias"}
    state["net.head.extra"] = torch.zeros(3)
    state["net.17.weight"] = torch.zeros(10, 31)
    rep = key_report(state, model, "f.safetensors")
    assert not rep.fits and rep.prefix == ""  # no prefix holds every model key
    assert rep.suggest == "net."  # ... but under net. most keys fit
    rep = key_report(state, model, "f.safetensors", prefix="net")
    assert rep.prefix == "net."
    assert rep.missing == [("0.bias", (4,))]
    assert rep.unexpected == [("head.extra", (3,))]
    assert rep.misshaped == [("17.weight", (10, 31), (10, 32))]
    assert rep.suggest is None
    text = format_key_report(rep)
    assert text.splitlines()[0] == ("f.safetensors: does not fit the model (30 tensor(s) in the "
                                    "file, 30 in the model, prefix 'net.' removed)")
    assert "    0.bias [4]" in text and "    head.extra [3]" in text
    assert "    17.weight [10, 31] vs [10, 32]" in text
    # the model's loading refuses with one line naming the file and the first cause
    with pytest.raises(CheckpointError) as exc:
        load_state_into(build_model("mcnn", 4, 10, 1), state, "f.safetensors", "net")
    assert str(exc.value).startswith("f.safetensors: does not fit the model: missing tensor "
                                     "'0.bias'") and "\n" not in str(exc.value)


def test_report_of_a_fitting_state_and_a_wrapped_model(w4: dict[str, torch.Tensor]) -> None:
    model = shapes(build_model("mcnn", 4, 10, 1))
    assert key_report({f"module.{k}": v for k, v in w4.items()}, model, "x").fits
    wrapped = {f"inner.{k}": s for k, s in model.items()}  # the model wraps the saved module
    rep = key_report(w4, wrapped, "x")
    assert not rep.fits and rep.note is not None and "under 'inner.'" in rep.note


def test_fitting_widths_on_meta(w4: dict[str, torch.Tensor]) -> None:
    assert fitting_widths(w4, "mcnn", 10, 1) == [4]
    rep = key_report(w4, shapes(build_model("mcnn", 2, 10, 1)), "x")
    assert len(rep.misshaped) == 25 and not rep.missing and not rep.unexpected
    w1 = {k: torch.zeros(s) for k, s in shapes(build_model("mcnn", 1, 10, 1)).items()}
    assert fitting_widths(w1, "mcnn", 10, 1, widths=range(2, 9)) == []
    assert fitting_widths(w1, "mcnn", 10, 1) == [1]


@pytest.fixture(scope="module")
def single(w4: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single model's folder (no width in its names): the width-4 weights under 'net.'."""
    out = tmp_path_factory.mktemp("single")
    for e in (1, 2):
        save_file({f"net.{k}": v for k, v in w4.items()}, str(out / f"ck_{e}.safetensors"))
    return out


def test_inspect_checkpoint_command(single: Path) -> None:
    path = str(single / "ck_1.safetensors")
    r = CliRunner().invoke(analyze_main, ["inspect-checkpoint", path])
    assert r.exit_code == 0 and "SafetensorsState, 30 tensor(s)" in r.output
    assert "    net.0.weight [4, 1, 3, 3]" in r.output
    r = CliRunner().invoke(analyze_main, ["inspect-checkpoint", path, "--model", "mcnn",
                                          "--width", "2"])
    assert r.exit_code == 1, r.output
    assert f"{path}: does not fit the model" in r.output
    assert "mis-shaped (file vs model) (25):" in r.output
    assert "the tensors fit width 4: pass --width 4" in r.output
    r = CliRunner().invoke(analyze_main, ["inspect-checkpoint", path, "--model", "mcnn",
                                          "--width", "4", "--prefix", "enc", "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.output)["report"]
    assert rep["suggest_prefix"] == "net." and "prefix 'enc.' matches no key" in rep["note"]
    r = CliRunner().invoke(analyze_main, ["inspect-checkpoint", path, "--model", "mcnn",
                                          "--width", "4"])
    assert r.exit_code == 0 and "fits the model" in r.output and "prefix 'net.' removed" in r.output


def test_run_names_the_file_and_with_v_the_keys(single: Path) -> None:
    args = ["run", str(single), "--probe", "metrics", "--model", "mcnn", "--dataset", "digits",
            "--pattern", "ck_{epoch}.safetensors", "--width", "2", "--quiet"]
    r = CliRunner().invoke(analyze_main, args)
    assert r.exit_code == 1
    first = f"{single / 'ck_1.safetensors'}: does not fit the model: '0.weight' has shape"
    assert first in r.output and "mis-shaped" not in r.output  # one line per file
    r = CliRunner().invoke(analyze_main, [*args, "-v", "--overwrite"])
    assert r.exit_code == 1
    assert "mis-shaped (file vs model) (25):" in r.output
    assert "the tensors fit width 4: pass --width 4" in r.output
