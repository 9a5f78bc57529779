"""``ckpt-analyze run --follow``: analysis beside a live run (incremental discovery, new widths,
the end at the trainer's done markers, readers of the cube while it is written, idle timeout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckpt_analyzer.checkpoints as ck

ANALYZE = [sys.executable, "-m", "ckpt_analyzer.cli"]
PROBES = ["--probe", "metrics", "--probe", "landscape", "--set", "landscape.points=16",
          "--set", "landscape.steps=3", "--set", "landscape.barrier_steps=3",
          "--set", "landscape.subsets=train", "--quiet"]

TRAINER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import torch
    from torch import nn

    from ckpt_analyzer import RunWriter
    from ckpt_analyzer.models import build_model

    out, gate = sys.argv[1], Path(sys.argv[2])
    widths, epochs = [1, 2], 3
    writer = RunWriter(out, model="mcnn", dataset="digits", widths=widths, epochs=epochs,
                       label_noise=0.2, optimizer={"name": "sgd", "lr": 0.05})
    x, y = writer.x_train, writer.y_train
    for width in widths:
        while width != widths[0] and not gate.exists():  # the test lets the next width start
            time.sleep(0.05)
        torch.manual_seed(width)
        model = build_model("mcnn", width, writer.num_classes, writer.in_channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        writer.save(model, width=width, epoch=0, step=0)
        for epoch in range(1, epochs + 1):
            for idx in torch.randperm(len(x)).split(128)[:4]:
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            writer.save(model, width=width, epoch=epoch, step=4 * epoch)
            time.sleep(0.2)
        writer.finish(width)
    writer.close()
""")


def analyze(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*ANALYZE, *args], capture_output=True, text=True, env=dict(os.environ))
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def wait_for(cond: object, what: str, proc: subprocess.Popen[str], limit: float = 180) -> None:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the follower ended early: {proc.communicate()}")
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what}: not within {limit} s")
        time.sleep(0.2)


def done_cells(cube: Path, probe: str) -> int:
    from ckpt_analyzer.cube import read_summary

    try:
        return int(read_summary(cube)["probes"][probe]["coverage"]["done"])
    except Exception:  # not written yet
        return 0


@pytest.mark.parametrize("workers", [[], pytest.param(["--workers", "2"], marks=pytest.mark.slow)],
                         ids=["in-process", "workers-2"])
