"""Scaling out: the pool and Ray executors, --shard and merge, the trainer's widths in parallel.

Every executor's cube must equal the serial one bit for bit when each computation runs with the
same number of torch threads (1 here: the serial run sets it, the workers get worker_threads=1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckpt_analyzer.cube.merge import merge_cubes
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.runner import Runner

ANALYZE = [sys.executable, "-m", "ckpt_analyzer.cli"]
PROBES = ["metrics", "spectrum", "sharpness"]
SETTINGS = {"spectrum": {"points": 20, "n": 16},
            "sharpness": {"samples": 8, "paths": 2}}

KILLER = '''
import os, signal
from dataclasses import dataclass, field
import numpy as np
from ckpt_analyzer.probes.base import Metric, Outputs, Probe


class Killer(Probe):
    """Kills its own process with SIGKILL at one cell, ``times`` times (counted in a file),
    never in the process ``spare_pid`` (the test's own)."""
    name = "killer"

    @dataclass(frozen=True)
    class Config:
        counter: str = field(default="", metadata={"help": "file counting the kills"})
        epoch: int = field(default=2, metadata={"help": "epoch to kill at"})
        width: int = field(default=4, metadata={"help": "width to kill at"})
        times: int = field(default=1, metadata={"help": "kills before behaving"})
        spare_pid: int = field(default=0, metadata={"help": "process never killed"})

    def outputs(self):
        return Outputs(coords={}, metrics={"one": Metric(dims=())})

    def __call__(self, model, ctx):
        c, ref = self.config, ctx.checkpoint
        if (ref.epoch, ref.width) == (c.epoch, c.width) and os.getpid() != c.spare_pid:
            n = int(open(c.counter).read() or 0) if os.path.exists(c.counter) else 0
            if n < c.times:
                with open(c.counter, "w") as fh:
                    fh.write(str(n + 1))
                os.kill(os.getpid(), signal.SIGKILL)
        return {"one": np.array(1.0)}
'''


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cube_arrays(path: Path, groups: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Every dataset of a cube (values, inputs, coordinates, done masks) as raw bytes."""
    out: dict[str, bytes] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            if groups is not None and "/" in name and name.split("/")[0] not in groups:
                return
            arr = obj[()]
            out[name] = (np.asarray(arr).astype(str).tobytes() if np.asarray(arr).dtype.kind == "O"
                         else np.asarray(arr).tobytes())
        f.visititems(visit)
    return out


def assert_same_cube(a: Path, b: Path, groups: tuple[str, ...] | None = None) -> None:
    xa, xb = cube_arrays(a, groups), cube_arrays(b, groups)
    assert xa.keys() == xb.keys()
    differ = [k for k in xa if xa[k] != xb[k]]
    assert not differ, f"datasets differ: {differ}"


def analysis(run: Path, out: Path, probes: list[str] = PROBES, **kw: object) -> Runner:
    settings = {k: v for k, v in {**SETTINGS, **kw.pop("settings", {})}.items()  # type: ignore[dict-item]
                if k in probes}
    return Runner(run_dir=str(run), probes=probes, output=str(out), settings=settings,
                    worker_threads=1, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def serial(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    with torch_threads(1):
        s = analysis(digits_run, out).run()
    assert s.computed == 10 and not s.failed
    return out


def killer_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "killer_probe.py"
    path.write_text(KILLER)
    return path


def test_pool_equals_serial_and_survives_sigkill(digits_run: Path, serial: Path,
                                                 tmp_path: Path) -> None:
    """Two spawned workers, one of them SIGKILLed mid-checkpoint: the checkpoint is retried on
    a new worker and the cube equals the serial one bit for bit."""
    from ckpt_analyzer.probes import load_plugin

    plugin = killer_plugin(tmp_path)
    load_plugin(str(plugin))
    counter = tmp_path / "kills"
    out = tmp_path / "pool.h5"
    a = analysis(digits_run, out, [*PROBES, "killer"], executor="pool", workers=2,
                 plugins=[str(plugin)],
                 settings={"killer": {"counter": str(counter), "spare_pid": os.getpid()}})
    s = a.run()
    assert s.computed == 10 and not s.failed and s.workers == 2 and s.executor == "pool"
    assert counter.read_text() == "1"  # one worker was killed once, mid-checkpoint
    assert_same_cube(serial, out, tuple(PROBES))


@pytest.mark.slow  # three worker start-ups (~15 s on 2 busy cores)
def test_pool_worker_dying_every_time_is_recorded_failed(digits_run: Path,
                                                         tmp_path: Path) -> None:
    from ckpt_analyzer.probes import load_plugin

    plugin = killer_plugin(tmp_path)
    load_plugin(str(plugin))
    counter = tmp_path / "kills"
    out = tmp_path / "dies.h5"
    s = analysis(digits_run, out, ["metrics", "killer"], executor="pool", workers=2,
                 widths=[4], epochs=[1, 2], plugins=[str(plugin)],
                 settings={"killer": {"counter": str(counter), "times": 99,
                                      "spare_pid": os.getpid()}}).run()
    assert counter.read_text() == "3"  # the first try and two retries
    assert s.computed == 1 and len(s.failed) == 1
    assert "killed by SIGKILL while measuring it, 3 times" in s.failed[0]["error"]
    with h5py.File(out, "r") as f:
        assert "SIGKILL" in f.attrs["failures"]


def test_shards_merged_equal_serial(digits_run: Path, serial: Path, tmp_path: Path) -> None:
    shards = []
    with torch_threads(1):
        for i in (1, 2, 3):
            out = tmp_path / f"s{i}.h5"
            s = analysis(digits_run, out, shard=(i, 3)).run()
            assert s.computed == (4, 3, 3)[i - 1]
            shards.append(out)
    merged = tmp_path / "all.h5"
    stats = merge_cubes(shards, merged)
    assert stats["cells"] == 30 and stats["duplicates"] == 0
    assert_same_cube(serial, merged)
    with h5py.File(serial, "r") as a, h5py.File(merged, "r") as b:
        for k in ("source", "run_json", "format"):
            assert a.attrs[k] == b.attrs[k]
    # a shard merged again with the whole: its cells are duplicates, equal
    again = tmp_path / "again.h5"
    assert merge_cubes([merged, shards[1]], again)["duplicates"] == 3 * 3


@pytest.fixture(scope="module")
def two_shards(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("shards")
    out = []
    for i in (1, 2):
        p = d / f"s{i}.h5"
        analysis(digits_run, p, ["metrics", "spectrum"], shard=(i, 2)).run()
        out.append(p)
    return out[0], out[1]


def _edited(src: Path, dst: Path, edit: object) -> Path:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)  # type: ignore[operator]
    return dst


def _bump_value(f: h5py.File) -> None:
    g = f["metrics"]
    i, j = (int(v[0]) for v in np.nonzero(g["done"][()]))
    ds = g["loss"]
    arr = ds[()]
    arr[i, j] = arr[i, j] + 1.0
    ds[...] = arr


@pytest.mark.parametrize("what, edit, message", [
    ("run", lambda f: f.attrs.__setitem__("source", "/elsewhere"),
     "different runs (root attribute 'source' differs)"),
    ("run.json", lambda f: f.attrs.__setitem__("run_json", "{}"), "'run_json' differs"),
    ("version", lambda f: f["spectrum"].attrs.__setitem__("probe_version", "99"),
     "probe 'spectrum' version differs"),
    ("config", lambda f: f["spectrum"].attrs.__setitem__(
        "config", f["spectrum"].attrs["config"].replace('"points": 20', '"points": 21')),
     "probe 'spectrum' config differs (points)"),
    ("seed", lambda f: f["spectrum"].attrs.__setitem__("seed", 7), "probe 'spectrum' seed differs"),
    ("inputs", lambda f: f["spectrum/inputs/train/direction"].__setitem__(
        (0, 0, 0, 0), 0.5), "probe 'spectrum' fixed input 'train/direction' differs"),
    ("probes", lambda f: f.__delitem__("spectrum"), "probe 'spectrum' is only in"),
])
def test_merge_refuses(two_shards: tuple[Path, Path], tmp_path: Path, what: str, edit: object,
                       message: str) -> None:
    a, b = two_shards
    bad = _edited(b, tmp_path / f"{what}.h5", edit)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge_cubes([a, bad], tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_merge_refuses_unequal_duplicate_self_and_non_cube(two_shards: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    a, b = two_shards
    bad = _edited(a, tmp_path / "bumped.h5", _bump_value)
    with pytest.raises(UsageError, match=r"probe 'metrics' cell epoch \d+ width \d+ differs "
                                         r"\(metric 'loss'\)"):
        merge_cubes([a, bad], tmp_path / "o1.h5")
    with pytest.raises(UsageError, match="given twice"):
        merge_cubes([a, b, a], tmp_path / "o2.h5")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CkptError, match="not a ckpt-analyzer cube"):
        merge_cubes([a, tmp_path / "x.txt"], tmp_path / "o3.h5")
    with pytest.raises(UsageError, match="is one of the inputs"):
        merge_cubes([a, b], b)
    (tmp_path / "taken.h5").write_text("")
    with pytest.raises(UsageError, match="exists"):
        merge_cubes([a, b], tmp_path / "taken.h5")
    r = subprocess.run([*ANALYZE, "merge", str(a), str(a), "-o", str(tmp_path / "o4.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message, code", [
    (["--workers", "0"], "--workers", 2),
    (["--shard", "4/3"], "--shard '4/3'", 2),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], "does not answer", 1),
])
def test_bad_scale_options(digits_run: Path, tmp_path: Path, args: list[str], message: str,
                           code: int) -> None:
    if "ray" in args:
        pytest.importorskip("ray")
    t0 = time.monotonic()
    r = subprocess.run([*ANALYZE, "run", str(digits_run), "--probe", "metrics", "-q",
                        "-o", str(tmp_path / "c.h5"), *args], capture_output=True, text=True)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert time.monotonic() - t0 < 30


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt_analyzer.executors import ray as ray_exec

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'ckpt-analyzer\[ray\]'"):
        ray_exec.import_ray()


def test_more_workers_than_checkpoints(digits_run: Path, tmp_path: Path) -> None:
    s = analysis(digits_run, tmp_path / "one.h5", ["metrics"], executor="pool", workers=5,
                 widths=[1], epochs=[3]).run()
    assert s.computed == 1 and s.workers == 1


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_equals_serial_and_survives_sigkill(ray_cluster: object, digits_run: Path,
                                                serial: Path, tmp_path: Path) -> None:
    """Two Ray actors on a local cluster, one SIGKILLed mid-checkpoint: retried on a new actor,
    the cube equals the serial one bit for bit."""
    from ckpt_analyzer.probes import load_plugin

    plugin = killer_plugin(tmp_path)
    load_plugin(str(plugin))
    counter = tmp_path / "kills"
    out = tmp_path / "ray.h5"
    s = analysis(digits_run, out, [*PROBES, "killer"], executor="ray", workers=2,
                 plugins=[str(plugin)],
                 settings={"killer": {"counter": str(counter), "spare_pid": os.getpid()}}).run()
    assert s.computed == 10 and not s.failed and s.executor == "ray"
    assert counter.read_text() == "1"
    assert_same_cube(serial, out, tuple(PROBES))


def _checkpoints(run: Path) -> dict[str, tuple[dict[str, str], dict[str, bytes]]]:
    from safetensors import safe_open

    out = {}
    for p in sorted(run.glob("w*/e*.safetensors")):
        with safe_open(str(p), "pt") as f:
            # safetensors writes the metadata in hash order: compare contents, not file bytes
            out[str(p.relative_to(run))] = (dict(f.metadata()),
                                           {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()})
    return out


def test_trainer_widths_in_parallel_equal_serial(tmp_path: Path) -> None:
    import torch

    from ckpt_analyzer.train.loop import TrainConfig, Trainer
    from ckpt_analyzer.train.parallel import train_one_width, train_widths

    cfg = TrainConfig(widths=(1, 2), epochs=2, label_noise=0.2, lr=1e-3, seed=5)
    with torch_threads(1):
        t = Trainer(cfg, tmp_path / "serial", torch.device("cpu"))
        t.prepare()
        t.run()
    t = Trainer(cfg, tmp_path / "par", torch.device("cpu"))
    t.prepare()
    res = train_widths(cfg, tmp_path / "par", "cpu", workers=2, threads=1)
    assert [r.width for r in res] == [1, 2]
    a, b = _checkpoints(tmp_path / "serial"), _checkpoints(tmp_path / "par")
    assert a.keys() == b.keys() and len(a) == 6
    assert a == b
    # the worker's unit is the resumable serial one: a finished width is not trained again
    assert train_one_width(cfg, str(tmp_path / "par"), "cpu", 2, None).resumed_from == cfg.epochs
