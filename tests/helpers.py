"""Shared test helpers: importable builders, CLI invokers and cube readers.

``conftest.py`` keeps the fixtures of shared data (the session's trained ``digits_run``, the
device); this module holds plain functions a test imports (``from helpers import analyze``):

- CLI: :func:`analyze` / :func:`train` run ``ckpt-analyze`` / ``ckpt-train`` in-process through
  click's ``CliRunner`` (no interpreter start); an exception that escapes the command fails the
  call, so a crash never passes for an expected exit code. :func:`analyze_process` /
  :func:`train_process` start a fresh interpreter, for the tests where the process boundary is
  the point (signals, ``kill -9``, a child's peak memory, environment read at start, entry
  points on a ``PYTHONPATH``, locks between processes, a hang guarded by a time limit).
- run folders: :func:`copy_run`, :func:`foreign_folder` (checkpoints without the contract),
  :func:`measure` (a run copied and analyzed into a real cube).
- cubes: :func:`write_cube` (a synthetic cube from per-cell values), :func:`datasets` /
  :func:`assert_same_datasets` (h5 contents, bit for bit), :func:`journal_cells`,
  :func:`failures`.
- messages: :func:`one_line` (the single ``error: ...`` line of a refusal); registries:
  :func:`registered` (built-ins registered for a test where no entry points are active).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: ``ckpt-analyze`` / ``ckpt-train`` as a fresh interpreter runs them (the worktree's code wins
#: through ``PYTHONPATH``, which the child inherits)
ANALYZE = [sys.executable, "-m", "ckpt_analyzer.cli"]
TRAIN = [sys.executable, "-m", "ckpt_analyzer.train.cli"]
#: ``--pattern`` of :func:`foreign_folder`
FOREIGN_PATTERN = "w{width}/ckpt_{epoch}.safetensors"


# ---------------------------------------------------------------------------------------- CLI

def invoke(cli: Any, args: Iterable[object], *, code: int | None = 0,
           env: Mapping[str, str | None] | None = None) -> Any:
    """``cli`` (a click command) in-process with ``args``; returns click's ``Result``
    (``exit_code``, ``stdout``, ``stderr``, ``output``). Fails when an exception other than
    ``SystemExit`` escaped the command (a crash is not an exit code), and, unless ``code`` is
    None, when the exit code is not ``code``. ``env`` is set for the call only."""
    from click.testing import CliRunner

    argv = [str(a) for a in args]
    r = CliRunner().invoke(cli, argv, env=env)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{' '.join(argv)}: raised {r.exception!r}\n{r.output}") \
            from r.exception
    if code is not None and r.exit_code != code:
        raise AssertionError(f"{' '.join(argv)}: exit {r.exit_code}, wanted {code}: {r.stderr}")
    return r


def analyze(*args: object, code: int | None = 0,
            env: Mapping[str, str | None] | None = None) -> Any:
    """``ckpt-analyze ARGS`` in-process (see :func:`invoke`)."""
    from ckpt_analyzer.cli import main

    return invoke(main, args, code=code, env=env)


def train(*args: object, code: int | None = 0,
          env: Mapping[str, str | None] | None = None) -> Any:
    """``ckpt-train ARGS`` in-process (see :func:`invoke`)."""
    from ckpt_analyzer.train.cli import main

    return invoke(main, args, code=code, env=env)


def _process(cmd: list[str], args: Sequence[object], code: int | None,
             env: Mapping[str, str] | None, timeout: float) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    if code is not None and r.returncode != code:
        raise AssertionError(f"exit {r.returncode}, wanted {code}: {r.stderr}")
    return r


def analyze_process(*args: object, code: int | None = 0, env: Mapping[str, str] | None = None,
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``ckpt-analyze ARGS`` in a fresh interpreter (``env`` added to this one's)."""
    return _process(ANALYZE, args, code, env, timeout)


