"""What a run refuses and how it says so: SIGTERM during a probe, read-only and full disks,
disk faults inside probes, files that are no regular file, bad metadata, unused huge tensors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import analyze, analyze_process, copy_run, failures, one_line

import ckpt_analyzer.checkpoints as ck
from ckpt_analyzer.errors import CheckpointError, CkptError, DiskError

PLUGIN = textwrap.dedent('''
    import errno
    import os
    import signal
    from pathlib import Path

    import numpy as np

    from ckpt_analyzer.probes.base import Metric, Outputs, Probe

    TRIGGER = Path(os.environ["REFUSAL_TRIGGER"])

    class _Base(Probe):
        def outputs(self):
            return Outputs(metrics={"value": Metric(())})

        def __call__(self, model, ctx):
            return {"value": np.float64(ctx.checkpoint.epoch)}

    class Terminates(_Base):
        """SIGTERM to its own process while it measures width 1 epoch 2 (once: the trigger
        file is removed first, so a re-run goes through)."""
        name = "rf_term"

        def __call__(self, model, ctx):
            ref = ctx.checkpoint
            if (ref.width, ref.epoch) == (1, 2) and TRIGGER.exists():
                TRIGGER.unlink()
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(model, ctx)

    class DiskFull(_Base):
        name = "rf_full"

        def __call__(self, model, ctx):
            if ctx.checkpoint.epoch == 2:
                raise OSError(errno.ENOSPC, "No space left on device", "/scratch/rf.tmp")
            return super().__call__(model, ctx)

    class DiskFault(_Base):
        name = "rf_eio"

        def __call__(self, model, ctx):
            if ctx.checkpoint.epoch == 2:
                raise OSError(errno.EIO, "Input/output error")
            return super().__call__(model, ctx)

    class NotFound(_Base):
        name = "rf_enoent"

        def __call__(self, model, ctx):
            if ctx.checkpoint.epoch == 2:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")
            return super().__call__(model, ctx)
''')


@pytest.fixture()
def run(digits_run: Path, tmp_path: Path) -> Path:
    return copy_run(digits_run, tmp_path / "run", cubes=False)


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rf_plugin.py"
    path.write_text(PLUGIN)
    monkeypatch.setenv("REFUSAL_TRIGGER", str(tmp_path / "trigger"))
    return path


# ---------------------------------------------------------------- signals
def test_sigterm_during_a_probe_stops_the_run(run: Path, plugin: Path, tmp_path: Path) -> None:
    """In a child process: the probe sends SIGTERM to its own process."""
    (tmp_path / "trigger").touch()
    cube = tmp_path / "c.h5"
    args = ["run", str(run), "--plugin", str(plugin), "--probe", "metrics",
            "--probe", "rf_term", "-o", str(cube), "--quiet"]
    r = analyze_process(*args, code=1)
    assert one_line(r.stderr) == (f"error: {cube}: terminated: finished checkpoints are kept; "
                                  "re-run to resume")
    assert not (tmp_path / "trigger").exists()  # the probe did send it
    assert failures(cube) == []  # no false failure of the probe
    with h5py.File(cube, "r") as f:
        done = f["rf_term/done"][()]
        assert done.sum() == 2  # width 1 epochs 0, 1: the run stopped at epoch 2
    r = analyze_process(*args)  # resumes
    assert "8 checkpoint(s) measured, 2 already done, 0 failed" in r.stdout
    with h5py.File(cube, "r") as f:
        assert f["rf_term/done"][()].all() and f["metrics/done"][()].all()
        np.testing.assert_array_equal(f["rf_term/value"][()],
                                      np.repeat(f["epoch"][()][:, None], 2, axis=1))


# ---------------------------------------------------------------- disk faults inside a probe
@pytest.mark.parametrize("probe, line", [
    ("rf_full", "probe 'rf_full': disk full at /scratch/rf.tmp (No space left on device); "
                "the run stops, finished checkpoints are kept: re-run to resume"),
    ("rf_eio", "probe 'rf_eio': disk I/O error (Input/output error); the run stops"),
])
def test_a_disk_fault_in_a_probe_stops_the_run(run: Path, plugin: Path, tmp_path: Path,
                                               probe: str, line: str) -> None:
    cube = tmp_path / "c.h5"
    r = analyze("run", str(run), "--plugin", str(plugin), "--probe", probe,
                "-o", str(cube), "--quiet", code=1)
    assert line in one_line(r.stderr)
    assert failures(cube) == []  # not stored as the probe's failure
    with h5py.File(cube, "r") as f:
        assert f[f"{probe}/done"][()].sum() == 2  # width 1 epochs 0, 1, then it stopped


def test_other_oserrors_stay_the_probes_failure(run: Path, plugin: Path, tmp_path: Path) -> None:
    cube = tmp_path / "c.h5"
    analyze("run", str(run), "--plugin", str(plugin), "--probe",
                "rf_enoent", "-o", str(cube), "--quiet", code=1)
    fails = failures(cube)
    assert [(x["epoch"], x["width"]) for x in fails] == [(2, 1), (2, 4)]
    assert all("probe 'rf_enoent' failed: FileNotFoundError" in x["error"] for x in fails)


# ---------------------------------------------------------------- read-only and full disks
@contextlib.contextmanager
def mounted(path: Path, *options: str) -> Iterator[Path]:
    """A tmpfs at ``path`` (root can mount in this sandbox; skipped where it cannot)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options or ("size=64m",)),
                        "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_read_only_run_folder_is_not_called_full(run: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "ro") as ro:
        shared = ro / "run"
        shutil.copytree(run, shared)
        remount_ro(ro)
        r = analyze("run", str(shared), "--probe", "metrics", "--quiet", code=1)
        line = one_line(r.stderr)
        assert line.startswith(f"error: {shared / 'analysis.h5.journal'}: cannot write the "
                               "cube's journal (")
        assert "read-only or permission denied; write the cube elsewhere (-o)" in line, line
        assert "full" not in line
        r = analyze("run", str(shared), "--probe", "metrics", "--quiet", "-o",
                    str(tmp_path / "mine.h5"))  # the way out it names


