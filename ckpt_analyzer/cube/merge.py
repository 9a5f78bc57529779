"""``ckpt-analyze merge A.h5 B.h5 ... -o ALL.h5``: shards of one analysis into one cube.

The output is written by the ordinary single writer (:class:`~.journal.Cube`): the first cube
is copied (to a temporary of its own, ``ALL.h5.<random>.merging``, under an exclusive lock on
``ALL.h5.lock``) and its journal rebuilt from it (bit-exact), the other cubes' cells, failures and
checkpoint identities are recorded, the cube is materialized and then linked into place (never
over a file that appeared meanwhile). Before anything is written every input is checked
against the first: the same run (root attrs ``source`` and ``run_json``), the same probes with
the same version, config, seed, declared outputs and fixed inputs, the same identity of every
checkpoint two cubes measured (:mod:`.identity`). A cell present in two cubes must hold equal
values (NaN equal to NaN). The shards themselves are checked (:func:`shard_gaps`): none of
``NAME.shard-I-of-N.h5`` missing, none still being written, none killed mid-run or unfinished;
``partial`` turns these refusals into warnings. Each refusal is one line naming the file and the
key; a write that fails (a full disk) names the output.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import check_output, fsync_dir, output_lock
from ..errors import CkptError, UsageError
from .filewrite import copy_file
from .identity import same_contents
from .read import (
    check_cube,
    is_probe,
    iter_cells,
    read_group,
    read_identities,
    scalar,
    text,
    walk_inputs,
)
from .schema import Decl, same_array, same_inputs

IDENTITY = ("source", "run_json")


@dataclass
class _ProbeInfo:
    version: str
    config: Any
    seed: int
    decl: Decl
    inputs: dict[str, np.ndarray]


def _read_identity(path: Path) -> tuple[dict[str, Any], dict[str, _ProbeInfo]]:
    import h5py

    with h5py.File(path, "r") as f:
        root = {k: scalar(f.attrs[k]) for k in IDENTITY if k in f.attrs}
        probes = {}
        for name, g in f.items():
            if not is_probe(g):
                continue
            decl, _ = read_group(g)
            probes[name] = _ProbeInfo(
                str(text(g.attrs["probe_version"])), json.loads(text(g.attrs["config"])),
                int(g.attrs["seed"]), decl,
                dict(walk_inputs(g["inputs"])) if "inputs" in g else {})
    return root, probes


def _done_cells(path: Path, probe: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(epochs, widths, done)`` of a probe group (the mask only: no cell is read)."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f[probe]
        return (np.asarray(g["epoch"][()], dtype=np.int64),
                np.asarray(g["width"][()], dtype=np.int64), np.asarray(g["done"][()], dtype=bool))


@dataclass
class _Origins:
    """Which input first holds each cell of one probe, on the union of the inputs' grids."""

    epochs: np.ndarray
    widths: np.ndarray
    origin: np.ndarray  # (epoch, width) int32: index of the first input holding it, -1: none

    def local(self, path: Path, probe: str, which: np.ndarray
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """``which`` (union ``(i, j)`` pairs) as ``(epoch index, width index)`` in ``path``."""
        e, w, _ = _done_cells(path, probe)
        li = np.searchsorted(e, self.epochs[which[:, 0]])
        lj = np.searchsorted(w, self.widths[which[:, 1]])
        return np.stack([li, lj], axis=1), [(int(a), int(b)) for a, b in which.tolist()]


def _origins(paths: Sequence[Path], probe: str
             ) -> tuple[_Origins, list[tuple[int, int, np.ndarray]]]:
    """The first input holding each cell, and the duplicates ``(input, earlier input, union
    (i, j) pairs)``: cells an input holds that an earlier one holds too."""
    masks = [_done_cells(p, probe) for p in paths]
    epochs = np.unique(np.concatenate([m[0] for m in masks]))
    widths = np.unique(np.concatenate([m[1] for m in masks]))
    origin = np.full((len(epochs), len(widths)), -1, dtype=np.int32)
    dups = []
    for k, (e, w, done) in enumerate(masks):
        full = np.zeros(origin.shape, dtype=bool)
        full[np.ix_(np.searchsorted(epochs, e), np.searchsorted(widths, w))] = done
        seen = full & (origin >= 0)
        for q in np.unique(origin[seen]).tolist():
            which = np.argwhere(seen & (origin == q))  # in iter_cells' order: width, epoch
            dups.append((k, int(q), which[np.lexsort((which[:, 0], which[:, 1]))]))
        origin[full & (origin < 0)] = k
    return _Origins(epochs, widths, origin), dups


def _read_cells(path: Path, probe: str, local: np.ndarray
                ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    import h5py

    with h5py.File(path, "r") as f:
        g = f[probe]
        _, names = read_group(g)
        yield from iter_cells(g, names, local)


def _failures(path: Path) -> list[dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        return list(json.loads(text(f.attrs.get("failures", "[]"))))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}")
            else:
                out += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "config"]


def check_compatible(first: Path, other: Path) -> None:
    """Raise a one-line :class:`UsageError` naming the first key on which the cubes differ."""
    root_a, probes_a = _read_identity(first)
    root_b, probes_b = _read_identity(other)
    why = f"cannot merge {other} with {first}"
    for k in IDENTITY:
        if root_a.get(k) != root_b.get(k):
            raise UsageError(f"{why}: they are analyses of different runs (root attribute "
                             f"'{k}' differs)")
    for name in sorted(set(probes_a) | set(probes_b)):
        if name not in probes_a or name not in probes_b:
            raise UsageError(f"{why}: probe '{name}' is only in "
                             f"{first if name in probes_a else other} (shards must run the "
                             "same probes)")
        a, b = probes_a[name], probes_b[name]
        if a.version != b.version:
            raise UsageError(f"{why}: probe '{name}' version differs ({a.version} vs "
                             f"{b.version})")
        if a.seed != b.seed:
            raise UsageError(f"{why}: probe '{name}' seed differs ({a.seed} vs {b.seed})")
        keys = _diff_keys(a.config, b.config)
        if keys:
            raise UsageError(f"{why}: probe '{name}' config differs ({', '.join(keys)})")
        if a.decl.key() != b.decl.key():
            raise UsageError(f"{why}: probe '{name}' declares different outputs")
        differ = sorted(k for k in set(a.inputs) | set(b.inputs)
                        if k not in a.inputs or k not in b.inputs
                        or not same_inputs(a.inputs[k], b.inputs[k]))
        if differ:
            raise UsageError(f"{why}: probe '{name}' fixed input '{differ[0]}' differs")


SHARD_NAME = re.compile(r"(?P<stem>.*)\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.h5")


def merge_identities(paths: Sequence[Path]) -> dict[str, list[Any]]:
    """The union of the cubes' checkpoint identities; :class:`UsageError` naming the checkpoint
    and both cubes when two of them measured it from different contents."""
    import h5py

    out: dict[str, list[Any]] = {}
    where: dict[str, Path] = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            idents = read_identities(f)
        for key, ident in sorted(idents.items()):
            old = out.get(key)
            if old is None:
                out[key], where[key] = ident, p
                continue
            same = same_contents(old, ident)
            if same is False:
                w, e = key.split("/")
                raise UsageError(
                    f"cannot merge {p} with {where[key]}: they measured checkpoint width {w} "
                    f"epoch {e} from different contents (size {old[0]}, digest {old[2][:20]}... "
                    f"in {where[key].name}; size {ident[0]}, digest {ident[2][:20]}... in "
                    f"{p.name}): it was replaced between their runs; re-run the shard that "
                    "measured the stale copy ('ckpt-analyze run' measures a replaced "
                    "checkpoint again)")
            if same is None and ":" in str(ident[2]):  # keep the exact digest of a newer run
                out[key], where[key] = ident, p
    return out


def _journal_lacks(path: Path) -> tuple[bool, list[tuple[str, int, int]]]:
    """(still being written, the ``(probe, epoch, width)`` cells its journal holds and its
    cube lacks) of a cube with a journal beside it; (False, []) without one."""
    import h5py

    from .journal import Cube

    if not Path(f"{path}.journal").is_file():
        return False, []
    try:
        cube = Cube(path).open()
    except CkptError as exc:  # locked by a run; or unusable here (read-only, other format)
        return "another process is writing" in str(exc), []
    try:
        journal = {name: cube.done(name) for name in cube.probes()}
    finally:
        cube.close()
    lacks = []
    with h5py.File(path, "r") as f:
        for name, cells in journal.items():
            g = f.get(name)
            have: set[tuple[int, int]] = set()
            if is_probe(g):
                epochs, widths = g["epoch"][()].tolist(), g["width"][()].tolist()
                have = {(int(epochs[i]), int(widths[j]))
                        for i, j in zip(*np.nonzero(g["done"][()]))}
            lacks += [(name, e, w) for e, w in sorted(cells - have)]
    return False, lacks


def _unfinished(path: Path, probes: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(probe, epoch, width)`` of each checkpoint the cube holds an identity of (the runner
    records them before measuring) that has neither a cell nor a recorded failure."""
    import h5py

    with h5py.File(path, "r") as f:
        idents = read_identities(f)
        done = {}
        for name in probes:
            g = f[name]
            epochs, widths = g["epoch"][()].tolist(), g["width"][()].tolist()
            done[name] = {(int(epochs[i]), int(widths[j]))
                          for i, j in zip(*np.nonzero(g["done"][()]))}
    failed = {(fl.get("epoch"), fl.get("width"), fl.get("probe") or "") for fl in _failures(path)}
    out = []
    for key in sorted(idents, key=lambda k: tuple(int(v) for v in k.split("/"))):
        w, e = (int(v) for v in key.split("/"))
        for name in probes:
            if ((e, w) not in done[name] and (e, w, "") not in failed
                    and (e, w, name) not in failed and (None, None, name) not in failed):
                out.append((name, e, w))
    return out


def shard_of(path: Path) -> tuple[int, int] | None:
    """``(I, N)`` of a cube written by ``run --shard I/N``: its root attribute ``shard`` (cubes
    of earlier versions: a file name ``NAME.shard-I-of-N.h5``); None for other cubes."""
    import h5py

    with h5py.File(path, "r") as f:
        attr = text(f.attrs.get("shard", ""))
    i_s, _, n_s = str(attr).partition("/")
    if i_s.isdigit() and n_s.isdigit():
        return int(i_s), int(n_s)
    m = SHARD_NAME.fullmatch(path.name)
    return (int(m["i"]), int(m["n"])) if m else None


def shard_gaps(paths: Sequence[Path], probes: Sequence[str]) -> list[str]:
    """One line per gap in a set of shards: a shard I of N missing (when every input is a
    shard: another cube, e.g. a merged one, may hold the rest), a shard still being written
    (its journal is locked by a run), killed mid-run (its journal holds cells its cube lacks)
    or unfinished (checkpoints it started on without a cell or a failure)."""
    lines = []
    shards = {p: shard_of(p) for p in paths}
    groups: dict[int, set[int]] = {}
    stems = [m["stem"] for p in paths if (m := SHARD_NAME.fullmatch(p.name))]
    for ident in shards.values():
        if ident is not None:
            groups.setdefault(ident[1], set()).add(ident[0])
    complete = any(have >= set(range(1, n + 1)) for n, have in groups.items())
    if not complete and all(v is not None for v in shards.values()):
        for n, have in sorted(groups.items()):
            missing = sorted(set(range(1, n + 1)) - have)
            names = (f" ({', '.join(f'{stems[0]}.shard-{i}-of-{n}.h5' for i in missing[:4])}"
                     f"{' ...' * (len(missing) > 4)})") if stems else ""
            lines.append(f"shard{'s' * (len(missing) > 1)} "
                         f"{', '.join(map(str, missing[:8]))}{' ...' * (len(missing) > 8)} of "
                         f"{n} {'are' if len(missing) > 1 else 'is'} missing{names}")
    for p in paths:
        writing, lacks = _journal_lacks(p)
        if writing:
            lines.append(f"{p}: is still being written (a 'ckpt-analyze run' holds its journal "
                         f"{p.name}.journal); wait for it to finish")
            continue
        if lacks:
            probe, e, w = lacks[0]
            lines.append(f"{p}: its journal holds {len(lacks)} cell(s) its cube lacks (e.g. "
                         f"probe '{probe}' epoch {e} width {w}): its run was killed mid-run; "
                         "re-run the same 'ckpt-analyze run' command to finish it")
            continue
        if shards[p] is not None:
            todo = _unfinished(p, probes)
            if todo:
                probe, e, w = todo[0]
                lines.append(f"{p}: {len(todo)} cell(s) of checkpoints it started on have no "
                             f"value and no recorded failure (e.g. probe '{probe}' epoch {e} "
                             f"width {w}): its run did not finish; re-run the same "
                             "'ckpt-analyze run ... --shard' command to finish it")
    return lines


def _temporaries(out: Path) -> list[Path]:
    """Leftovers of merges into ``out`` that were killed (only called holding its lock)."""
    pat = re.compile(re.escape(out.name) + r"\.[0-9a-f]{8}\.merging(\.journal(-wal)?|\.tmp)?")
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    return [out.parent / n for n in names if pat.fullmatch(n)]


def _write_error(out: Path, exc: BaseException) -> CkptError:
    """One line naming the output (not an input, not a temporary) for a failed write."""
    err = getattr(exc, "errno", None)
    msg = str(exc)
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(
            w in msg for w in ("full", "too large", "No space left", "quota")):
        why = "the disk is full or a file-size limit was reached"
    elif isinstance(exc, OSError):
        why = str(exc.strerror or exc).splitlines()[0]
    else:
        why = msg.split(": ", 1)[-1].split(";")[0]
    return CkptError(f"cannot write the merged cube ({why}); nothing was written and the inputs "
                     "are unchanged", out)


def merge_cubes(inputs: Sequence[str | os.PathLike[str]],
                output: str | os.PathLike[str], partial: bool = False) -> dict[str, Any]:
    """Merge cubes into ``output`` (which must not exist); return counts of the work done and
    ``warnings`` (the shard gaps :func:`shard_gaps` names, when ``partial`` accepts them)."""
    from .journal import Cube

    paths = [Path(p) for p in inputs]
    out = Path(output)
    if not paths:
        raise UsageError("merge: give at least one cube")
    for p in paths:
        check_cube(p)
    for i, p in enumerate(paths):
        for q in paths[:i]:
            if os.path.samefile(p, q):
                raise UsageError(f"{p}: given twice (it is {q}); merging a cube with itself "
                                 "adds nothing")

    def new_output() -> None:
        check_output(out, None, paths)
        if Path(f"{out}.journal").exists():
            raise UsageError(f"-o {out}: its journal {out.name}.journal exists; choose a new "
                             "file")

    new_output()
    for p in paths[1:]:
        check_compatible(paths[0], p)

    _, probes = _read_identity(paths[0])
    identities = merge_identities(paths)
    # Cells are never all in memory: the done masks say which input holds each cell first; only
    # cells held twice are read here (in blocks) to check they are equal.
    origins: dict[str, _Origins] = {}
    duplicates = 0
    for name in probes:
        origins[name], dups = _origins(paths, name)
        for k, earlier, which in sorted(dups, key=lambda d: d[0]):
            cube_k, first = paths[k], paths[earlier]
            for start in range(0, len(which), 256):
                part = which[start:start + 256]
                mine, _ = origins[name].local(cube_k, name, part)
                theirs, _ = origins[name].local(first, name, part)
                for (e, w, old), (_, _, values) in zip(
                        _read_cells(first, name, theirs), _read_cells(cube_k, name, mine),
                        strict=True):
                    for m in values:
                        if not same_array(np.asarray(old[m]), np.asarray(values[m])):
                            raise UsageError(
                                f"cannot merge {cube_k} with {first}: probe '{name}' cell epoch "
                                f"{e} width {w} differs (metric '{m}')")
        duplicates += sum(len(d[2]) for d in dups)
    # after the conflicts (which no flag overrides): the gaps --partial accepts
    gaps = shard_gaps(paths, sorted(probes))
    if gaps and not partial:
        more = f" (+{len(gaps) - 1} more)" if len(gaps) > 1 else ""
        raise UsageError(f"{gaps[0]}{more}; or merge what the cubes hold with --partial")
    import h5py

    axes: dict[str, set[int]] = {"epoch": set(), "width": set()}
    for p in paths:
        with h5py.File(p, "r") as f:
            for a, vals in axes.items():
                if a in f:
                    vals.update(int(v) for v in f[a][()])

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(out, exc) from None
    n_fail = 0
    with output_lock(out, "merge"):
        new_output()  # checked again holding the lock: another merge may just have ended
        for leftover in _temporaries(out):
            leftover.unlink(missing_ok=True)
        tmp = out.with_name(f"{out.name}.{secrets.token_hex(4)}.merging")
        temps = (tmp, Path(f"{tmp}.journal"), Path(f"{tmp}.journal-wal"), Path(f"{tmp}.tmp"))
        try:
            copy_file(paths[0], tmp)  # by the kernel: no memory, a reflink where there are
            with Cube(tmp, fsync=False) as cube:  # the journal is rebuilt from the copy
                seen_fail = {(f["path"], f.get("probe") or "") for f in cube.failures()}
                for p in paths[1:]:
                    for fl in _failures(p):
                        if (fl["path"], fl.get("probe") or "") not in seen_fail:
                            cube.record_failure(fl.get("epoch"), fl.get("width"), fl["path"],
                                                fl["error"], fl.get("probe"))
                for name, o in origins.items():  # the first cube's cells are in already
                    for k in range(1, len(paths)):
                        which = np.argwhere(o.origin == k)
                        if not len(which):
                            continue
                        local, _ = o.local(paths[k], name, which)
                        batch: list[tuple[str, int, int, dict[str, np.ndarray]]] = []
                        for e, w, values in _read_cells(paths[k], name, local):
                            batch.append((name, e, w, values))
                            if len(batch) >= 256:
                                cube.record_many(batch)
                                batch = []
                        cube.record_many(batch)
                if identities:
                    cube.set_extra("checkpoints", json.dumps(identities, sort_keys=True))
                cube.set_root({"shard": None})  # the merge is no shard
                cube.materialize(sorted(axes["epoch"]), sorted(axes["width"]), rewrite=True)
                n_fail = len(cube.failures())
            try:
                os.link(tmp, out)  # never over a file that appeared meanwhile
            except FileExistsError:
                raise UsageError(f"-o {out}: appeared while merging; choose a new file") \
                    from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                     errno.EXDEV, errno.EMLINK):
                    raise
                os.replace(tmp, out)  # a file system without hard links
            fsync_dir(out.parent)
        except UsageError:
            raise
        except (OSError, CkptError) as exc:
            raise _write_error(out, exc) from None
        finally:
            for leftover in temps:
                leftover.unlink(missing_ok=True)
    return {"cells": sum(int((o.origin >= 0).sum()) for o in origins.values()),
            "probes": len(probes),
            "duplicates": duplicates, "failures": n_fail, "warnings": gaps,
            "checkpoints": len(identities)}
