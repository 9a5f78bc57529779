"""What a cube knows and what merge checks (checkpoint identities in the HDF5 file; shards
missing, being written, killed), and outputs that never overwrite inputs."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ANALYZE, analyze, copy_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file

from ckpt_analyzer._atomic import check_output, output_lock
from ckpt_analyzer.cube import merge as merge_mod
from ckpt_analyzer.cube.identity import checkpoint_digest, legacy_digest
from ckpt_analyzer.cube.journal import Cube
from ckpt_analyzer.cube.merge import merge_cubes
from ckpt_analyzer.cube.read import read_identities
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.runner import Runner

M = ["--probe", "metrics", "--quiet"]
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}


# -- safetensors files laid out in any order ----------------------------------------------------

def write_safetensors(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str] | None,
                      order: list[str], meta_first: bool = True) -> None:
    """A valid safetensors file with its header keys, metadata keys and tensor data in the
    given ``order`` (the format allows any; safetensors' writer picks one at random)."""
    code = {np.dtype(v): k for k, v in DTYPES.items()}
    entries: dict[str, object] = {}
    blobs, offset = [], 0
    for name in order:
        arr = np.asarray(tensors[name], order="C")
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        entries[name] = {"dtype": code[arr.dtype], "shape": list(arr.shape),
                         "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header: dict[str, object] = {}
    if meta is not None and meta_first:
        header["__metadata__"] = meta
    header.update(entries)
    if meta is not None and not meta_first:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def reference_digest(path: Path) -> str:
    """The digest, the slow obvious way: the header's dtypes and shapes and the metadata via
    plain JSON, the tensors' bytes via the safetensors library, in name order."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        names = sorted(f.keys())
        data = {k: f.get_tensor(k) for k in names}
    canon = json.dumps({"__metadata__": meta, "tensors": {
        k: [header[k]["dtype"], header[k]["shape"]] for k in names}},
        sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(b"ckpt-analyzer checkpoint digest 1\n")
    h.update(struct.pack("<Q", len(canon)) + canon)
    for k in names:
        b = data[k].astype(data[k].dtype.newbyteorder("<")).tobytes()
        h.update(struct.pack("<Q", len(b)) + b)
    return "st1:" + h.hexdigest()


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.standard_normal(4).astype(np.float32),
            "fc.weight": rng.standard_normal((10, 36)).astype(np.float64),
            "steps": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 3), np.float32)}


def test_digest_matches_reference_and_ignores_layout(tmp_path: Path) -> None:
    t = _tensors()
    meta = {"format": "ckpt-analyzer.checkpoint/1", "width": "4", "epoch": "3",
            "train_loss": "0.25", "arch": "mcnn"}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(a, t, meta, sorted(t))
    write_safetensors(b, t, dict(reversed(meta.items())), sorted(t, reverse=True),
                      meta_first=False)
    assert a.read_bytes() != b.read_bytes()  # another layout of the same contents
    for k, v in load_file(str(b)).items():
        np.testing.assert_array_equal(v, t[k])
    assert checkpoint_digest(a) == checkpoint_digest(b) == reference_digest(a)
    assert legacy_digest(a) != legacy_digest(b)  # what made the old digest call it replaced


def test_digest_changes_with_any_tensor_byte_or_metadata(tmp_path: Path) -> None:
    t = _tensors()
    meta = {"epoch": "3", "train_loss": "0.25"}
    base = tmp_path / "base.safetensors"
    write_safetensors(base, t, meta, sorted(t))
    d0 = checkpoint_digest(base)
    raw = bytearray(base.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for pos in (8 + n, len(raw) - 1, 8 + n + (len(raw) - 8 - n) // 2):
        flipped = tmp_path / f"flip{pos}.safetensors"
        edit = bytearray(raw)
        edit[pos] ^= 0x01
        flipped.write_bytes(bytes(edit))
        assert checkpoint_digest(flipped) not in (d0, None)
        assert checkpoint_digest(flipped) == reference_digest(flipped)
    other = tmp_path / "meta.safetensors"
    write_safetensors(other, t, {**meta, "train_loss": "0.26"}, sorted(t))
    assert checkpoint_digest(other) != d0
    renamed = tmp_path / "renamed.safetensors"
    write_safetensors(renamed, {("x" + k): v for k, v in t.items()}, meta,
                      ["x" + k for k in sorted(t)])
    assert checkpoint_digest(renamed) != d0
    reshaped = tmp_path / "reshaped.safetensors"
    write_safetensors(reshaped, {**t, "steps": t["steps"].reshape(5, 1)}, meta, sorted(t))
    assert checkpoint_digest(reshaped) != d0  # same bytes, another shape


def test_other_files_are_digested_whole(tmp_path: Path) -> None:
    pt = tmp_path / "e1.pt"
    pt.write_bytes(b"\x80\x02anything" * 1000)
    assert checkpoint_digest(pt) == "file1:" + hashlib.sha256(pt.read_bytes()).hexdigest()
    bad = tmp_path / "bad.safetensors"  # a header that is no JSON: digested whole, no error
    bad.write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16)
    assert checkpoint_digest(bad) == "file1:" + hashlib.sha256(bad.read_bytes()).hexdigest()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
                            st.text(max_size=20), max_size=8),
       seed=st.integers(0, 2**31 - 1))
def test_digest_is_invariant_under_any_order_property(tmp_path: Path, meta: dict[str, str],
                                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = {f"t{i}": rng.standard_normal(int(rng.integers(0, 6))).astype(np.float32)
         for i in range(int(rng.integers(1, 5)))}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(a, t, meta, sorted(t))
    keys, names = list(meta), sorted(t)  # permuted by index: numpy strings drop "\x00"
    shuffled = {keys[i]: meta[keys[i]] for i in rng.permutation(len(keys))}
    write_safetensors(b, t, shuffled, [names[i] for i in rng.permutation(len(names))],
                      meta_first=bool(rng.integers(0, 2)))
    assert checkpoint_digest(a) == checkpoint_digest(b) == reference_digest(b)


# -- identities in the cube ---------------------------------------------------------------------

def rewrite_shuffled(path: Path, flip: bool = False) -> None:
    """Re-write a checkpoint as a resumed trainer would: the same tensors and metadata in
    another key and data order (``flip``: one tensor byte changed as well)."""
    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    if flip:
        k = sorted(t)[0]
        arr = t[k].copy()
        arr.view(np.uint8).reshape(-1)[0] ^= 0x01
        t[k] = arr
    before = path.read_bytes()
    tmp = path.with_name(path.name + ".new")
    write_safetensors(tmp, t, dict(reversed(meta.items())), sorted(t, reverse=True),
                      meta_first=False)
    os.replace(tmp, path)
    assert path.read_bytes() != before


@pytest.fixture
def run_a(digits_run: Path, tmp_path: Path) -> Path:
    a = tmp_path / "A"
    copy_run(digits_run, a)
    analyze("run", str(a), *M)
    return a


def computed(run: Path, *extra: str) -> tuple[int, str]:
    r = analyze("run", str(run), *M, "--json", *extra)
    return json.loads(r.stdout)["computed"], r.stderr


def test_identities_round_trip_in_place_without_growing_the_file(tmp_path: Path) -> None:
    import io

    from ckpt_analyzer.cube.hdf5 import write_identities

    def idents(n: int, salt: str = "") -> dict[str, list]:
        return {f"{w}/{e}": [1000 + e, 10**18 + e, "st1:" + hashlib.sha256(
            f"{w}{e}{salt}".encode()).hexdigest(), 10**18 + w, 2**63 + e]
            for w in (1, 4, 16) for e in range(n)}

    raw = b""
    sizes = []
    for step in range(1, 41):  # as materialize does: the previous file, updated, written out
        buf = io.BytesIO(raw)
        with h5py.File(buf, "r+" if raw else "w") as f:
            want = idents(30 + step % 3, salt=str(step))  # grows and shrinks, digests change
            write_identities(f, want)
            assert read_identities(f) == want
        raw = buf.getvalue()
        sizes.append(len(raw))
    assert max(sizes[10:]) <= sizes[9] + 4096, sizes  # no space left behind per rewrite
    p = tmp_path / "c.h5"
    p.write_bytes(raw)
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(p, group="checkpoints", engine="h5netcdf") as ds:
        assert ds.sizes["checkpoint"] == 3 * (30 + 40 % 3)
        assert int(ds["inode"].max()) == 2**63 + 30 + 40 % 3 - 1
    with h5py.File(p, "r+") as f:
        write_identities(f, {})
        assert "checkpoints" not in f and read_identities(f) == {}


def test_identities_are_in_the_hdf5_file(run_a: Path) -> None:
    with h5py.File(run_a / "analysis.h5", "r") as f:
        ids = read_identities(f)
        g = f["checkpoints"]
        assert g["digest"].shape == (10,) and g["width"].dtype == np.int64
    assert sorted(ids) == sorted(f"{w}/{e}" for w in (1, 4) for e in range(5))
    for key, (size, _, digest, _, _) in ids.items():
        w, e = key.split("/")
        path = run_a / f"w{w}" / f"e{int(e):05d}.safetensors"
        assert size == path.stat().st_size and digest == checkpoint_digest(path)


def test_rewritten_in_another_order_is_not_replaced(run_a: Path) -> None:
    rewrite_shuffled(run_a / "w4" / "e00003.safetensors")
    n, err = computed(run_a)
    assert n == 0 and "replaced" not in err


def test_one_tensor_byte_changed_is_replaced_and_measured_again(run_a: Path) -> None:
    rewrite_shuffled(run_a / "w4" / "e00003.safetensors", flip=True)
    n, err = computed(run_a)
    assert n == 1 and "w4/e00003.safetensors: replaced since it was measured" in err
    assert computed(run_a) == (0, "")


def test_lost_journal_identities_come_from_the_cube(run_a: Path) -> None:
    (run_a / "analysis.h5.journal").unlink()
    rewrite_shuffled(run_a / "w1" / "e00002.safetensors", flip=True)
    n, err = computed(run_a)
    assert n == 1 and "w1/e00002.safetensors: replaced" in err
    (run_a / "analysis.h5.journal").unlink()
    rewrite_shuffled(run_a / "w1" / "e00004.safetensors")  # same contents: kept
    assert computed(run_a) == (0, "")


def test_identities_of_an_earlier_version_are_adopted(run_a: Path) -> None:
    cube = run_a / "analysis.h5"
    legacy = {}
    for w in (1, 4):
        for e in range(5):
            p = run_a / f"w{w}" / f"e{e:05d}.safetensors"
            legacy[f"{w}/{e}"] = [p.stat().st_size, p.stat().st_mtime_ns, legacy_digest(p)]
    with sqlite3.connect(f"{cube}.journal") as db:
        db.execute("UPDATE meta SET value=? WHERE key='extra:checkpoints'",
                   (json.dumps(legacy),))
    db.close()
    assert computed(run_a) == (0, "")  # compared with the old digest, then upgraded
    with h5py.File(cube, "r") as f:
        assert all(v[2].startswith("st1:") for v in read_identities(f).values())


# -- merge: identities, shard gaps --------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the digits run with its three shards (metrics) measured."""
    d = tmp_path_factory.mktemp("sharded") / "run"
    copy_run(digits_run, d)
    for i in (1, 2, 3):
        Runner(run_dir=str(d), probes=["metrics"], shard=(i, 3), worker_threads=1).run()
    return d


def shards_in(src: Path, dst: Path, which: tuple[int, ...] = (1, 2, 3),
              journals: bool = True) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in which:
        name = f"analysis.shard-{i}-of-3.h5"
        shutil.copy(src / name, dst / name)
        if journals:
            shutil.copy(src / f"{name}.journal", dst / f"{name}.journal")
        out.append(dst / name)
    return out


def test_merge_carries_identities_and_run_remeasures_replaced(shard_run: Path,
                                                              tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shard_run, run)
    shards = sorted(run.glob("analysis.shard-*-of-3.h5"))
    merged = run / "merged.h5"
    stats = merge_cubes(shards, merged)
    assert stats["warnings"] == [] and stats["checkpoints"] == 10
    union: dict[str, list] = {}
    for s in shards:
        with h5py.File(s, "r") as f:
            part = read_identities(f)
        assert part and not set(part) & set(union)  # each shard: its own checkpoints
        union.update(part)
    with h5py.File(merged, "r") as f:
        assert read_identities(f) == union
    assert not Path(f"{merged}.journal").exists()
    rewrite_shuffled(run / "w4" / "e00001.safetensors", flip=True)
    rewrite_shuffled(run / "w1" / "e00001.safetensors")  # the same contents
    n, err = computed(run, "-o", str(merged))
    assert n == 1 and "w4/e00001.safetensors: replaced since it was measured" in err


def test_merge_refuses_shards_that_measured_other_contents(shard_run: Path,
                                                           tmp_path: Path) -> None:
    a, b, c = shards_in(shard_run, tmp_path / "s", journals=False)
    merged = tmp_path / "all.h5"
    merge_cubes([a, b, c], merged)
    with h5py.File(b, "r") as f:
        key = sorted(read_identities(f))[0]
    with h5py.File(b, "r+") as f:  # shard 2 saw other contents of its first checkpoint
        g = f["checkpoints"]
        i = [f"{w}/{e}" for w, e in zip(g["width"][()], g["epoch"][()])].index(key)
        d = g["digest"].asstr()[()].tolist()
        d[i] = "st1:" + "0" * 64
        g["digest"][...] = np.array(d, dtype="S80")
    w, e = key.split("/")
    with pytest.raises(UsageError) as exc:
        merge_cubes([merged, b], tmp_path / "again.h5")
    msg = str(exc.value)
    assert f"checkpoint width {w} epoch {e} from different contents" in msg
    assert str(b) in msg and str(merged) in msg and "\n" not in msg
    assert not (tmp_path / "again.h5").exists()


def test_merge_says_a_shard_is_missing_and_partial_merges(shard_run: Path,
                                                          tmp_path: Path) -> None:
    a, c = shards_in(shard_run, tmp_path / "s", (1, 3))
    out = tmp_path / "all.h5"
    err = analyze("merge", str(a), str(c), "-o", str(out), code=2).stderr
    assert not out.exists()
    assert "shard 2 of 3 is missing (analysis.shard-2-of-3.h5)" in err and "--partial" in err
    assert len(err.strip().splitlines()) == 1
    err = analyze("merge", str(a), str(c), "-o", str(out), "--partial").stderr
    assert out.exists()
    assert "warning: shard 2 of 3 is missing" in err
    with h5py.File(out, "r") as f:
        assert int(f["metrics/done"][()].sum()) == 4 + 3
        assert "shard" not in f.attrs  # the merge is no shard
    # named as in a Slurm array (shards/I.h5): the cube's own attribute says which shard it is
    named = [tmp_path / "1.h5", tmp_path / "3.h5"]
    for src, dst in zip((a, c), named, strict=True):
        shutil.copy(src, dst)
    with pytest.raises(UsageError, match=r"^shard 2 of 3 is missing; or merge what the cubes "
                                         r"hold with --partial$"):
        merge_cubes(named, tmp_path / "named.h5")


def test_merge_refuses_a_shard_still_being_written(shard_run: Path, tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s")
    with Cube(shards[1]):  # a run holds its journal
        with pytest.raises(UsageError, match=r"analysis.shard-2-of-3.h5: is still being "
                                             r"written .*--partial"):
            merge_cubes(shards, tmp_path / "all.h5")
        stats = merge_cubes(shards, tmp_path / "all.h5", partial=True)
    assert "still being written" in stats["warnings"][0]


def test_merge_refuses_a_shard_killed_mid_run(shard_run: Path, tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s")
    with h5py.File(shards[2], "r+") as f:  # the last cell reached the journal, not the cube
        done = f["metrics/done"][()]
        i, j = (int(v[-1]) for v in np.nonzero(done))
        done[i, j] = 0
        f["metrics/done"][...] = done
        epoch, width = int(f["metrics/epoch"][i]), int(f["metrics/width"][j])
    with pytest.raises(UsageError) as exc:
        merge_cubes(shards, tmp_path / "all.h5")
    assert (f"analysis.shard-3-of-3.h5: its journal holds 1 cell(s) its cube lacks (e.g. probe "
            f"'metrics' epoch {epoch} width {width}): its run was killed mid-run") in str(exc.value)
    # without its journal: the identity the run recorded before measuring says the same
    Path(f"{shards[2]}.journal").unlink()
    with pytest.raises(UsageError, match=r"1 cell\(s\) of checkpoints it started on have no "
                                         r"value .* did not finish"):
        merge_cubes(shards, tmp_path / "all.h5")
    stats = merge_cubes(shards, tmp_path / "all.h5", partial=True)
    assert stats["cells"] == 9 and len(stats["warnings"]) == 1


# -- outputs never overwrite inputs -------------------------------------------------------------

def test_check_output_kinds(tmp_path: Path) -> None:
    cases = {"html": [b"<!DOCTYPE html><html>", b"\xef\xbb\xbf  <html lang='en'>"],
             "png": [b"\x89PNG\r\n\x1a\n...."], "pdf": [b"%PDF-1.4\n"],
             "svg": [b'<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg xmlns="x">', b"<svg>"]}
    for kind, heads in cases.items():
        for n, head in enumerate(heads):
            p = tmp_path / f"ok{n}.{kind}"
            p.write_bytes(head)
            assert check_output(p, kind) == p
        for other, oheads in cases.items():
            if other != kind:
                p = tmp_path / f"bad.{kind}"
                p.write_bytes(oheads[0])
                with pytest.raises(UsageError, match="exists and is .* refusing to overwrite"):
                    check_output(p, kind)
    (tmp_path / "empty.html").write_bytes(b"")
    check_output(tmp_path / "empty.html", "html")  # nothing to lose
    check_output(tmp_path / "new.html", "html")
    with pytest.raises(UsageError, match="is a folder"):
        check_output(tmp_path, "html")
    cube = tmp_path / "c.h5"
    cube.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(UsageError, match="an HDF5 file"):
        check_output(cube, "html")
    os.link(cube, tmp_path / "hard.html")
    with pytest.raises(UsageError, match="is one of the inputs"):
        check_output(tmp_path / "hard.html", "html", [cube])
    with pytest.raises(UsageError, match="exists"):
        check_output(cube, None)


def test_report_html_never_replaces_the_cube(run_a: Path) -> None:
    cube = run_a / "analysis.h5"
    before = cube.read_bytes()
    link = run_a / "page.html"
    link.symlink_to(cube)
    for target in (cube, link, run_a / "w1" / "e00000.safetensors"):
        err = analyze("report", str(cube), "--html", str(target), code=2).stderr
        assert len(err.strip().splitlines()) == 1 and f"--html {target}" in err
    assert cube.read_bytes() == before  # nothing stored either
    page = run_a / "old.html"
    page.write_text("<!DOCTYPE html><p>an older report</p>")
    analyze("report", str(cube), "--html", str(page), "--no-store")
    assert "older report" not in page.read_text()


def test_plot_never_replaces_an_input_or_another_kind(run_a: Path) -> None:
    cube = run_a / "analysis.h5"
    before = cube.read_bytes()
    link = run_a / "fig.png"
    link.symlink_to(cube)
    notes = run_a / "notes.pdf"
    notes.write_text("my notes")
    for target, why in ((link, "is one of the inputs"), (notes, "exists and is another kind")):
        err = analyze("plot", str(cube), "--kind", "double-descent", "-o", str(target), code=2).stderr
        assert why in err and len(err.strip().splitlines()) == 1, err
    err = analyze("plot", str(cube), str(cube), "--kind", "double-descent", "-o", str(link),
                  code=2).stderr
    assert "is one of the inputs" in err  # the study path too
    assert cube.read_bytes() == before and notes.read_text() == "my notes"


def test_merge_output_may_not_be_an_input_through_a_symlink(shard_run: Path,
                                                            tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s", journals=False)
    link = tmp_path / "out.h5"
    link.symlink_to(shards[0])
    before = shards[0].read_bytes()
    err = analyze("merge", *map(str, shards), "-o", str(link), code=2).stderr
    assert "is one of the inputs" in err
    assert shards[0].read_bytes() == before


def test_merge_lock_and_unique_temporaries(shard_run: Path, tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s", journals=False)
    out = tmp_path / "all.h5"
    with output_lock(out, "merge"):  # another merge holds the output
        with pytest.raises(CkptError, match=r"another merge \(pid \d+ on .*\) is writing it"):
            merge_cubes(shards, out)
    assert not out.exists() and not Path(f"{out}.lock").exists()
    stale = [tmp_path / "all.h5.0123abcd.merging", tmp_path / "all.h5.0123abcd.merging.journal"]
    decoy = tmp_path / "all.h5.x.h5.0123abcd.merging"  # another output's: not ours to remove
    for p in [*stale, decoy]:
        p.write_bytes(b"leftover of a killed merge")
    assert merge_cubes(shards, out)["cells"] == 10
    assert not any(p.exists() for p in stale) and decoy.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["all.h5", decoy.name, "s"])


def test_two_merges_to_one_output(shard_run: Path, tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s", journals=False)
    out = tmp_path / "all.h5"
    cmd = [*ANALYZE, "merge", *map(str, shards), "-o", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(c for c, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for c, err in results if c)
    assert ("another merge" in loser or "exists" in loser) and len(loser.strip().splitlines()) == 1
    with h5py.File(out, "r") as f:
        assert int(f["metrics/done"][()].sum()) == 10


# -- a full disk during merge names the output --------------------------------------------------

def test_full_disk_during_merge_names_the_output(shard_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shards = shards_in(shard_run, tmp_path / "s", journals=False)
    out = tmp_path / "all.h5"

    def full(src: str, dst: str) -> None:  # as shutil's fallback raises it: naming the source
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(merge_mod, "copy_file", full)
    with pytest.raises(CkptError) as exc:
        merge_cubes(shards, out)
    assert exc.value.path == str(out) and "disk is full" in str(exc.value)
    assert str(shards[0]) not in str(exc.value)
    monkeypatch.undo()

    def no_room(*a: object, **k: object) -> None:
        raise CkptError("cannot write the cube (No space left on device); the previous cube "
                        "is unchanged", "/x/all.h5.0123abcd.merging")

    monkeypatch.setattr(Cube, "materialize", no_room)
    with pytest.raises(CkptError) as exc:
        merge_cubes(shards, out)
    assert exc.value.path == str(out) and "merging" not in str(exc.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_full_tmpfs_during_merge_names_the_output(shard_run: Path, tmp_path: Path) -> None:
    shards = shards_in(shard_run, tmp_path / "s", journals=False)
    small = tmp_path / "small"
    small.mkdir()
    size = shards[0].stat().st_size // 2
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
                       capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = small / "all.h5"
        err = analyze("merge", *map(str, shards), "-o", str(out), code=1).stderr
        assert err.startswith(f"error: {out}: cannot write the merged cube"), err
        assert "disk is full" in err and len(err.strip().splitlines()) == 1
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
