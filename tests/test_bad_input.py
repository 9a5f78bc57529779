"""Bad input, table-driven: every row is one command on one damaged input, its exit code, a
fragment of its one-line message, and (where something existed before) that nothing was lost.

Commands run in-process through click's CliRunner (no interpreter start per row); each row
works on its own copy of a small digits run that was measured once (probe ``metrics``).
"""

# ruff: noqa: E501  (the table reads best one row per line)
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import analyze, copy_run, journal_cells, train
from safetensors.torch import load_file, save_file

M = ["--probe", "metrics", "--quiet"]


@pytest.fixture(scope="module")
def measured(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits run with its metrics cube, measured once."""
    dst = copy_run(digits_run, tmp_path_factory.mktemp("bad") / "run")
    analyze("run", dst, *M)
    return dst


# ---------------------------------------------------------------- damage helpers
def edit_run_json(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def go(run: Path) -> None:
        doc = json.loads((run / "run.json").read_text())
        fn(doc)
        (run / "run.json").write_text(json.dumps(doc))
    return go


def write_run_json(text: str) -> Callable[[Path], None]:
    def go(run: Path) -> None:
        (run / "run.json").write_text(text)
    return go


def edit_labels(fn: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def go(run: Path) -> None:
        t = load_file(str(run / "labels.safetensors"))
        fn(t)
        save_file(t, str(run / "labels.safetensors"), metadata={"format": "ckpt-analyzer.labels/1"})
    return go


def set_key(d: dict, path: str, value: object) -> None:
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = value


def first_clean_relabelled(t: dict[str, torch.Tensor]) -> None:
    i = int(torch.nonzero(t["noisy_mask"] == 0)[0])
    t["train_labels"][i] = (t["clean_labels"][i] + 1) % 10


def only_pt(run: Path) -> None:
    for p in list(run.rglob("*.safetensors")):
        if p.parent != run:
            torch.save(load_file(str(p)), p.with_suffix(".pt"))
            p.unlink()
    (run / "analysis.h5").unlink()
    Path(f"{run}/analysis.h5.journal").unlink()


def other_run_cube(run: Path) -> None:
    """A cube and journal of the same checkpoints but another run.json/labels: seed changed."""
    edit_run_json(lambda d: set_key(d, "seed", 99))(run)
    edit_labels(lambda t: t["noisy_mask"].copy_(t["noisy_mask"]))(run)  # rewritten: new digest


def hdf5_not_cube(run: Path) -> None:
    with h5py.File(run / "other.h5", "w") as f:
        f["x"] = np.arange(3)


def corrupt_journal_pages(run: Path) -> None:
    j = Path(f"{run}/analysis.h5.journal")
    data = bytearray(j.read_bytes())
    for off in range(4096, len(data), 4096):  # the b-tree header of every page after the first
        data[off:off + 12] = b"\xa5" * 12
    j.write_bytes(bytes(data))


def junk_journal(run: Path) -> None:
    Path(f"{run}/analysis.h5.journal").write_bytes(b"this is not sqlite" * 100)


def duplicate_claim(run: Path) -> None:
    shutil.copy(run / "w4" / "e00002.safetensors", run / "w4" / "e00099.safetensors")


def stray_duplicate_not_canonical(run: Path) -> None:
    """Two files, neither at the contract's own path, claiming one (width, epoch)."""
    src = run / "w4" / "e00002.safetensors"
    (run / "w4" / "e00002.safetensors").rename(run / "w4" / "e00098.safetensors")
    shutil.copy(run / "w4" / "e00098.safetensors", run / "w4" / "e00097.safetensors")
    assert not src.exists()


def plan_width(width: int, then: Callable[[Path], None]) -> Callable[[Path], None]:
    """``then``, in a run whose run.json also plans ``width`` (so only the size guard refuses)."""
    def go(run: Path) -> None:
        manifest = json.loads((run / "run.json").read_text())
        manifest["widths"] = [*manifest["widths"], width]
        (run / "run.json").write_text(json.dumps(manifest))
        then(run)
    return go


def rewrite_meta(rel: str, **changes: str) -> Callable[[Path], None]:
    def go(run: Path) -> None:
        from safetensors import safe_open

        p = run / rel
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata())
        t = load_file(str(p))
        meta.update(changes)
        save_file(t, str(p), metadata=meta)
    return go


def nan_weights(run: Path) -> None:
    from safetensors import safe_open

    p = run / "w4" / "e00003.safetensors"
    with safe_open(str(p), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(p))
    k = next(k for k, v in t.items() if v.is_floating_point())
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("nan")
    save_file(t, str(p), metadata=meta)


