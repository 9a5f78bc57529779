"""One writer per run folder, and RunWriter's argument and completeness checks (issue 20,
parts 4 and 8)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_analyzer import RunWriter
from ckpt_analyzer.checkpoints import LOCK_FILE, RunLock, create_run_json, is_done, read_run_json
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.models import build_model
from ckpt_analyzer.train.cli import main as train_main

SMALL = {"model": "mcnn", "dataset": "digits", "widths": [1], "epochs": 2, "evaluate": False}
TRAIN = ["--widths", "1", "--epochs", "1", "--quiet"]


def hold(script: str, *args: str) -> subprocess.Popen[str]:
    """A subprocess that runs ``script``, prints ``ready`` and sleeps until killed."""
    code = textwrap.dedent(script) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"holder did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# ---------------------------------------------------------------- the lock itself
def test_second_run_writer_in_the_same_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = RunWriter(out, **SMALL)
    assert (out / LOCK_FILE).is_file()
    holder = json.loads((out / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["writer"] == "RunWriter"
    with pytest.raises(CkptError) as err:
        RunWriter(out, **SMALL)
    msg = str(err.value)
    assert msg.startswith(f"{out}: is being written by another RunWriter (pid {os.getpid()} on "
                          f"{socket.gethostname()}, since ")
    assert msg.endswith("; wait until it ends, or write to another folder") and "\n" not in msg
    with pytest.raises(CkptError, match="is being written by another RunWriter"):
        RunWriter(out, **{**SMALL, "epochs": 5})  # other settings: the lock is checked first
    assert read_run_json(out)["epochs"] == 2  # type: ignore[index]
    with pytest.warns(UserWarning, match="not marked done"):
        first.close()
    assert not (out / LOCK_FILE).exists()  # a writer that ends removes its lock file
    second = RunWriter(out, **SMALL)  # the run continues with a new writer
    with pytest.raises(UsageError, match="is closed"):
        first.save(build_model("mcnn", 1, 10, 1), width=1, epoch=0)
    second._release()


def test_a_live_holder_process_makes_ckpt_train_refuse(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = hold("import sys\nfrom ckpt_analyzer.checkpoints import RunLock\n"
                "lock = RunLock(sys.argv[1], 'ckpt-train').acquire()", str(out))
    try:
        r = CliRunner().invoke(train_main, [str(out), *TRAIN])
        assert r.exit_code == 1, r.output
        line = r.stderr.strip()
        assert line.startswith(f"error: {out}: is being written by another ckpt-train (pid "
                               f"{proc.pid} on {socket.gethostname()}, since ")
        assert "\n" not in line
        assert not (out / "run.json").exists()  # the refused trainer wrote nothing
    finally:
        kill(proc)
    # the holder was killed (SIGKILL): the kernel dropped its lock, the re-run trains
    assert (out / LOCK_FILE).exists()  # left by the killed holder; it means nothing now
    r = CliRunner().invoke(train_main, [str(out), *TRAIN])
    assert r.exit_code == 0, r.output
    assert is_done(out) and not (out / LOCK_FILE).exists()
    # resuming the finished run (same command) is a normal operation
    r = CliRunner().invoke(train_main, [str(out), *TRAIN])
    assert r.exit_code == 0, r.output


def test_writer_killed_while_creating_its_folder_does_not_block_the_rerun(tmp_path: Path) -> None:
    """A RunWriter killed mid-way (lock taken, labels written, run.json still a temporary)."""
    out = tmp_path / "run"
    proc = hold("""
        import sys
        from pathlib import Path
        from ckpt_analyzer.checkpoints import RunLock, save_labels
        out = Path(sys.argv[1])
        lock = RunLock(out, 'RunWriter').acquire()
        save_labels(out, [0, 1], [0, 1], [0, 0])
        (out / 'run.json.0123abcd.tmp').write_text('{')
    """, str(out))
    kill(proc)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "labels.safetensors",
                                                     "run.json.0123abcd.tmp"]
    w = RunWriter(out, **SMALL)  # reused: what a writer leaves before run.json is not a run
    assert read_run_json(out) is not None and not list(out.glob("*.tmp"))
    net = build_model("mcnn", 1, w.num_classes, w.in_channels)
    for e in (0, 1, 2):
        w.save(net, width=1, epoch=e)
    w.finish(1)
    w.close()
    assert is_done(out)


def test_killed_run_writer_process_is_resumed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = hold("""
        import sys
        from ckpt_analyzer import RunWriter
        w = RunWriter(sys.argv[1], model='mcnn', dataset='digits', widths=[1], epochs=2,
                      evaluate=False)
    """, str(out))
    with pytest.raises(CkptError, match=f"another RunWriter \\(pid {proc.pid} "):
        RunWriter(out, **SMALL)
    kill(proc)
    w = RunWriter(out, **SMALL)  # the same settings continue the killed run
    w._release()


def test_two_writers_started_together_one_wins(tmp_path: Path) -> None:
    """Two processes on one new folder at the same moment: exactly one writes the run."""
    out, go = tmp_path / "run", tmp_path / "go"
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        while not Path(sys.argv[2]).exists():
            time.sleep(0.005)
        from ckpt_analyzer import RunWriter
        from ckpt_analyzer.errors import CkptError
        try:
            w = RunWriter(sys.argv[1], model='mcnn', dataset='digits', widths=[1], epochs=2,
                          evaluate=False, seed=int(sys.argv[3]))
        except CkptError as exc:
            print(exc, file=sys.stderr)
            sys.exit(1)
        time.sleep(1.0)  # hold the folder while the other one tries
        w._release()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out), str(go), str(seed)],
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    time.sleep(1.5)  # both imported, waiting
    go.write_text("")
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    loser = next(err for rc, err in results if rc == 1)
    assert any(m in loser for m in ("is being written by another RunWriter", "holds a run with "
                                    "other settings", "was created by another writer")), results
    winner_seed = 1 + [rc for rc, _ in results].index(0)
    assert read_run_json(out)["seed"] == winner_seed  # type: ignore[index]


def test_run_json_is_created_exclusively(tmp_path: Path) -> None:
    create_run_json(tmp_path, {"a": 1})
    with pytest.raises(CkptError, match="run.json: was created by another writer"):
        create_run_json(tmp_path, {"a": 2})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_lock_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CkptError, match="is a link, not a lock file"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / "elsewhere").read_text() == "x"


# ---------------------------------------------------------------- RunWriter arguments (part 8)
@pytest.mark.parametrize("kwargs, message", [
    ({"widths": [2.5]}, r"^widths\[0\]: must be an integer >= 1 \(got float 2.5\)$"),
    ({"widths": [1, 2.0]}, r"^widths\[1\]: must be an integer >= 1 \(got float 2.0\)$"),
    ({"widths": [True]}, r"^widths\[0\]: must be an integer >= 1 \(got the bool True\)$"),
    ({"widths": [0]}, r"^widths\[0\]: must be an integer >= 1 \(got 0\)$"),
    ({"widths": ["2"]}, r"^widths\[0\]: must be an integer >= 1 \(got str '2'\)$"),
    ({"widths": "28"}, r"^widths: must be a list of integers \(got str '28'\)$"),
    ({"widths": 4}, r"^widths: must be a list of integers \(got int 4\)$"),
    ({"widths": []}, r"^widths: must not be empty$"),
    ({"widths": [2, 2]}, r"^widths: 2 is given twice$"),
    ({"epochs": 2.5}, r"^epochs: must be an integer >= 0 \(got float 2.5\)$"),
    ({"epochs": -1}, r"^epochs: must be an integer >= 0 \(got -1\)$"),
    ({"epochs": True}, r"^epochs: must be an integer >= 0 \(got the bool True\)$"),
    ({"epochs": 3, "save": [0, 1.5]}, r"^save\[1\]: must be an integer >= 0 \(got float 1.5\)$"),
    ({"epochs": 3, "save": [0, -1]}, r"^save\[1\]: must be an integer >= 0 \(got -1\)$"),
    ({"epochs": 3, "save": [0, 4]}, r"^save: epoch 4 is outside 0..3$"),
    ({"seed": -1}, r"^seed: must be an integer >= 0 \(got -1\)$"),
    ({"seed": 1.5}, r"^seed: must be an integer >= 0 \(got float 1.5\)$"),
    ({"split_seed": False}, r"^split_seed: must be an integer >= 0 \(got the bool False\)$"),
    ({"batch_size": 0}, r"^batch_size: must be an integer >= 1 \(got 0\)$"),
    ({"label_noise": "0.2"}, r"^label_noise: must be a number in \[0, 1\) \(got '0.2'\)$"),
    ({"noise_classes": [0.5]}, r"^noise_classes\[0\]: must be an integer >= 0"),
])
def test_run_writer_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any],
                                        message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        RunWriter(out, model="mcnn", **kwargs)
    assert not out.exists()  # refused before anything is written


def test_run_writer_accepts_numpy_integers(tmp_path: Path) -> None:
    w = RunWriter(tmp_path / "run", model="mcnn", widths=np.array([1, 2]), epochs=np.int64(1),
                  evaluate=False)
    assert w.widths == [1, 2] and w.epochs == 1 and type(w.widths[0]) is int
    assert read_run_json(tmp_path / "run")["widths"] == [1, 2]  # type: ignore[index]
    w._release()


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 1.5, "epoch": 0}, r"^save\(width=\): must be an integer >= 1 \(got float 1.5\)$"),
    ({"width": 1, "epoch": 0.5}, r"^save\(epoch=\): must be an integer >= 0 \(got float 0.5\)$"),
    ({"width": 1, "epoch": -1}, r"^save\(epoch=\): must be an integer >= 0 \(got -1\)$"),
    ({"width": True, "epoch": 0}, r"^save\(width=\): must be an integer >= 1 \(got the bool"),
    ({"width": 1, "epoch": 0, "step": 2.5}, r"^save\(step=\): must be an integer >= 0"),
])
def test_save_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    w = RunWriter(tmp_path / "run", **SMALL)
    net = build_model("mcnn", 1, w.num_classes, w.in_channels)
    with pytest.raises(UsageError, match=message):
        w.save(net, **kwargs)
    assert not list((tmp_path / "run").glob("w*/*"))
    with pytest.raises(UsageError, match=r"^finish\(width\): must be an integer >= 1 \(got float"):
        w.finish(1.0)  # type: ignore[arg-type]
    w._release()


# ---------------------------------------------------------------- completeness (part 8)
def test_finish_and_close_name_missing_checkpoints_and_mark_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    w = RunWriter(out, model="mcnn", dataset="digits", widths=[1, 2], epochs=4, save=[0, 2, 4],
                  evaluate=False)
    for width in (1, 2):
        w.save(build_model("mcnn", width, w.num_classes, w.in_channels), width=width, epoch=0)
    with pytest.raises(CkptError) as err:
        w.finish(1)
    assert str(err.value) == (f"{out}/w1: finish(width=1): planned checkpoint(s) of epoch 2, 4 "
                              "missing; width 1 not marked done")
    assert not is_done(out, 1)
    with pytest.warns(UserWarning) as rec:
        w.close()
    assert [str(r.message) for r in rec] == [
        f"RunWriter: {out} not marked done, planned checkpoints missing: width 1: epoch 2, 4; "
        "width 2: epoch 2, 4"]
    assert not is_done(out) and not is_done(out, 1) and not is_done(out, 2)


def test_close_without_a_width_plan_checks_the_save_schedule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    w = RunWriter(out, model="mcnn", dataset="digits", epochs=2, evaluate=False)
    net = build_model("mcnn", 3, w.num_classes, w.in_channels)
    w.save(net, width=3, epoch=0)
    w.save(net, width=3, epoch=2)
    with pytest.warns(UserWarning, match=r"missing: width 3: epoch 1$"):
        w.close()
    assert not is_done(out, 3) and not is_done(out)


def test_complete_run_is_marked(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunWriter(out, **SMALL) as w:
        net = build_model("mcnn", 1, w.num_classes, w.in_channels)
        for e in range(3):
            w.save(net, width=1, epoch=e)
        w.finish(1)
    assert is_done(out, 1) and is_done(out) and not (out / LOCK_FILE).exists()
    assert json.loads((out / "w1" / "done").read_text())["epochs"] == [0, 1, 2]


def test_follower_does_not_report_an_incomplete_run_complete(tmp_path: Path) -> None:
    """A writer that stopped short (close() with planned checkpoints missing): --follow
    waits for the markers, and says the run is not marked done when it gives up."""
    from ckpt_analyzer.runner import Runner

    out = tmp_path / "run"
    w = RunWriter(out, **SMALL)
    net = build_model("mcnn", 1, w.num_classes, w.in_channels)
    w.save(net, width=1, epoch=0)
    w.save(net, width=1, epoch=1)
    with pytest.raises(CkptError, match="epoch 2 missing"):
        w.finish(1)
    with pytest.warns(UserWarning, match="not marked done"):
        w.close()
    summary = Runner(str(out), ["metrics"], device="cpu", follow=True, poll=0.05,
                     idle_timeout=0.5).run()
    assert summary.stopped is not None and "the run is not marked done" in summary.stopped
    assert summary.computed == 2


def test_a_registered_factory_is_recorded_by_name(tmp_path: Path) -> None:
    import warnings

    from ckpt_analyzer.models.mcnn import mcnn

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a registered factory needs no flag: no warning
        w = RunWriter(tmp_path / "run", model=mcnn, dataset="digits", evaluate=False)
    assert w.arch == "mcnn"
    w._release()


def test_other_ranks_of_a_distributed_job_do_not_lock_or_create(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("LOCAL_RANK", "1")
    other = RunWriter(out, **SMALL)  # e.g. a DDP rank > 0: rank 0 owns the folder
    assert not out.exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    main = RunWriter(out, **SMALL)
    assert read_run_json(out) is not None and (out / LOCK_FILE).is_file()
    monkeypatch.setenv("LOCAL_RANK", "1")
    other.close()  # a no-op on other ranks: marks nothing, releases nothing of rank 0's
    assert (out / LOCK_FILE).is_file() and not is_done(out)
    main._release()