def train_process(*args: object, code: int | None = 0, env: Mapping[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``ckpt-train ARGS`` in a fresh interpreter (``env`` added to this one's)."""
    return _process(TRAIN, args, code, env, timeout)


def one_line(stderr: str) -> str:
    """The one line of a refusal: exactly one line, ``error: ...``, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, \
        stderr
    return lines[0]


@contextmanager
def registered(registry: Any, entries: Mapping[str, Any]) -> Iterator[None]:
    """``entries`` (name -> object) registered in a ``registry`` where it lacks them (entry
    points are not active in a source checkout), and unregistered again afterwards."""
    added = [n for n in entries if n not in registry]
    for n in added:
        registry.register(n, entries[n], origin="test")
    try:
        yield
    finally:
        for n in added:
            registry.unregister(n)


# ---------------------------------------------------------------------------------- run folders

def copy_run(src: Path, dst: Path, *, cubes: bool = True) -> Path:
    """A copy of the run folder ``src`` at ``dst`` (``cubes=False``: without its
    ``analysis.h5*`` files)."""
    ignore = None if cubes else shutil.ignore_patterns("analysis.h5*")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


def foreign_folder(run: Path, dst: Path, cells: Iterable[tuple[int, int]], *, prefix: str = "",
                   source: Mapping[tuple[int, int], tuple[int, int]] | None = None) -> Path:
    """Checkpoints without the contract (no run.json, labels or ckpt-analyzer metadata): for
    each ``(width, epoch)`` of ``cells``, ``dst/w{width}/ckpt_{epoch}.safetensors`` (read with
    ``--pattern`` :data:`FOREIGN_PATTERN`) holds the tensors of that cell of the contract run
    ``run`` (or of the cell ``source`` maps it to), their keys under ``prefix``."""
    from safetensors.torch import save_file

    from ckpt_analyzer.checkpoints import read_state_dict

    source = source or {}
    for w, e in cells:
        sw, se = source.get((w, e), (w, e))
        state = read_state_dict(run / f"w{sw}" / f"e{se:05d}.safetensors")
        (dst / f"w{w}").mkdir(parents=True, exist_ok=True)
        save_file({f"{prefix}{k}": v.contiguous() for k, v in state.items()},
                  str(dst / f"w{w}" / f"ckpt_{e}.safetensors"))
    return dst


def measure(run: Path, root: Path, probes: Sequence[str],
            sets: Mapping[str, object] | None = None, *extra: object, out: Path | None = None,
            quiet_warnings: Sequence[str] = ()) -> Path:
    """A copy of the run folder ``run`` at ``root/run`` analyzed in-process on the CPU with
    ``probes`` and ``--set`` ``sets`` (``"probe.key": value``) into ``out`` (default
    ``root/run/analysis.h5``); returns the cube. Warnings whose message starts with one of
    ``quiet_warnings`` are silenced (e.g. tiny layers' NaN fits, tested elsewhere)."""
    dst = copy_run(run, root / "run")
    cube = out if out is not None else dst / "analysis.h5"
    args: list[object] = ["run", dst, "-o", cube, "--device", "cpu", "--quiet"]
    for p in probes:
        args += ["--probe", p]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    with warnings.catch_warnings():
        for message in quiet_warnings:
            warnings.filterwarnings("ignore", message=message)
        analyze(*args, *extra)
    return cube


# ---------------------------------------------------------------------------------------- cubes

#: a probe of :func:`write_cube`: its outputs and the values of a cell (None: not recorded)
CellValues = Callable[[int, int], "Mapping[str, Any] | None"]


def write_cube(path: Path, epochs: Sequence[int], widths: Sequence[int],
               probes: Mapping[str, tuple[Any, CellValues]], root: Mapping[str, str] | None = None,
               configs: Mapping[str, Mapping[str, Any]] | None = None, fsync: bool = True) -> Path:
    """A synthetic cube through the journal: each probe of ``probes`` (name -> ``(Outputs,
    values(epoch, width))``) declared with its config from ``configs`` (default ``{}``) and
    recorded at every (epoch, width) where ``values`` gives something, then materialized on
    ``epochs`` x ``widths``. ``root``: the root attributes (default ``source=/runs/r``)."""
    from ckpt_analyzer.cube.journal import Cube

    configs = configs or {}
    with Cube(path, fsync=fsync) as cube:
        cube.set_root(dict(root) if root is not None else {"source": "/runs/r"})
        for name, (outputs, _) in probes.items():
            cube.begin_probe(name, "1", configs.get(name, {}), 0, outputs, {})
        cells = []
        for name, (_, values) in probes.items():
            for e in epochs:
                for w in widths:
                    v = values(e, w)
                    if v is not None:
                        cells.append((name, e, w, {k: np.asarray(x) for k, x in v.items()}))
        cube.record_many(cells)
        cube.materialize(epochs, widths)
    return path


def datasets(path: Path, groups: Iterable[str] | None = None, *, floats: bool = False,
             inputs: bool = True) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by name (``groups``: only those top-level groups;
    ``floats``: only floating-point ones; ``inputs=False``: none under a probe's ``inputs/``)."""
    import h5py

    keep = None if groups is None else set(groups)
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            if keep is not None and name.split("/")[0] not in keep:
                return
            if not inputs and "/inputs/" in f"/{name}/":
                return
            if floats and obj.dtype.kind != "f":
                return
            out[name] = obj[()]
        f.visititems(visit)
    return out


def _raw(a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    arr = np.asarray(a)
    data = arr.astype(str).tobytes() if arr.dtype.kind == "O" else arr.tobytes()
    return arr.dtype.str, arr.shape, data


def assert_same_datasets(a: Path, b: Path, groups: Iterable[str] | None = None, *,
                         floats: bool = False, inputs: bool = True) -> list[str]:
    """The two files hold the same datasets (filtered as :func:`datasets`), bit for bit
    (dtype, shape and bytes: NaN equals NaN); returns their names."""
    groups = None if groups is None else tuple(groups)
    xa = datasets(a, groups, floats=floats, inputs=inputs)
    xb = datasets(b, groups, floats=floats, inputs=inputs)
    assert xa.keys() == xb.keys(), sorted(set(xa) ^ set(xb))
    differ = [k for k in xa if _raw(xa[k]) != _raw(xb[k])]
    assert not differ, f"datasets differ: {differ}"
    return sorted(xa)


def journal_cells(cube: Path) -> dict[tuple[str, int, int], bytes]:
    """The journal's cells ``(probe, epoch, width) -> bytes``, read without the writer's lock."""
    with closing(sqlite3.connect(f"file:{cube}.journal?mode=ro&immutable=1", uri=True)) as db:
        return {(p, e, w): bytes(d) for p, e, w, d in db.execute(
            "SELECT probe, epoch, width, data FROM cell")}


def failures(cube: Path) -> list[dict[str, Any]]:
    """The failures a cube records (its root attribute ``failures``)."""
    import h5py

    with h5py.File(cube, "r") as f:
        return json.loads(f.attrs["failures"])  # type: ignore[no-any-return]
