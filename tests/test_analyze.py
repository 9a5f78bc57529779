"""The analyzer end to end: runner, cube, registry and plugins, CLI errors, durability.

Commands run in-process (``helpers.analyze``, click's CliRunner) except where the process is the
point: SIGKILL and resume, entry points found on a child's PYTHONPATH, what an import pulls in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ANALYZE, FOREIGN_PATTERN, analyze, analyze_process, copy_run, datasets, foreign_folder, train

FAST = ["--set", "spectrum.points=40", "--set", "spectrum.n=16", "--quiet"]


@pytest.fixture(scope="module")
def run_copy(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_run(digits_run, tmp_path_factory.mktemp("an") / "run")


@pytest.fixture(scope="module")
def cube(run_copy: Path) -> Path:
    analyze("run", str(run_copy), "--probe", "metrics", "--probe", "spectrum", *FAST)
    return run_copy / "analysis.h5"


def metric_arrays(path: Path) -> dict[str, np.ndarray]:
    return datasets(path, floats=True, inputs=False)


def test_cube_layout_and_xarray(cube: Path) -> None:
    import xarray as xr

    with h5py.File(cube, "r") as f:
        assert f.attrs["format"] == "ckpt-analyzer.cube/1"
        assert list(f["epoch"][()]) == [0, 1, 2, 3, 4] and list(f["width"][()]) == [1, 4]
        g = f["spectrum"]
        assert json.loads(g.attrs["config"])["points"] == 40
        h = json.loads(g.attrs["config"])["h"]  # h=auto is stored as the number it resolved to
        assert isinstance(h, float) and 0.06 < h < 0.07
        assert g["done"][()].all()
        assert g["inputs/train/index"].shape == (40,)
        assert g["inputs/train/direction"].shape == (40, 1, 8, 8)
    ds = xr.open_dataset(cube, group="spectrum", engine="h5netcdf")
    assert ds["R"].dims == ("epoch", "width", "subset", "k")
    assert list(ds["k"].values) == list(range(9))
    assert np.all(ds["R"].sel(k=0).values == 0)
    ds.close()
    from ckpt_analyzer import open_cube

    m = open_cube(str(cube), "metrics")
    assert m["error"].dims == ("epoch", "width", "subset")
    assert set(m["subset"].values) == {"train", "clean", "noisy", "test"}


def test_metrics_match_trainer_metadata(cube: Path, run_copy: Path) -> None:
    from ckpt_analyzer import open_cube
    from ckpt_analyzer.checkpoints import discover

    m = open_cube(str(cube), "metrics")
    for ref in discover(run_copy):
        cell = m.sel(epoch=ref.epoch, width=ref.width)
        assert float(cell["error"].sel(subset="train")) == pytest.approx(ref.metadata["train_error"], abs=1e-12)
        assert float(cell["loss"].sel(subset="train")) == pytest.approx(ref.metadata["train_loss"], rel=1e-6)
        assert float(cell["error"].sel(subset="test")) == pytest.approx(float(ref.metadata["test_error"]), abs=1e-12)


def test_rerun_computes_nothing_and_inspect(cube: Path, run_copy: Path) -> None:
    r = analyze("run", str(run_copy), "--probe", "metrics", "--probe", "spectrum", *FAST, "--json")
    s = json.loads(r.stdout)
    assert s["computed"] == 0 and s["skipped_done"] == 10
    r = analyze("inspect", str(cube), "--json")
    info = json.loads(r.stdout)
    assert info["probes"]["spectrum"]["coverage"] == {"done": 10, "total": 10}
    txt = analyze("inspect", str(cube)).stdout
    assert "spectrum" in txt and "10/10" in txt


def test_config_change_refused_then_overwrite(cube: Path, run_copy: Path) -> None:
    r = analyze("run", str(run_copy), "--probe", "spectrum", "--set", "spectrum.points=41",
                "--set", "spectrum.n=16", "--quiet", code=2)
    assert "points" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    out = run_copy / "other.h5"
    analyze("run", str(run_copy), "--probe", "spectrum", *FAST, "-o", str(out), "--widths", "1",
            "--epochs", "0:1")
    analyze("run", str(run_copy), "--probe", "spectrum", "--set", "spectrum.points=41",
            "--set", "spectrum.n=16", "-o", str(out), "--overwrite", "--widths", "1", "--epochs", "0")
    with h5py.File(out, "r") as f:
        assert json.loads(f["spectrum"].attrs["config"])["points"] == 41
        assert int(f["spectrum/done"][()].sum()) == 1


def test_kill_and_resume_bit_identical(cube: Path, run_copy: Path, tmp_path: Path) -> None:
    """SIGKILL at random moments, several times; the completed cube equals an uninterrupted one
    (every run in a child process: the killed ones must be, and the reference is measured the
    same way)."""
    import random

    out = tmp_path / "killed.h5"
    args = ["run", str(run_copy), "--probe", "metrics", "--probe", "spectrum", *FAST, "-o", str(out),
            "--batch-size", "64"]
    rng = random.Random(7)
    journal = Path(f"{out}.journal")
    for _ in range(3):
        proc = subprocess.Popen([*ANALYZE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.time()
        while time.time() - start < 120 and proc.poll() is None and not journal.exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            with h5py.File(out, "r"):
                pass  # whatever is on disk opens
    analyze_process(*args)
    # the reference is the same command uninterrupted: a conv's last bits may depend on the batch
    # size on some CPUs (oneDNN picks its kernel by shape), so the module cube (batch 512) is not it
    ref = tmp_path / "uninterrupted.h5"
    analyze_process(*args[:-3], str(ref), *args[-2:])
    a, b = metric_arrays(ref), metric_arrays(out)
    assert a.keys() == b.keys() == metric_arrays(cube).keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_new_epochs_are_picked_up(digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    moved = tmp_path / "later"
    moved.mkdir()
    for e in (3, 4):
        shutil.move(run / "w1" / f"e{e:05d}.safetensors", moved / f"e{e:05d}.safetensors")
    analyze("run", str(run), "--probe", "metrics", "--quiet", "--widths", "1")
    for e in (3, 4):
        shutil.move(moved / f"e{e:05d}.safetensors", run / "w1" / f"e{e:05d}.safetensors")
    s = json.loads(analyze("run", str(run), "--probe", "metrics", "--json", "--widths", "1").stdout)
    assert s["computed"] == 2 and s["skipped_done"] == 3
    with h5py.File(run / "analysis.h5", "r") as f:
        assert list(f["epoch"][()]) == [0, 1, 2, 3, 4] and f["metrics/done"][()].all()


def test_corrupt_checkpoint_mid_run(digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    bad = run / "w1" / "e00002.safetensors"
    bad.write_bytes(bad.read_bytes()[:500])
    r = analyze("run", str(run), "--probe", "metrics", "--quiet", "--widths", "1", code=1)
    assert str(bad) in r.stdout + r.stderr
    with h5py.File(run / "analysis.h5", "r") as f:
        done = f["metrics/done"][()]
        assert done.sum() == 4  # the other epochs are measured
    r = analyze("run", str(run), "--probe", "metrics", "--quiet", "--strict", "--epochs", "0:4",
                "-o", str(tmp_path / "strict.h5"), "--widths", "1", code=1)
    assert "truncated" in r.stderr


@pytest.mark.parametrize("args, message, code", [
    (["--probe", "spectrun"], "did you mean 'spectrum'", 2),
    (["--probe", "spectrum", "--set", "spectrum.pionts=3"], "did you mean 'points'", 2),
    (["--probe", "spectrum", "--set", "spectrum.points=abc"], "not a valid int", 2),
    (["--probe", "spectrum", "--set", "spectrum.h=-1"], "h", 2),
    (["--probe", "metrics", "--set", "spectrum.points=3"], "not a selected probe", 2),
    (["--probe", "metrics", "-o", "/proc/forbidden/cube.h5"], "/proc/forbidden", 1),
    (["--probe", "metrics", "--widths", "99"], "no checkpoints", 1),
    (["--probe", "metrics", "-o", "README_NOT_A_CUBE"], "not", 1),
])
def test_bad_input(run_copy: Path, tmp_path: Path, args: list[str], message: str, code: int) -> None:
    if "README_NOT_A_CUBE" in args:
        foreign = tmp_path / "notes.h5"
        foreign.write_text("my notes, not a cube")
        args = [str(foreign) if a == "README_NOT_A_CUBE" else a for a in args]
    r = analyze("run", str(run_copy), *args, "--quiet", code=code)
    if "README_NOT_A_CUBE" not in args and tmp_path.joinpath("notes.h5").exists():
        assert tmp_path.joinpath("notes.h5").read_text() == "my notes, not a cube"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_empty_folder(tmp_path: Path) -> None:
    r = analyze("run", str(tmp_path), "--probe", "metrics", "--model", "mcnn", code=1)
    assert "no checkpoints" in r.stderr


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_probe.py"


def test_plugin_file(run_copy: Path, tmp_path: Path) -> None:
    """The README's example probe, loaded with --plugin, against a direct computation."""
    import torch

    from ckpt_analyzer import load_model, load_subset

    r = analyze("probes", "--plugin", str(EXAMPLE), "--json")
    names = [p["name"] for p in json.loads(r.stdout)["probes"]]
    assert {"logit_norm", "metrics", "spectrum", "weights"} <= set(names)
    out = tmp_path / "c.h5"
    analyze("run", str(run_copy), "--plugin", str(EXAMPLE), "--probe", "logit_norm", "-o", str(out),
            "--set", "logit_norm.subsets=test", "--quiet", "--epochs", "4")
    x, _ = load_subset(str(run_copy), "test")
    with h5py.File(out, "r") as h, torch.no_grad():
        widths = list(h["width"][()])
        for i, w in enumerate(widths):
            model = load_model(str(run_copy / f"w{w}" / "e00004.safetensors"))
            want = model(x).norm(dim=1).mean().item()
            assert h["logit_norm/logit_norm"][0, i, 0] == pytest.approx(want, rel=1e-6)


