"""Plugins cannot break the run or each other: failures are per probe and per cell."""

from __future__ import annotations

import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import analyze, copy_run, failures

PLUGIN = textwrap.dedent('''
    import sys

    import numpy as np
    import torch

    from ckpt_analyzer.probes.base import Metric, Outputs, Probe

    class _Base(Probe):
        def outputs(self):
            return Outputs(metrics={"value": Metric(())})

        def __call__(self, model, ctx):
            return {"value": np.float64(ctx.checkpoint.epoch)}

    class Raises(_Base):
        name = "iso_raises"

        def __call__(self, model, ctx):
            if ctx.checkpoint.epoch == 2:
                raise RuntimeError("boom at epoch 2")
            return super().__call__(model, ctx)

    class PrepareRaises(_Base):
        name = "iso_prepare"

        def prepare(self, ctx):
            raise KeyError("no such input")

    class Exits(_Base):
        name = "iso_exits"

        def __call__(self, model, ctx):
            sys.exit(0)

    class WrongShape(_Base):
        name = "iso_shape"

        def __call__(self, model, ctx):
            return {"value": np.zeros(3)}

    class Undeclared(_Base):
        name = "iso_undeclared"

        def __call__(self, model, ctx):
            return {"value": 1.0, "extra": 2.0}

    class Mutates(_Base):
        name = "iso_mutates"

        def __call__(self, model, ctx):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)
            model.train()  # and leaves it in training mode
            return super().__call__(model, ctx)

    class BadBuffers(_Base):
        name = "iso_buffers"

        def __call__(self, model, ctx):
            model.train()
            with torch.no_grad():
                model(ctx.data.x_train[:64])  # updates batch-norm running statistics
            return super().__call__(model, ctx)
''')


@pytest.fixture(scope="module")
def setup(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(run copy, plugin file, metrics/loss of a clean metrics-only cube)."""
    root = tmp_path_factory.mktemp("iso")
    plugin = root / "iso_plugin.py"
    plugin.write_text(PLUGIN)
    run = copy_run(digits_run, root / "run")
    analyze("run", run, "--probe", "metrics", "--quiet", "-o", root / "clean.h5")
    with h5py.File(root / "clean.h5", "r") as f:
        clean = f["metrics/loss"][()]
    return run, plugin, clean


def run_probes(setup: tuple[Path, Path, np.ndarray], tmp_path: Path, *probes: str,
               strict: bool = False) -> tuple[int, str, Path]:
    run, plugin, _ = setup
    cube = tmp_path / "c.h5"
    args = ["run", str(run), "--plugin", str(plugin), "--quiet", "-o", str(cube)]
    for p in probes:
        args += ["--probe", p]
    r = analyze(*args, *(["--strict"] if strict else []), code=None)
    assert "Traceback" not in r.stderr
    return r.exit_code, r.stderr, cube


@pytest.mark.parametrize("probe, fragment", [
    ("iso_raises", "probe 'iso_raises' failed: RuntimeError: boom at epoch 2"),
    ("iso_exits", "probe 'iso_exits' failed: called sys.exit(0)"),
    ("iso_shape", "probe 'iso_shape' metric 'value' has shape (3,), declared ()"),
    ("iso_undeclared", "probe 'iso_undeclared' returned the wrong metrics (undeclared extra; declared value)"),
    ("iso_mutates", "probe 'iso_mutates' changed the model's"),
    ("iso_buffers", "probe 'iso_buffers' changed the model's"),
])
def test_failing_probe_does_not_stop_the_others(setup: tuple[Path, Path, np.ndarray],
                                                 tmp_path: Path, probe: str, fragment: str) -> None:
    code, err, cube = run_probes(setup, tmp_path, probe, "metrics")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, err
    with h5py.File(cube, "r") as f:
        assert f["metrics/done"][()].all()  # every checkpoint measured by the other probe
        np.testing.assert_array_equal(f["metrics/loss"][()], setup[2])  # numbers untouched
        done = f[f"{probe}/done"][()]
    fails = [x for x in failures(cube) if x["probe"] == probe]
    assert fails and all(fragment.split(": ")[0] in x["error"] for x in fails)
    if probe == "iso_raises":  # only the epoch-2 cells failed; the rest was stored
        assert {x["epoch"] for x in fails} == {2} and done.sum() == done.size - 2
    else:
        assert not done.any()


def test_probe_that_fails_to_prepare_is_dropped(setup: tuple[Path, Path, np.ndarray],
                                                tmp_path: Path) -> None:
    code, err, cube = run_probes(setup, tmp_path, "iso_prepare", "metrics")
    assert code == 1 and "probe 'iso_prepare' failed to prepare: KeyError" in err
    with h5py.File(cube, "r") as f:
        assert f["metrics/done"][()].all() and "iso_prepare" not in f
    assert [x["probe"] for x in failures(cube)] == ["iso_prepare"]
    # fixed, or removed from the command: the failure goes, nothing else changes
    code, err, cube = run_probes(setup, tmp_path, "metrics")
    assert code == 0, err


def test_strict_stops_at_the_first_probe_failure(setup: tuple[Path, Path, np.ndarray],
                                                 tmp_path: Path) -> None:
    code, err, cube = run_probes(setup, tmp_path, "metrics", "iso_raises", strict=True)
    assert code == 1 and "boom at epoch 2" in err
    with h5py.File(cube, "r") as f:
        assert not f["metrics/done"][()].all()  # stopped, what was finished is kept
        assert f["metrics/done"][()].any()


def test_mutating_probe_before_others_cannot_change_their_numbers(
        setup: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    code, _, cube = run_probes(setup, tmp_path, "iso_mutates", "iso_buffers", "metrics")
    assert code == 1
    with h5py.File(cube, "r") as f:
        np.testing.assert_array_equal(f["metrics/loss"][()], setup[2])
