"""The shared test helpers can fail: a crash is not an exit code, one changed bit is a
difference, a foreign folder has no contract metadata."""

from __future__ import annotations

from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from helpers import (
    FOREIGN_PATTERN,
    assert_same_datasets,
    datasets,
    foreign_folder,
    invoke,
    journal_cells,
    one_line,
    write_cube,
)

from ckpt_analyzer.schema import Metric, Outputs


@click.command()
@click.argument("what")
def toy(what: str) -> None:
    if what == "crash":
        raise ValueError("a bug")
    if what == "refuse":
        click.echo("error: refused", err=True)
        raise SystemExit(2)
    click.echo("fine")


def test_invoke_checks_the_exit_code_and_never_passes_a_crash() -> None:
    assert invoke(toy, ["ok"]).stdout == "fine\n"
    assert one_line(invoke(toy, ["refuse"], code=2).stderr) == "error: refused"
    with pytest.raises(AssertionError, match="exit 2, wanted 0"):
        invoke(toy, ["refuse"])
    for code in (1, None):  # a crash exits 1 under CliRunner: still a failure
        with pytest.raises(AssertionError, match="raised ValueError"):
            invoke(toy, ["crash"], code=code)
    with pytest.raises(AssertionError):
        one_line("error: a\nerror: b")


def outputs() -> Outputs:
    return Outputs(coords={"subset": ["train", "test"]}, metrics={"loss": Metric(("subset",))})


def test_write_cube_and_the_comparers(tmp_path: Path) -> None:
    def values(e: int, w: int) -> dict[str, np.ndarray] | None:
        return None if (e, w) == (1, 2) else {"loss": np.array([e + w / 10, np.nan])}

    a = write_cube(tmp_path / "a.h5", [0, 1], [1, 2], {"m": (outputs(), values)})
    assert set(journal_cells(a)) == {("m", 0, 1), ("m", 0, 2), ("m", 1, 1)}
    d = datasets(a, ["m"], floats=True)
    assert set(d) == {"m/loss"} and np.isnan(d["m/loss"][1, 1]).all()
    np.testing.assert_array_equal(d["m/loss"][:, :, 0], [[0.1, 0.2], [1.1, np.nan]])
    b = write_cube(tmp_path / "b.h5", [0, 1], [1, 2], {"m": (outputs(), values)})
    assert "m/loss" in assert_same_datasets(a, b)  # NaN equals NaN
    with h5py.File(b, "r+") as f:
        x = f["m/loss"][()]
        x[0, 0, 0] = np.nextafter(x[0, 0, 0], 1.0)  # one bit
        f["m/loss"][...] = x
    with pytest.raises(AssertionError, match="m/loss"):
        assert_same_datasets(a, b)
    assert_same_datasets(a, b, ["epoch", "width"])  # the other groups are still the same


def test_foreign_folder_is_without_the_contract(digits_run: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from ckpt_analyzer.checkpoints import discover, read_state_dict

    out = foreign_folder(digits_run, tmp_path / "f", [(1, 0), (1, 3)], prefix="module.",
                         source={(1, 3): (4, 2)})
    assert not (out / "run.json").exists()
    refs = discover(out, pattern=FOREIGN_PATTERN)
    assert [(r.width, r.epoch) for r in refs] == [(1, 0), (1, 3)]
    with safe_open(str(out / "w1" / "ckpt_3.safetensors"), "pt") as f:
        assert not (f.metadata() or {}).get("format")
        want = read_state_dict(digits_run / "w4" / "e00002.safetensors")
        assert sorted(f.keys()) == sorted(f"module.{k}" for k in want)
        for k, v in want.items():
            assert f.get_tensor(f"module.{k}").equal(v)