def test_installed_weights_plugin(run_copy: Path, tmp_path: Path) -> None:
    """The separately installed plugin through the CLI, against norms taken from the files."""
    from ckpt_analyzer import open_cube
    from ckpt_analyzer.checkpoints import read_state_dict

    out = tmp_path / "w.h5"
    analyze("run", str(run_copy), "--probe", "weights", "-o", str(out), "--quiet")
    ds = open_cube(str(out), "weights")
    assert np.all(ds["distance"].sel(epoch=0).values == 0)
    for w in (1, 4):
        w0 = read_state_dict(run_copy / f"w{w}" / "e00000.safetensors")
        w3 = read_state_dict(run_copy / f"w{w}" / "e00003.safetensors")
        for layer in ds["layer"].values:
            a, b = w3[str(layer)].double(), w0[str(layer)].double()
            cell = ds.sel(epoch=3, width=w, layer=layer)
            assert float(cell["norm"]) == pytest.approx(a.norm().item(), rel=1e-12)
            assert float(cell["distance"]) == pytest.approx((a - b).norm().item(), rel=1e-12)
            assert float(cell["distance"]) > 0


def test_broken_plugin_listed_not_fatal(tmp_path: Path) -> None:
    """In a child: its entry points are those of the PYTHONPATH it starts with."""
    dist = tmp_path / "site" / "brokenplug-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ckpt_analyzer.probes]\nbroken = no_such_mod_q:Probe\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"),
                                                      os.environ.get("PYTHONPATH")]))}
    r = analyze_process("probes", env=env)
    assert "BROKEN broken from brokenplug" in r.stdout and "metrics" in r.stdout
    r = analyze_process("run", str(tmp_path), "--probe", "broken", code=None, env=env)
    assert r.returncode != 0 and "failed to import" in r.stderr
    r = analyze_process("probes", "--json", env={**env, "CKPT_ANALYZER_DISABLE_PLUGIN_AUTOLOAD": "1"})
    data = json.loads(r.stdout)
    assert data["broken"] == [] and "weights" not in [p["name"] for p in data["probes"]]
    assert "spectrum" in [p["name"] for p in data["probes"]]