def replaced_checkpoint(run: Path) -> None:
    """A measured checkpoint replaced in place (same name, other content)."""
    shutil.copy(run / "w4" / "e00004.safetensors", run / "w4" / "e00003.safetensors")
    rewrite_meta("w4/e00003.safetensors", epoch="3")(run)


def hold_cube(run: Path) -> None:
    from ckpt_analyzer.cube import Cube

    HELD.append(Cube(run / "analysis.h5").open())


HELD: list = []


# ---------------------------------------------------------------- the table
@dataclass
class Row:
    id: str
    args: list[str]  # "{run}" / "{cube}" / "{tmp}" substituted; first item: train | run | report
    code: int
    message: str
    damage: Callable[[Path], None] | None = None
    kept: bool = False  # the existing cube must come out unchanged
    extra: dict = field(default_factory=dict)


ROWS = [
    # ckpt-train: refused before anything is written
    Row("train-lr-nan", ["train", "{tmp}/new", "--lr", "nan"], 2, "--lr: must be a finite number"),
    Row("train-lr-inf", ["train", "{tmp}/new", "--lr", "inf"], 2, "--lr: must be a finite number"),
    Row("train-lr-negative", ["train", "{tmp}/new", "--lr", "-1"], 2, "--lr: must be positive"),
    Row("train-momentum-nan", ["train", "{tmp}/new", "--momentum", "nan"], 2, "--momentum: must be a finite"),
    Row("train-wd-inf", ["train", "{tmp}/new", "--weight-decay", "inf"], 2, "--weight-decay: must be a finite"),
    Row("train-noise-nan", ["train", "{tmp}/new", "--label-noise", "nan"], 2, "--label-noise"),
    Row("train-ls-freq-nan", ["train", "{tmp}/new", "--label-smoothing", "radial", "--ls-frequency",
                              "nan"], 2, "--ls-frequency: must be a finite"),
    Row("train-seed-65-bits", ["train", "{tmp}/new", "--seed", str(2**64)], 2, "--seed: must be an integer in [0, 2**64 - 1]"),
    Row("train-seed-negative", ["train", "{tmp}/new", "--seed", "-1"], 2, "--seed: must be an integer"),
    Row("train-split-seed-65-bits", ["train", "{tmp}/new", "--split-seed", str(2**64)], 2, "--split-seed"),
    Row("train-widths-huge-range", ["train", "{tmp}/new", "--widths", "1:2000000000"], 2, "range '1:2000000000' has 2,000,000,000 values"),
    Row("train-width-huge-model", ["train", "{tmp}/new", "--widths", "100000"], 2, "GiB for its weights alone"),
    Row("train-width-overflow", ["train", "{tmp}/new", "--widths", "2000000000"], 2, "too large to build"),
    Row("train-epochs-zero", ["train", "{tmp}/new", "--epochs", "0"], 2, "--epochs: must be a positive"),
    Row("train-epochs-huge", ["train", "{tmp}/new", "--epochs", "2000000"], 2, "--epochs: at most"),
    Row("train-widths-zero", ["train", "{tmp}/new", "--widths", "0"], 2, "--widths"),
    Row("train-optimizer", ["train", "{tmp}/new", "--optimizer", "adamw"], 2, "unknown optimizer"),
    Row("train-other-settings", ["train", "{run}", "--widths", "1,4", "--epochs", "4", "--seed", "4"],
        1, "holds a run with other settings", kept=True),
    Row("train-out-is-file", ["train", "{run}/run.json"], 1, "exists and is a file"),
    # ckpt-analyze run: parameters
    Row("probe-h-inf", ["run", "{run}", "--probe", "spectrum", "--set", "spectrum.h=inf"], 2, "spectrum.h: must be a finite number", kept=True),
    Row("probe-h-nan", ["run", "{run}", "--probe", "spectrum", "--set", "spectrum.h=nan"], 2, "spectrum.h: must be a finite number", kept=True),
    Row("probe-n-huge", ["run", "{run}", "--probe", "spectrum", "--set", "spectrum.n=200000000"], 2, "GiB of logits", kept=True),
    Row("probe-landscape-grid-huge", ["run", "{run}", "--probe", "landscape", "--set", "landscape.steps=100000", "--set", "landscape.directions=2"], 2, "probe 'landscape': its results would take", kept=True),
    Row("probe-bins-huge", ["run", "{run}", "--probe", "interpolation", "--set", "interpolation.bins=2000000000"], 2, "interpolation.bins must be in [1, 100,000] (got 2,000,000,000)", kept=True),
    Row("probe-steps-huge", ["run", "{run}", "--probe", "landscape", "--set", "landscape.barrier_steps=1000000"], 2, "landscape.barrier_steps must be in [2, 100,000]", kept=True),
    Row("probe-k-huge", ["run", "{run}", "--probe", "hessian", "--set", "hessian.k=1000000000", "--set", "hessian.iterations=1000000000"], 2, "hessian.k must be in [1, 100,000]", kept=True),
    Row("probe-jitters-huge", ["run", "{run}", "--probe", "sharpness", "--set", "sharpness.jitters=1000000000"], 2, "sharpness.jitters must be in [0, 100,000]", kept=True),
    Row("probe-pairs-huge", ["run", "{run}", "--probe", "interpolation", "--set", "interpolation.pairs=1000000000"], 2, "interpolation.pairs must be in [1, 100,000]", kept=True),
    Row("probe-hist-bins-huge", ["run", "{run}", "--probe", "weights_spectrum", "--set", "weights_spectrum.bins=1000000"], 2, "weights_spectrum.bins must be in", kept=True),
    Row("probe-unknown", ["run", "{run}", "--probe", "spectrun"], 2, "did you mean 'spectrum'", kept=True),
    Row("analyze-seed-65-bits", ["run", "{run}", *M, "--seed", str(2**64)], 2, "--seed: must be an integer in [0, 2**64 - 1]", kept=True),
    Row("analyze-seed-negative", ["run", "{run}", *M, "--seed", "-3"], 2, "--seed", kept=True),
    Row("analyze-widths-huge-range", ["run", "{run}", *M, "--widths", "1:2000000000"], 2, "at most 100,000", kept=True),
    Row("analyze-epochs-huge-range", ["run", "{run}", *M, "--epochs", "0:999999999"], 2, "at most 100,000", kept=True),
    Row("analyze-batch-size-zero", ["run", "{run}", *M, "--batch-size", "0"], 2, "must be positive", kept=True),
    Row("analyze-device", ["run", "{run}", *M, "--device", "tpu"], 2, "--device", kept=True),
    Row("config-changed", ["run", "{run}", "--probe", "metrics", "--probe", "spectrum", "--set", "spectrum.points=7", "--quiet"], 0, "", kept=False),
    # run.json
    Row("run-json-list", ["run", "{run}", *M], 1, "run.json: not a ckpt-analyzer run manifest (a JSON list", write_run_json("[1, 2]"), kept=True),
    Row("run-json-not-json", ["run", "{run}", *M], 1, "run.json: unreadable manifest", write_run_json("{"), kept=True),
    Row("run-json-no-dataset", ["run", "{run}", *M], 1, "run.json: missing key 'dataset'", edit_run_json(lambda d: d.pop("dataset")), kept=True),
    Row("run-json-dataset-string", ["run", "{run}", *M], 1, "'dataset' must be an object", edit_run_json(lambda d: set_key(d, "dataset", "digits")), kept=True),
    Row("run-json-mean-text", ["run", "{run}", *M], 1, "'dataset.mean' must be a non-empty list of finite numbers", edit_run_json(lambda d: set_key(d, "dataset.mean", ["a"])), kept=True),
    Row("run-json-std-zero", ["run", "{run}", *M], 1, "'dataset.std' must be positive", edit_run_json(lambda d: set_key(d, "dataset.std", [0.0])), kept=True),
    Row("run-json-std-nan", ["run", "{run}", *M], 1, "'dataset.std' must be a non-empty list of finite", edit_run_json(lambda d: set_key(d, "dataset.std", [float("nan")])), kept=True),
    Row("run-json-mean-channels", ["run", "{run}", *M], 1, "'dataset.mean' has 3 channels", edit_run_json(lambda d: (set_key(d, "dataset.mean", [0.1] * 3), set_key(d, "dataset.std", [0.2] * 3))), kept=True),
    Row("run-json-no-name", ["run", "{run}", *M], 1, "'dataset.name'", edit_run_json(lambda d: d["dataset"].pop("name")), kept=True),
    Row("run-json-split-seed", ["run", "{run}", *M], 1, "'dataset.split_seed'", edit_run_json(lambda d: set_key(d, "dataset.split_seed", -1)), kept=True),
    # labels.safetensors
    Row("labels-short-mask", ["run", "{run}", *M], 1, "labels.safetensors: 'noisy_mask' has shape", edit_labels(lambda t: t.update(noisy_mask=t["noisy_mask"][:-5].clone())), kept=True),
    Row("labels-short-clean", ["run", "{run}", *M], 1, "'clean_labels' has shape", edit_labels(lambda t: t.update(clean_labels=t["clean_labels"][:10].clone())), kept=True),
    Row("labels-class-10", ["run", "{run}", *M], 1, "'train_labels' holds class 10, outside 0..9", edit_labels(lambda t: t["train_labels"].__setitem__(0, 10)), kept=True),
    Row("labels-class-negative", ["run", "{run}", *M], 1, "holds class -1", edit_labels(lambda t: t["clean_labels"].__setitem__(0, -1)), kept=True),
    Row("labels-float", ["run", "{run}", *M], 1, "'train_labels' must hold integer class ids", edit_labels(lambda t: t.update(train_labels=t["train_labels"].double())), kept=True),
    Row("labels-mask-not-flags", ["run", "{run}", *M], 1, "'noisy_mask' must hold 0/1 flags", edit_labels(lambda t: t["noisy_mask"].__setitem__(0, 2)), kept=True),
    Row("labels-mask-contradicts", ["run", "{run}", *M], 1, "marks point", edit_labels(first_clean_relabelled), kept=True),
    Row("labels-missing-tensor", ["run", "{run}", *M], 1, "missing tensor 'noisy_mask'", edit_labels(lambda t: t.pop("noisy_mask")), kept=True),
    Row("labels-missing-file", ["run", "{run}", *M], 1, "missing labels.safetensors", lambda r: (r / "labels.safetensors").unlink(), kept=True),
    # checkpoints
    Row("pt-without-flag", ["run", "{run}", *M], 1, "pass --allow-pt", only_pt),
    Row("duplicate-claim-skipped", ["run", "{run}", *M], 0, "also claims width 4 epoch 2; measuring", duplicate_claim, kept=True),
    Row("duplicate-neither-canonical", ["run", "{run}", *M, "--overwrite"], 1, "two checkpoints for width 4 epoch 2", stray_duplicate_not_canonical),
    Row("epoch-contradicts-name", ["run", "{run}", *M], 0, "the metadata wins", rewrite_meta("w4/e00004.safetensors", epoch="7")),
    Row("absurd-metadata-width", ["run", "{run}", *M, "--overwrite"], 1, "metadata width: mcnn of width 1,000,000 would need", plan_width(1000000, rewrite_meta("w4/e00004.safetensors", width="1000000"))),
    Row("unplanned-metadata-width", ["run", "{run}", *M, "--overwrite"], 1, "width 1000000 was never planned", rewrite_meta("w4/e00004.safetensors", width="1000000")),
    Row("nan-weights", ["run", "{run}", *M, "--overwrite"], 1, "has non-finite weights", nan_weights),
    Row("replaced-in-place", ["run", "{run}", *M], 0, "replaced since it was measured", replaced_checkpoint),
    # the cube
    Row("other-runs-cube", ["run", "{run}", *M], 2, "this cube was computed from another run", other_run_cube, kept=True),
    Row("output-not-a-cube", ["run", "{run}", *M, "-o", "{run}/other.h5"], 1, "not a ckpt-analyzer cube; refusing", hdf5_not_cube, kept=True),
    Row("output-is-dir", ["run", "{run}", *M, "-o", "{run}/w4"], 1, "is a directory", kept=True),
    Row("journal-junk", ["run", "{run}", *M], 1, "not a ckpt-analyzer journal", junk_journal),
    Row("journal-corrupt-pages", ["run", "{run}", *M], 1, "journal is damaged", corrupt_journal_pages, kept=True),
    Row("report-while-writing", ["report", "{run}/analysis.h5"], 1, "use --no-store", hold_cube, kept=True),
    Row("report-no-store-while-writing", ["report", "{run}/analysis.h5", "--no-store"], 0, "", hold_cube, kept=True),
    Row("plot-dpi-huge", ["plot", "{run}/analysis.h5", "--kind", "double-descent", "--dpi", "100000", "-o", "{tmp}/f.png"], 2, "Invalid value for '--dpi'", kept=True),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, measured: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(measured, run)
    cube = run / "analysis.h5"
    before_cube, before_cells = cube.read_bytes(), journal_cells(cube)
    before_files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if row.damage is not None:
        row.damage(run)
    args = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in row.args]
    try:
        r = train(*args[1:], "--quiet", code=row.code) if args[0] == "train" else \
            analyze(*args, code=row.code)
    finally:
        while HELD:
            HELD.pop().close()
    if row.code:
        # our one line ("error: ...") or click's for its own option types ("Error: ...")
        lines = [ln for ln in r.stderr.splitlines() if ln.lower().startswith("error:")]
        assert len(lines) >= 1 and "Traceback" not in r.stderr, r.stderr
        assert row.message in lines[0] if row.message else True, r.stderr
    elif row.message:
        assert row.message in r.stderr, r.stderr
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))
    if args[0] == "train" and "{tmp}/new" in row.args:
        assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    if row.kept:  # nothing lost: the cube and its journal's cells are as before
        if args[0] == "train":
            assert all(p.read_bytes() == b for p, b in before_files.items())
        if row.code:  # a refused command does not even rewrite the cube
            assert cube.read_bytes() == before_cube
        if row.id != "journal-corrupt-pages":
            assert journal_cells(cube) == before_cells


def test_table_size() -> None:
    assert len(ROWS) >= 40
