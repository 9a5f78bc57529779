"""A cube knows what it measured: the run (run.json, labels digests) and each checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import analyze, copy_run, journal_cells
from safetensors import safe_open
from safetensors.torch import load_file, save_file

M = ["--probe", "metrics", "--quiet"]


def loss(cube: Path) -> np.ndarray:
    with h5py.File(cube, "r") as f:
        return f["metrics/loss"][()]


@pytest.fixture
def two_runs(digits_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Run A (measured) and run B: the same checkpoints, another seed and labels file."""
    a, b = tmp_path / "A", tmp_path / "B"
    copy_run(digits_run, a)
    copy_run(digits_run, b)
    doc = json.loads((b / "run.json").read_text())
    doc["seed"] = 77
    (b / "run.json").write_text(json.dumps(doc))
    t = load_file(str(b / "labels.safetensors"))
    save_file(t, str(b / "labels.safetensors"), metadata={"format": "ckpt-analyzer.labels/1",
                                                          "note": "B"})
    analyze("run", str(a), *M)
    return a, b


def test_other_run_into_my_cube_is_refused(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    cube = a / "analysis.h5"
    before, before_cells = cube.read_bytes(), journal_cells(cube)
    err = analyze("run", str(b), *M, "-o", str(cube), code=2).stderr
    assert "this cube was computed from another run" in err and "seed: 3 -> 77" in err
    assert "labels.safetensors differs" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert cube.read_bytes() == before and journal_cells(cube) == before_cells
    with h5py.File(cube, "r") as f:
        assert f.attrs["source"] == str(a.resolve())  # not rewritten to say B


def test_cube_copied_into_other_folder_is_refused_then_overwrite(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    for name in ("analysis.h5", "analysis.h5.journal"):
        shutil.copy(a / name, b / name)
    err = analyze("run", str(b), *M, code=2).stderr
    assert "computed from another run" in err
    analyze("run", str(b), *M, "--overwrite")
    with h5py.File(b / "analysis.h5", "r") as f:
        assert f.attrs["source"] == str(b.resolve())
        ident = json.loads(f.attrs["run_identity"])
    assert ident["run_json"] and ident["labels"]
    # the same checkpoints, so the same losses on the training set... but B's cube is B's now
    analyze("run", str(b), *M)


def test_identity_survives_a_lost_journal(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    shutil.copy(a / "analysis.h5", b / "analysis.h5")  # no journal: rebuilt from the cube
    err = analyze("run", str(b), *M, code=2).stderr
    assert "computed from another run" in err


def test_legacy_cube_without_identity_compares_run_json(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    cube = b / "analysis.h5"
    shutil.copy(a / "analysis.h5", cube)
    with h5py.File(cube, "r+") as f:  # as written before identities existed
        del f.attrs["run_identity"]
    err = analyze("run", str(b), *M, code=2).stderr
    assert "seed: 3 -> 77" in err
    # ... and the same run adopts the identity
    shutil.copy(a / "analysis.h5", a / "legacy.h5")
    with h5py.File(a / "legacy.h5", "r+") as f:
        del f.attrs["run_identity"]
    analyze("run", str(a), *M, "-o", str(a / "legacy.h5"))
    with h5py.File(a / "legacy.h5", "r") as f:
        assert "run_identity" in f.attrs


def test_checkpoint_replaced_in_place_is_measured_again(two_runs: tuple[Path, Path]) -> None:
    a, _ = two_runs
    cube = a / "analysis.h5"
    old = loss(cube)
    target = a / "w4" / "e00003.safetensors"
    with safe_open(str(target), "pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(a / "w4" / "e00001.safetensors")), str(target), metadata=meta)
    err = analyze("run", str(a), *M).stderr
    assert "e00003.safetensors: replaced since it was measured" in err
    new = loss(cube)
    # width 4 (index 1) epoch 3 now holds epoch 1's weights' numbers; nothing else moved
    np.testing.assert_array_equal(new[3, 1], old[1, 1])
    mask = np.ones(new.shape[:2], bool)
    mask[3, 1] = False
    np.testing.assert_array_equal(new[mask], old[mask])
    err = analyze("run", str(a), *M).stderr  # measured once, not on every run
    assert "replaced" not in err


def test_touched_checkpoint_is_not_measured_again(two_runs: tuple[Path, Path]) -> None:
    a, _ = two_runs
    target = a / "w1" / "e00002.safetensors"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = analyze("run", str(a), *M, "--json")
    assert "replaced" not in r.stderr
    assert json.loads(r.stdout)["computed"] == 0
