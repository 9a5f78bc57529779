"""Full disks (RLIMIT_FSIZE), damaged state and kills while the trainer creates its folder."""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckpt_analyzer.checkpoints import save_labels
from ckpt_analyzer.cli import main
from ckpt_analyzer.train.loop import TrainConfig, Trainer

FAST = ["--probe", "metrics", "--probe", "spectrum", "--set", "spectrum.points=40",
        "--set", "spectrum.n=16", "--quiet"]


def limited(args: list[str], kib: int, module: str = "ckpt_analyzer.cli") -> subprocess.CompletedProcess[str]:
    """Run a CLI with a file-size limit of ``kib`` KiB (the same EFBIG path as a full disk)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})


def cells(cube: Path) -> dict[tuple, bytes]:
    with sqlite3.connect(f"file:{cube}.journal?mode=ro&immutable=1", uri=True) as db:
        return {(p, e, w): bytes(d) for p, e, w, d in db.execute(
            "SELECT probe, epoch, width, data FROM cell")}


def arrays(cube: Path) -> dict[str, np.ndarray]:
    with h5py.File(cube, "r") as f:
        return {k: f[k][()] for k in ("metrics/loss", "spectrum/A", "spectrum/done")}


@pytest.fixture
def run(digits_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(digits_run, dst)
    return dst


def one_error_line(r: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_journal_cannot_grow(run: Path) -> None:
    r = limited(["run", str(run), *FAST], 60)
    one_error_line(r, "analysis.h5.journal: cannot write the cube's journal")
    assert not list(run.rglob("*.tmp"))
    assert CliRunner().invoke(main, ["run", str(run), *FAST]).exit_code == 0  # room again


def test_cube_cannot_be_written_previous_one_kept(run: Path) -> None:
    cube = run / "analysis.h5"
    assert limited(["run", str(run), *FAST, "--epochs", "0:1"], 2**20).returncode == 0
    before, before_cells = cube.read_bytes(), cells(cube)
    # room for the journal's few new pages, not for the cube with 3 more epochs (the copy of
    # the previous cube the new cells are written into is already larger than the limit)
    r = limited(["run", str(run), *FAST], len(before) // 1024)
    one_error_line(r, "analysis.h5")  # the cube's, or the journal's when its pages come first
    assert not list(run.rglob("*.tmp"))
    assert cube.read_bytes() == before  # the previous complete cube
    after = cells(cube)
    assert all(after[k] == v for k, v in before_cells.items())  # nothing committed is lost
    # room again: completes (one thread like the limited run, so the floats compare exactly)
    r = limited(["run", str(run), *FAST], 2**20)
    assert r.returncode == 0, r.stderr
    r = limited(["run", str(run), *FAST, "-o", str(run / "fresh.h5")], 2**20)
    assert r.returncode == 0, r.stderr
    fresh, resumed = arrays(run / "fresh.h5"), arrays(cube)
    for k, v in fresh.items():
        np.testing.assert_array_equal(resumed[k], v)


def test_trainer_checkpoint_cannot_be_written(tmp_path: Path) -> None:
    out = tmp_path / "t"
    args = [str(out), "--widths", "1", "--epochs", "1", "--quiet"]
    r = limited(args, 10, "ckpt_analyzer.train.cli")
    one_error_line(r, "labels.safetensors: cannot write (File too large)")
    assert not list(out.rglob("*.tmp"))
    r = limited(args, 5000, "ckpt_analyzer.train.cli")  # the same command, with room: resumes
    assert r.returncode == 0, r.stderr
    assert (out / "w1" / "e00001.safetensors").is_file()


def test_truncated_cube_rebuilt_from_journal(run: Path) -> None:
    cube = run / "analysis.h5"
    assert CliRunner().invoke(main, ["run", str(run), *FAST]).exit_code == 0
    good = arrays(cube)
    cube.write_bytes(cube.read_bytes()[:20000])
    r = CliRunner().invoke(main, ["inspect", str(cube)])
    assert r.exit_code == 1 and "cannot read the cube" in r.stderr
    assert "re-run 'ckpt-analyze run' on its run to rebuild it" in r.stderr
    r = CliRunner().invoke(main, ["run", str(run), *FAST, "--json"])
    assert r.exit_code == 0, r.stderr
    assert "rebuilt it from its journal" in r.stderr and '"computed": 0' in r.stdout
    after = arrays(cube)
    for k, v in good.items():
        np.testing.assert_array_equal(after[k], v)


def test_truncated_cube_without_journal_is_refused(run: Path) -> None:
    cube = run / "analysis.h5"
    assert CliRunner().invoke(main, ["run", str(run), *FAST]).exit_code == 0
    Path(f"{cube}.journal").unlink()
    data = cube.read_bytes()[:20000]
    cube.write_bytes(data)
    r = CliRunner().invoke(main, ["run", str(run), *FAST])
    assert r.exit_code == 1 and "cannot read the cube" in r.stderr
    assert cube.read_bytes() == data  # not touched


# ---------------------------------------------------------------- the trainer resumes any kill
CFG = TrainConfig(widths=(1,), epochs=1, lr=1e-3, seed=5)


# what each of the four kill points while the folder is created leaves behind
@pytest.mark.parametrize("state", ["empty folder", "labels tmp", "labels only",
                                   "labels and run.json tmp"])
def test_trainer_resumes_a_kill_while_creating_its_folder(tmp_path: Path, state: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    if state != "empty folder":
        save_labels(out, torch.zeros(3), torch.zeros(3), torch.zeros(3))
        if state == "labels tmp":
            (out / "labels.safetensors").rename(out / "labels.safetensors.0a1b2c3d.tmp")
        if state == "labels and run.json tmp":
            (out / "run.json.deadbeef.tmp").write_text("{")
    trainer = Trainer(CFG, out, torch.device("cpu"))
    trainer.prepare()
    trainer.run()
    assert not list(out.rglob("*.tmp"))
    assert (out / "run.json").is_file() and (out / "w1" / "e00001.safetensors").is_file()
    from ckpt_analyzer.checkpoints.run_data import load_run_data

    assert len(load_run_data(out).y_train) > 3  # the labels were written afresh


def test_manifest_without_checkpoints_takes_new_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(TrainConfig(widths=(1,), epochs=1, lr=float("1e-3"), seed=5), out,
            torch.device("cpu")).prepare()  # killed before the first checkpoint
    t = Trainer(TrainConfig(widths=(1,), epochs=1, lr=2e-3, seed=5), out, torch.device("cpu"))
    t.prepare()
    assert any("starting afresh" in w and "optimizer.lr" in w for w in t.warnings)
    t.run()
    with pytest.raises(Exception, match="other settings"):  # with a checkpoint it is a run
        Trainer(TrainConfig(widths=(1,), epochs=1, lr=3e-3, seed=5), out,
                torch.device("cpu")).prepare()


def test_other_folder_content_still_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="is not empty and holds no run.json"):
        Trainer(CFG, out, torch.device("cpu")).prepare()
    assert (out / "notes.txt").read_text() == "mine"


def test_cube_file_cannot_be_written_journal_keeps_all(run: Path) -> None:
    cube = run / "analysis.h5"
    assert CliRunner().invoke(main, ["run", str(run), *FAST]).exit_code == 0
    good = arrays(cube)
    cube.unlink()  # lost; the journal has every cell, the limit leaves no room for the cube
    r = limited(["run", str(run), *FAST], 60)
    one_error_line(r, "analysis.h5: cannot write (File too large)")
    assert not cube.exists() and not list(run.rglob("*.tmp"))
    r = CliRunner().invoke(main, ["run", str(run), *FAST, "--json"])
    assert r.exit_code == 0 and '"computed": 0' in r.stdout, r.stderr
    for k, v in good.items():
        np.testing.assert_array_equal(arrays(cube)[k], v)