def test_full_disk_says_full(run: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "tiny", "size=96k") as tiny:
        r = analyze("run", str(run), "--probe", "metrics", "--probe",
                    "spectrum", "--set", "spectrum.points=40", "--quiet",
                    "-o", str(tiny / "c.h5"), code=1)
        line = one_line(r.stderr)
        assert str(tiny) in line and "disk full" in line and "read-only" not in line, line


def test_atomic_write_names_the_target_and_the_cause(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt_analyzer._atomic import atomic_write_bytes

    with mounted(tmp_path / "ro") as ro:
        remount_ro(ro)
        with pytest.raises(DiskError) as info:
            atomic_write_bytes(ro / "x.json", b"{}")
        assert str(info.value) == (f"{ro / 'x.json'}: cannot write (Read-only file system): "
                                   "read-only or permission denied; the previous file, if any, "
                                   "is unchanged")
    for code, cause in ((errno.EACCES, "read-only or permission denied"),
                        (errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"),
                        (errno.EIO, "disk I/O error")):
        def refuse(*a: object, _code: int = code) -> None:
            raise OSError(_code, os.strerror(_code))

        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(DiskError, match=f"x.json: cannot write .*: {cause};"):
            atomic_write_bytes(tmp_path / "x.json", b"{}")
        assert not list(tmp_path.glob("x.json*"))  # no temporary left


@pytest.mark.parametrize("message, name, cause", [
    ("attempt to write a readonly database", "SQLITE_READONLY", "read-only or permission denied"),
    ("database or disk is full", "SQLITE_FULL", "disk full"),
])
def test_journal_errors_by_sqlites_words(tmp_path: Path, message: str, name: str,
                                         cause: str) -> None:
    from ckpt_analyzer.cube.faults import journal_error as _journal_error

    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    err = _journal_error(exc, tmp_path / "c.h5.journal")
    assert f"cannot write the cube's journal ({message}): {cause}" in str(err)
    plain = _journal_error(sqlite3.OperationalError(message), tmp_path / "c.h5.journal")
    assert cause in str(plain)  # from the words alone


# ---------------------------------------------------------------- files that are no regular file
def test_special_files_named_like_checkpoints_are_failures(run: Path, tmp_path: Path) -> None:
    w1 = run / "w1"
    (w1 / "e00005.safetensors").symlink_to("/dev/zero")
    (w1 / "e00006.safetensors").symlink_to("/dev/urandom")
    os.mkfifo(w1 / "e00007.safetensors")  # opened for reading, this would block for ever
    (w1 / "e00008.safetensors").symlink_to(w1 / "loop")
    (w1 / "loop").symlink_to(w1 / "e00008.safetensors")
    (w1 / "e00009.safetensors").symlink_to(w1 / "gone.safetensors")
    cube = tmp_path / "c.h5"
    # in a child with a time limit: were the FIFO opened, the run would block for ever
    r = analyze_process("run", run, "--probe", "metrics", "-o", cube, "--quiet", code=1)
    want = {5: "not a regular file (character device)",
            6: "not a regular file (character device)",
            7: "not a regular file (FIFO)",
            8: "symlink loop (too many levels of symbolic links)",
            9: "broken symlink (its target does not exist)"}
    got = {x["epoch"]: x["error"] for x in failures(cube)}
    assert got == {e: f"{w1 / f'e{e:05d}.safetensors'}: {why}" for e, why in want.items()}
    for e, why in want.items():
        assert f"e{e:05d}.safetensors: {why}" in r.stdout + r.stderr
    with h5py.File(cube, "r") as f:  # every real checkpoint is measured
        assert f["metrics/done"][()].sum() == 10


def test_read_header_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"f.safetensors: not a regular file \(FIFO\)"):
        ck.read_header(fifo)
    with pytest.raises(CheckpointError, match=r"not a regular file \(character device\)"):
        ck.read_state_dict(_link(tmp_path, "/dev/zero"))


def _link(tmp_path: Path, target: str) -> Path:
    p = tmp_path / "z.safetensors"
    p.symlink_to(target)
    return p


# ---------------------------------------------------------------- metadata
@pytest.mark.parametrize("key, value, why", [
    ("epoch", "-3", "bad metadata value: epoch -3 (must be >= 0)"),
    ("width", "0", "bad metadata value: width 0 (must be >= 1)"),
    ("width", "-2", "bad metadata value: width -2 (must be >= 1)"),
    ("num_classes", "0", "bad metadata value: num_classes 0 (must be >= 1)"),
])
def test_out_of_range_metadata_is_a_failure(run: Path, tmp_path: Path, key: str, value: str,
                                            why: str) -> None:
    path = ck.checkpoint_path(run, 1, 2)
    state = {k: v.clone() for k, v in ck.read_state_dict(path).items()}  # before rewriting
    meta = dict(ck.read_header(path)[1], **{key: value})
    ck.save_tensors(path, state, meta)
    refs = {r.path: r for r in ck.discover(run)}
    assert refs[str(path)].error == f"{path}: {why}"
    analyze("run", str(run), "--probe", "metrics", "--quiet", "-o",
                str(tmp_path / "c.h5"), code=1)
    assert [x["error"] for x in failures(tmp_path / "c.h5")] == [f"{path}: {why}"]


def test_metadata_integers_property() -> None:
    """Any integer strings: parse_metadata returns values within the bounds or refuses with
    one line naming the file; it never raises anything else."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = {"format": ck.CKPT_FORMAT, "arch": "mcnn", "width": "1", "epoch": "0", "step": "0",
            "num_classes": "10", "in_channels": "1", "image_size": "8", "train_loss": "0.1",
            "train_error": "0.0"}
    field = st.sampled_from(["width", "epoch", "step", "num_classes", "in_channels"])
    text = st.one_of(st.integers(-10**6, 10**6).map(str), st.text(max_size=8))

    @settings(max_examples=300, deadline=None)
    @given(field, text)
    def check(key: str, value: str) -> None:
        try:
            out = ck.parse_metadata(dict(base, **{key: value}), "/r/w1/e00000.safetensors")
        except CheckpointError as exc:
            assert str(exc).startswith("/r/w1/e00000.safetensors: bad metadata value")
            assert "\n" not in str(exc)
            return
        assert out[key] == int(value)
        assert out["width"] >= 1 and out["epoch"] >= 0 and out["step"] >= -1
        assert out["num_classes"] >= 1 and out["in_channels"] >= 1

    check()


# ---------------------------------------------------------------- an unused huge tensor
HUGE = 4 << 30  # bytes of the unused tensor (a sparse region: no disk, no memory)


def write_with_unused(path: Path, state: dict, meta: dict, prefix: str, huge: int) -> None:
    """A safetensors file by hand: the model's tensors under ``prefix`` and, after them, an
    unused float32 tensor of ``huge`` bytes whose data is a hole (``truncate``)."""
    import torch

    names = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64"}
    header: dict = {"__metadata__": meta}
    blobs, offset = [], 0
    for k, v in state.items():
        b = v.contiguous().numpy().tobytes()
        header[prefix + k] = {"dtype": names[v.dtype], "shape": list(v.shape),
                              "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["teacher.unused"] = {"dtype": "F32", "shape": [huge // 4],
                                "data_offsets": [offset, offset + huge]}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
        fh.truncate(8 + len(head) + offset + huge)


def test_an_unused_huge_tensor_is_never_read(run: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the model's tensors are looked up, so a 4 GiB tensor outside the model's prefix is
    never read: the run's peak memory stays far below it, and its numbers are those of the
    file without it."""
    path = ck.checkpoint_path(run, 4, 4)
    state = {k: v.clone() for k, v in ck.read_state_dict(path).items()}  # before rewriting
    meta = ck.read_header(path)[1]
    reference = tmp_path / "ref.h5"
    analyze("run", str(run), "--probe", "metrics", "--quiet", "-o",
                str(reference), "--widths", "4")
    write_with_unused(path, state, meta, "model.", HUGE)
    st = path.stat()
    assert st.st_size > HUGE and st.st_blocks * 512 < 64 << 20  # sparse: costs no disk
    assert ck.SafetensorsState(path).shape("teacher.unused") == (HUGE // 4,)
    cube = tmp_path / "c.h5"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    analyze_process("run", run, "--probe", "metrics", "--quiet", "-o", cube, "--widths", "4")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the child's peak
    assert peak_kib < 1536 * 1024, (before, peak_kib)  # far below the 4 GiB it would take
    with h5py.File(cube, "r") as f, h5py.File(reference, "r") as g:
        assert f["metrics/done"][()].all()
        np.testing.assert_array_equal(f["metrics/loss"][()], g["metrics/loss"][()])
    read: list[str] = []
    real = ck.SafetensorsState._get
    monkeypatch.setattr(ck.SafetensorsState, "_get",
                        lambda self, key: read.append(key) or real(self, key))
    analyze("run", str(run), "--probe", "metrics", "--quiet", "-o",
                str(tmp_path / "in.h5"), "--widths", "4")
    assert read and "teacher.unused" not in read


def test_load_model_reads_only_the_models_tensors(run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.checkpoint_path(run, 1, 4)
    state = {k: v.clone() for k, v in ck.read_state_dict(path).items()}  # before rewriting
    write_with_unused(path, state, ck.read_header(path)[1], "model.", 1 << 30)
    read: list[str] = []
    real = ck.SafetensorsState._get  # the one read from the file (lookups are cached)

    def counting(self: ck.SafetensorsState, key: str) -> object:
        read.append(key)
        return real(self, key)

    monkeypatch.setattr(ck.SafetensorsState, "_get", counting)
    model = ck.load_model(path)
    assert sorted(read) == sorted("model." + k for k in state)
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), state[k].numpy()), k


def test_unexpected_top_level_tensor_is_refused_unread(run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.checkpoint_path(run, 1, 4)
    state = {k: v.clone() for k, v in ck.read_state_dict(path).items()}  # before rewriting
    write_with_unused(path, state, ck.read_header(path)[1], "", 1 << 30)
    read: list[str] = []
    real = ck.SafetensorsState._get
    monkeypatch.setattr(ck.SafetensorsState, "_get",
                        lambda self, key: read.append(key) or real(self, key))
    with pytest.raises(CkptError, match="does not fit the model: unexpected tensor "
                                        "'teacher.unused'"):
        ck.load_model(path)
    assert read == []  # refused from the header alone
