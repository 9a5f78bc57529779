"""The trainer writes exactly the checkpoint contract, deterministically, and resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TRAIN, train_process
from helpers import train as train_cli
from safetensors import safe_open

from ckpt_analyzer.checkpoints import (
    CKPT_FORMAT,
    REQUIRED_META,
    discover,
    load_model,
    read_labels,
    read_run_json,
)
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.train.loop import TrainConfig, Trainer, manifest_diff
from ckpt_analyzer.train.schedule import lr_at, save_epochs


def train(out: Path, **kw: object) -> Trainer:
    cfg = TrainConfig(**{"widths": (1,), "epochs": 2, "lr": 1e-3, **kw})  # type: ignore[arg-type]
    t = Trainer(cfg, out, torch.device("cpu"))
    t.prepare()
    t.run()
    return t


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_contract_file_by_file(digits_run: Path) -> None:
    run = read_run_json(digits_run)
    assert run is not None and run["format"] == "ckpt-analyzer.run/1"
    for key in ("dataset", "label_noise", "label_smoothing", "arch", "widths", "epochs", "save",
                "optimizer", "batch_size", "augment", "seed", "version"):
        assert key in run
    ds = run["dataset"]
    assert ds["name"] == "digits" and ds["n_train"] + ds["n_test"] == 1797
    assert len(ds["mean"]) == len(ds["std"]) == 1
    assert run["optimizer"]["name"] == "adam" and run["batch_size"] == 128

    labels = read_labels(digits_run)
    n = ds["n_train"]
    assert labels["train_labels"].dtype == torch.int64 and labels["train_labels"].shape == (n,)
    mask = labels["noisy_mask"]
    assert int(mask.sum()) == round(0.2 * n)
    assert torch.all(labels["train_labels"][mask] != labels["clean_labels"][mask])
    assert torch.all(labels["train_labels"][~mask] == labels["clean_labels"][~mask])
    with safe_open(str(digits_run / "labels.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "ckpt-analyzer.labels/1"
        assert f.get_tensor("noisy_mask").dtype == torch.uint8

    files = sorted(p.relative_to(digits_run).as_posix() for p in digits_run.rglob("*") if p.is_file())
    expected = ["done", "labels.safetensors", "run.json"] + [
        f"w{w}/e{e:05d}.safetensors" for w in (1, 4) for e in range(5)] + ["w1/done", "w4/done"]
    assert files == sorted(expected)  # no temporaries or training state left behind
    # completion markers (for analyzing beside a live run): per width, then the whole run
    assert json.loads((digits_run / "w4" / "done").read_text())["epochs"] == [0, 1, 2, 3, 4]
    assert json.loads((digits_run / "done").read_text())["widths"] == [1, 4]
    for ref in discover(digits_run):
        meta = ref.metadata
        assert set(REQUIRED_META) <= set(meta)
        assert meta["format"] == CKPT_FORMAT and meta["arch"] == "mcnn"
        assert (meta["width"], meta["epoch"]) == (ref.width, ref.epoch)
        assert meta["num_classes"] == 10 and meta["in_channels"] == 1 and meta["image_size"] == 8
        steps = -(-n // 128)
        assert meta["step"] == ref.epoch * steps
        assert 0.0 <= meta["train_error"] <= 1.0 and meta["train_loss"] > 0
        model = load_model(ref.path)
        assert not model.training


def test_metadata_train_error_is_true(digits_run: Path) -> None:
    from ckpt_analyzer import load_subset

    ref = discover(digits_run)[-1]
    model = load_model(ref.path)
    x, y = load_subset(digits_run, "train")
    with torch.no_grad():
        err = (model(x).argmax(1) != y).double().mean().item()
    assert err == pytest.approx(ref.metadata["train_error"], abs=1e-12)


def test_same_seed_identical_tensors(tmp_path: Path) -> None:
    a = train(tmp_path / "a", seed=5)
    b = train(tmp_path / "b", seed=5)
    c = train(tmp_path / "c", seed=6)
    ta, tb, tc = (tensors(t.out / "w1" / "e00002.safetensors") for t in (a, b, c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path) -> None:
    """In child processes: one is killed with SIGKILL; the reference and the resumed run are
    trained alike (same interpreter start, same threads), so their tensors must be equal."""
    args = ["--widths", "1,2", "--epochs", "5", "--lr", "1e-3", "--label-noise", "0.1",
            "--augment", "--schedule", "cosine", "--save", "0,2,3,4", "--quiet"]
    ref = tmp_path / "ref"
    train_process(ref, *args)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*TRAIN, str(out), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "w1" / "e00003.safetensors").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "w2" / "e00005.safetensors").exists()
    done = train_process(out, *args, "--json")
    rows = json.loads(done.stdout)
    assert rows[0]["resumed_from"] is not None
    for w in (1, 2):
        for e in (0, 2, 3, 4, 5):
            a = tensors(ref / f"w{w}" / f"e{e:05d}.safetensors")
            b = tensors(out / f"w{w}" / f"e{e:05d}.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (w, e)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("train_state*"))


def test_rerun_finished_is_a_no_op(tmp_path: Path) -> None:
    t = train(tmp_path / "r")
    before = (t.out / "w1" / "e00002.safetensors").stat().st_mtime_ns
    t2 = train(tmp_path / "r")
    assert (t2.out / "w1" / "e00002.safetensors").stat().st_mtime_ns == before


def test_other_settings_refused_naming_keys(tmp_path: Path) -> None:
    train(tmp_path / "r")
    with pytest.raises(CkptError, match=r"optimizer\.lr .*epochs|epochs.*optimizer\.lr"):
        train(tmp_path / "r", lr=0.5, epochs=3)


def test_save_schedules() -> None:
    assert save_epochs("log:10", 300)[0] == 0 and save_epochs("log:10", 300)[-1] == 300
    for n, e in [(10, 300), (5, 3), (20, 20), (7, 1000), (2, 1)]:
        s = save_epochs(f"log:{n}", e)
        assert len(s) == min(n, e + 1) and s == sorted(set(s)) and s[0] == 0 and s[-1] == e
    assert save_epochs("every", 3) == [0, 1, 2, 3]
    assert save_epochs("5,7", 10) == [0, 5, 7, 10]
    with pytest.raises(UsageError):
        save_epochs("12", 10)
    with pytest.raises(UsageError):
        save_epochs("log:x", 10)


def test_lr_schedules() -> None:
    assert lr_at(0, 10, 10, 0.1, "constant") == 0.1
    assert lr_at(60, 10, 10, 0.1, "step") == pytest.approx(0.01)
    assert lr_at(80, 10, 10, 0.1, "step") == pytest.approx(0.001)
    assert lr_at(50, 10, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(0, 10, 10, 1.0, "constant", warmup_epochs=1) == pytest.approx(0.1)


def test_save_log_spaced_files(tmp_path: Path) -> None:
    t = train(tmp_path / "r", epochs=12, save="log:4")
    epochs = [r.epoch for r in discover(t.out)]
    assert epochs == save_epochs("log:4", 12) and len(epochs) == 4


def test_manifest_diff_names_keys() -> None:
    a = {"optimizer": {"lr": 1}, "version": "1", "widths": [1, 2]}
    b = {"optimizer": {"lr": 2}, "version": "2", "widths": (1, 2)}
    assert manifest_diff(a, b) == ["optimizer.lr: 1 -> 2"]


@pytest.mark.parametrize("args, message", [
    (["--arch", "mcn"], "did you mean 'mcnn'"),
    (["--dataset", "digit"], "did you mean 'digits'"),
    (["--optimizer", "adamw"], "did you mean 'adam'"),
    (["--widths", "0,2"], "positive integers"),
    (["--widths", "a"], "not an integer"),
    (["--epochs", "0"], "positive integer"),
    (["--label-noise", "1.0"], r"\[0, 1\)"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], "cifar"),
    (["--model", "no_such_module_xyz:factory"], "no_such_module_xyz"),
    (["--model", "builtins:max"], "not a torch.nn.Module"),
])
def test_bad_input_one_line_nothing_written(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    r = train_cli(out, "--epochs", "1", *args, code=None)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("keep me")
    r = train_cli(f, "--epochs", "1", code=1)
    assert "is a file" in r.stderr and f.read_text() == "keep me"


def test_augment_is_a_crop_and_flip() -> None:
    from ckpt_analyzer.train.loop import augment_batch

    x = torch.rand(64, 3, 8, 8)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # every output image is a shifted (possibly flipped) copy: its nonzero content matches x
    for i in range(64):
        cands = [x[i], x[i].flip(-1)]
        ok = False
        for c in cands:
            p = torch.nn.functional.pad(c, (1, 1, 1, 1))
            for dy in range(3):
                for dx in range(3):
                    ok |= torch.equal(p[:, dy:dy + 8, dx:dx + 8], y[i])
        assert ok
    assert np.isfinite(y.numpy()).all()