def test_help_does_not_import_torch() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys, ckpt_analyzer.cli; "
                        "print('torch' in sys.modules, 'h5py' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False False"


def test_checkpoint_that_does_not_fit(digits_run: Path, tmp_path: Path) -> None:
    """A foreign folder whose w1 slot holds width-4 tensors: skipped, named, recorded, exit 1."""
    foreign = foreign_folder(digits_run, tmp_path / "foreign", [(1, 0), (1, 1), (1, 2)],
                             source={(1, 2): (4, 2)})
    r = analyze("run", str(foreign), "--probe", "metrics", "--model", "mcnn", "--dataset", "digits",
                "--pattern", FOREIGN_PATTERN, "--quiet", code=1)
    assert "ckpt_2.safetensors" in r.stderr + r.stdout and "has shape" in r.stdout
    with h5py.File(foreign / "analysis.h5", "r") as f:
        assert f["metrics/done"][()].sum() == 2
        assert "ckpt_2" in f.attrs["failures"]


def test_label_smoothed_run_reports_effective_noise_fitting(tmp_path: Path) -> None:
    """ckpt-train with radial smoothing -> metrics adds the smoothed test loss, recomputed here."""
    import torch

    from ckpt_analyzer import load_model, load_subset, open_cube
    from ckpt_analyzer.checkpoints import read_run_json
    from ckpt_analyzer.functional.smoothing import LabelSmoothing, soft_cross_entropy

    run = tmp_path / "ls"
    train(run, "--widths", "2", "--epochs", "2", "--lr", "1e-3", "--label-smoothing", "radial",
          "--ls-frequency", "0.5", "--ls-amplitude", "0.6", "--quiet")
    manifest = read_run_json(run)["label_smoothing"]
    assert manifest["kind"] == "radial" and manifest["frequency"] == 0.5 and "center" in manifest
    analyze("run", str(run), "--probe", "metrics", "--quiet")
    ds = open_cube(str(run / "analysis.h5"), "metrics")
    x, y = load_subset(str(run), "test")
    model = load_model(str(run / "w2" / "e00002.safetensors"))
    with torch.no_grad():
        logits = model(x).double()
    ls = LabelSmoothing.from_manifest(manifest, tuple(x.shape[1:]))
    want = np.mean(np.concatenate([
        soft_cross_entropy(logits[s:s + 256], ls.targets(x[s:s + 256], y[s:s + 256], 10).double()).numpy()
        for s in range(0, len(x), 256)]))
    cell = ds.sel(epoch=2, width=2)
    assert float(cell["smoothed_test_loss"]) == pytest.approx(want, rel=1e-6)
    clean = torch.nn.functional.cross_entropy(logits, y).item()
    assert float(cell["effective_noise_fitting"]) == pytest.approx(clean - want, rel=1e-6, abs=1e-9)