def test_follow_a_live_run_equals_the_analysis_after_it(tmp_path: Path, workers: list[str]) -> None:
    """Also with --workers 2: the pool's workers start once and learn width 2 when it lands."""
    run, gate = tmp_path / "run", tmp_path / "go"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    cube = tmp_path / "live.h5"
    follower = subprocess.Popen([*ANALYZE, "run", str(run), "-o", str(cube), "--follow",
                                 "--poll", "0.2", "--idle-timeout", "300", *PROBES, *workers],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainer = subprocess.Popen([sys.executable, str(script), str(run), str(gate)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # width 1 finished (w1/done), width 2 not begun: the follower shows width 1 in full
        wait_for(lambda: done_cells(cube, "landscape") == 4, "width 1 measured", follower)
        assert ck.is_done(run, 1) and not (run / "w2").exists()
        live = analyze("inspect", str(cube), "--json")
        s = json.loads(live.stdout)
        assert s["widths"] == [1] and s["epochs"] == [0, 1, 2, 3]
        rep = json.loads(analyze("report", str(cube), "--no-store", "--json").stdout)
        assert rep["widths"] == [1]
        stored = analyze("report", str(cube), check=False)  # storing waits for the writer
        assert stored.returncode == 1 and "--no-store" in stored.stderr
        gate.touch()  # a new width lands: the cube's width axis grows
        out, err = follower.communicate(timeout=300)
        assert follower.returncode == 0, err
        assert trainer.wait(timeout=60) == 0, trainer.communicate()
    finally:
        for p in (follower, trainer):
            if p.poll() is None:
                p.kill()
    assert ": 8 checkpoint(s) measured, 0 already done, 0 failed" in out
    assert ck.is_done(run)
    post = tmp_path / "post.h5"
    analyze("run", str(run), "-o", str(post), *PROBES)
    a, b = datasets(cube), datasets(post)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key
    assert list(a["width"]) == [1, 2] and a["landscape/done"].all()
    assert (a["landscape/barrier_epoch"] == 3).all()  # measured once each width was done


@pytest.fixture()
def unfinished(digits_run: Path, tmp_path: Path) -> Path:
    """The digits run as if width 4 were still training at epoch 2, plus a stray width 16."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("analysis.h5*"))
    (run / ck.DONE_FILE).unlink()
    (run / "w4" / ck.DONE_FILE).unlink()
    for e in (3, 4):
        ck.checkpoint_path(run, 4, e).unlink()
    src = ck.checkpoint_path(run, 1, 0)
    stray = ck.checkpoint_path(run, 16, 0)
    stray.parent.mkdir()
    ck.save_tensors(stray, ck.read_state_dict(src), dict(ck.read_header(src)[1], width="16"))
    return run


def test_idle_timeout_and_unplanned_width(unfinished: Path) -> None:
    r = analyze("run", str(unfinished), "--follow", "--poll", "0.2", "--idle-timeout", "2",
                "--probe", "metrics", "--quiet", check=False)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--idle-timeout" in last and "not marked done" in last
    assert "width 16 was never planned by the trainer (run.json widths: 1, 4)" in r.stdout
    with h5py.File(unfinished / "analysis.h5", "r") as f:  # what was there is measured
        assert list(f["width"][()]) == [1, 4] and list(f["epoch"][()]) == [0, 1, 2, 3, 4]
        assert f["metrics/done"][()].sum() == 5 + 3


@pytest.mark.parametrize("extra, why", [
    (["--shard", "1/2"], "--follow: --shard"),
    (["--widths", "16"], "--widths: none of 16 is planned (run.json widths: 1, 4)"),
])
def test_follow_refuses_what_it_cannot_do(digits_run: Path, extra: list[str], why: str) -> None:
    r = analyze("run", str(digits_run), "--follow", "--probe", "metrics", "-o", "/nonexistent/x.h5",
                *extra, "--quiet", check=False)
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_watcher_reads_only_new_or_changed_files(digits_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("analysis.h5*"))
    reads: list[str] = []
    real = ck.read_header

    def counting(path: object) -> object:
        reads.append(str(path))
        return real(path)  # type: ignore[arg-type]

    import ckpt_analyzer.checkpoints.discovery as discover_mod

    monkeypatch.setattr(discover_mod, "read_header", counting)
    w = ck.Watcher(run)
    refs, n = w.poll()
    assert n == len(refs) == 10 and len(reads) == 10
    assert w.poll() == (refs, 0) and len(reads) == 10  # known files are not read again
    (run / "w1" / "e00009.safetensors.x1.tmp").write_bytes(b"half")  # being written: ignored
    path = ck.checkpoint_path(run, 4, 2)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    refs2, n = w.poll()
    assert n == 1 and reads[-1] == str(path) and refs2 == refs
    assert refs2 == ck.discover(run)


def _replace_run(run: Path) -> None:
    """Overwrite run.json and labels.safetensors with another run's (other seed, other
    labels), as a folder wiped and refilled by another training would."""
    from ckpt_analyzer._atomic import atomic_write_json

    manifest = json.loads((run / "run.json").read_text())
    manifest["seed"] = int(manifest["seed"]) + 1
    labels = ck.read_labels(run)
    noisy = labels["noisy_mask"]
    train = labels["train_labels"].clone()
    train[noisy] = (train[noisy] + 1) % int(manifest["dataset"]["num_classes"])
    ck.save_labels(run, train, labels["clean_labels"], noisy)
    atomic_write_json(run / "run.json", manifest)


def test_follow_stops_when_the_run_is_replaced(digits_run: Path, tmp_path: Path) -> None:
    """A followed folder refilled by another run (other run.json and labels) stops the follower
    with one line naming run.json; nothing of the new run is measured into the cube."""
    import signal

    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("analysis.h5*"))
    (run / ck.DONE_FILE).unlink()
    (run / "w4" / ck.DONE_FILE).unlink()
    later = tmp_path / "later"
    later.mkdir()
    for e in (3, 4):  # the new run's checkpoints, written after its run.json
        ck.checkpoint_path(run, 4, e).rename(later / f"e{e:05d}.safetensors")
    cube = tmp_path / "c.h5"
    follower = subprocess.Popen([*ANALYZE, "run", str(run), "-o", str(cube), "--follow",
                                 "--poll", "0.2", "--idle-timeout", "120", "--probe", "metrics",
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        wait_for(lambda: done_cells(cube, "metrics") == 5 + 3, "the first run measured",
                 follower)
        follower.send_signal(signal.SIGSTOP)  # all of the new run lands between two looks
        try:
            _replace_run(run)
            for e in (3, 4):
                shutil.copy(later / f"e{e:05d}.safetensors", ck.checkpoint_path(run, 4, e))
            ck.mark_done(run, 4)
            ck.mark_done(run)
        finally:
            follower.send_signal(signal.SIGCONT)
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1, (out, err)
    assert err.strip().splitlines() == [
        f"error: {run / 'run.json'}: the run changed while it was followed (run.json and "
        "labels differ from the run this cube measured); start a new analysis"]
    with h5py.File(cube, "r") as f:
        done = f["metrics/done"][()]  # [epoch, width]
        epochs, widths = list(f["epoch"][()]), list(f["width"][()])
    assert widths == [1, 4] and done.sum() == 8
    assert not done[epochs.index(3), 1] and not done[epochs.index(4), 1]
    r = analyze("run", str(run), "-o", str(cube), "--probe", "metrics", "--quiet", check=False)
    assert r.returncode == 2 and "computed from another run" in r.stderr  # not mixed in later


def test_a_run_replaced_during_a_round_drops_that_rounds_cells(digits_run: Path,
                                                                 tmp_path: Path) -> None:
    """The check after a round: the cells that round measured may come from the new weights;
    they are dropped (and the cube rewritten) before the line."""
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.cube.identity import run_identity
    from ckpt_analyzer.errors import CkptError
    from ckpt_analyzer.runner.follow import same_run as _same_run
    from ckpt_analyzer.schema import Metric, Outputs

    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("analysis.h5*"))
    ident = run_identity(run)
    refs = {r.epoch: r for r in ck.discover(run) if r.width == 1}
    with Cube(tmp_path / "c.h5") as cube:
        cube.begin_probe("p", "1", {}, 0, Outputs(metrics={"v": Metric(())}), {})
        for e in (0, 1):
            cube.record("p", e, 1, {"v": np.float64(e)})
        _same_run(cube, run, ident, {0, 1}, {1}, [refs[1]])  # unchanged: nothing happens
        assert cube.done("p") == {(0, 1), (1, 1)}
        labels = ck.read_labels(run)
        ck.save_labels(run, labels["train_labels"].roll(1), labels["train_labels"].roll(1),
                       labels["noisy_mask"] | True)
        with pytest.raises(CkptError) as info:
            _same_run(cube, run, ident, {0, 1}, {1}, [refs[1]])
        assert str(info.value) == (f"{run / 'run.json'}: the run changed while it was followed "
                                   "(labels differ from the run this cube measured); start a "
                                   "new analysis")
        assert cube.done("p") == {(0, 1)}  # the round's cell is gone, the earlier one kept
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["p/done"][()].sum() == 1
