"""Reading side of the contract: discovery, validation errors naming the file, foreign folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckpt_analyzer import load_model, load_subset
from ckpt_analyzer.checkpoints import (
    CheckpointRef,
    discover,
    load_state_into,
    pattern_regex,
    prefetch,
    read_header,
    read_state_dict,
)
from ckpt_analyzer.errors import CheckpointError, CkptError
from ckpt_analyzer.models import build_model


def test_discover_sorted(digits_run: Path) -> None:
    refs = discover(digits_run)
    assert [(r.width, r.epoch) for r in refs] == [(w, e) for w in (1, 4) for e in range(5)]
    assert all(isinstance(r, CheckpointRef) and r.error is None for r in refs)


def test_metadata_is_authoritative(digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    # a file whose name lies: its metadata says width 1 epoch 2
    (run / "w1" / "e00002.safetensors").rename(run / "w1" / "e00099.safetensors")
    refs = {(r.width, r.epoch): r for r in discover(run)}
    assert (1, 2) in refs and (1, 99) not in refs


def test_not_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "w1" / "e00000.safetensors"
    p.parent.mkdir()
    p.write_bytes(b"PK\x03\x04 this is a zip file" * 10)
    with pytest.raises(CheckpointError, match=str(p)):
        read_header(p)
    (ref,) = discover(tmp_path)
    assert ref.error and "not a safetensors file" in ref.error


def test_truncated(digits_run: Path, tmp_path: Path) -> None:
    src = digits_run / "w4" / "e00001.safetensors"
    p = tmp_path / "e.safetensors"
    p.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(p)


def test_missing_metadata(tmp_path: Path) -> None:
    p = tmp_path / "w1" / "e00000.safetensors"
    p.parent.mkdir()
    save_file({"a": torch.zeros(2)}, str(p), metadata={"format": "ckpt-analyzer.ckpt/1"})
    (ref,) = discover(tmp_path)
    assert ref.error and "missing metadata" in ref.error and str(p) in ref.error


def test_state_dict_that_does_not_fit(digits_run: Path) -> None:
    path = digits_run / "w4" / "e00000.safetensors"
    state = read_state_dict(path)
    small = build_model("mcnn", 1, 10, 1)
    with pytest.raises(CheckpointError) as exc:
        load_state_into(small, state, path)
    msg = str(exc.value)
    assert str(path) in msg and "has shape" in msg and "model wants" in msg


def test_load_model_and_subsets(digits_run: Path) -> None:
    m = load_model(str(digits_run / "w1" / "e00004.safetensors"))
    assert not m.training
    x, y = load_subset(str(digits_run), "train")
    xc, yc = load_subset(str(digits_run), "clean")
    xn, yn = load_subset(str(digits_run), "noisy")
    xt, yt = load_subset(str(digits_run), "test")
    assert len(xc) + len(xn) == len(x) and len(xt) == 1797 - len(x)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.05  # normalized
    with pytest.raises(ValueError):
        load_subset(str(digits_run), "validation")


def test_foreign_folder_with_pattern(digits_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    for w in (1, 4):
        (foreign / f"w{w}").mkdir(parents=True)
        for e in (0, 2):
            state = read_state_dict(digits_run / f"w{w}" / f"e{e:05d}.safetensors")
            save_file(state, str(foreign / f"w{w}" / f"ckpt_{e}.safetensors"))
    refs = discover(foreign, pattern="w{width}/ckpt_{epoch}.safetensors")
    assert [(r.width, r.epoch) for r in refs] == [(1, 0), (1, 2), (4, 0), (4, 2)]
    assert all(r.error is None for r in refs)
    m = load_model(str(foreign / "w4" / "ckpt_2.safetensors"), model="mcnn",
                   pattern="w{width}/ckpt_{epoch}.safetensors", num_classes=10, in_channels=1)
    ref = load_model(str(digits_run / "w4" / "e00002.safetensors"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(m(x), ref(x))
    with pytest.raises(CheckpointError, match="no ckpt-analyzer metadata"):
        load_model(str(foreign / "w4" / "ckpt_2.safetensors"))


def test_pt_only_on_opt_in(tmp_path: Path) -> None:
    p = tmp_path / "w1" / "ckpt_0.pt"
    p.parent.mkdir()
    torch.save({"a": torch.ones(2)}, p)
    assert discover(tmp_path, pattern="w{width}/ckpt_{epoch}.pt") == []
    (ref,) = discover(tmp_path, pattern="w{width}/ckpt_{epoch}.pt", allow_pt=True)
    with pytest.raises(CheckpointError, match="--allow-pt"):
        read_state_dict(ref.path)
    assert torch.equal(read_state_dict(ref.path, allow_pt=True)["a"], torch.ones(2))
    # a pickle with arbitrary objects is refused by weights_only=True
    q = tmp_path / "evil.pt"
    torch.save({"a": CheckpointRef(1, 1, "x")}, q)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(q, allow_pt=True)


def test_pattern_regex() -> None:
    rx = pattern_regex("run*/w{width}/ckpt_{epoch}.safetensors")
    m = rx.match("run3/w16/ckpt_120.safetensors")
    assert m and m["width"] == "16" and m["epoch"] == "120"
    with pytest.raises(CkptError):
        pattern_regex("ckpt.safetensors")


def test_prefetch_order_and_errors() -> None:
    def load(i: int) -> int:
        if i == 3:
            raise ValueError("bad")
        return i * 10

    out = list(prefetch(range(6), load, depth=2))
    assert [i for i, _ in out] == list(range(6))
    assert isinstance(out[3][1], ValueError) and out[5][1] == 50


# ---------------------------------------------------------------- the run folder's layout
def test_layout_spells_every_path_rule(tmp_path: Path) -> None:
    from ckpt_analyzer.checkpoints import layout

    run = tmp_path / "run"
    assert layout.checkpoint_path(run, 4, 7) == run / "w4" / "e00007.safetensors"
    assert layout.CKPT_RE.match("w4/e00007.safetensors")["epoch"] == "00007"  # type: ignore[index]
    assert layout.done_path(run) == run / "done" and layout.done_path(run, 4) == run / "w4" / "done"
    assert layout.run_json_path(run) == run / "run.json"
    assert layout.labels_path(run) == run / "labels.safetensors"
    assert layout.lock_path(run) == run / ".writer.lock"
    assert layout.default_cube(run) == run / "analysis.h5"
    assert layout.default_cube(run, (2, 4)) == run / "analysis.shard-2-of-4.h5"  # --shard 2/4
    assert layout.train_state_path(run, 2) == run / "w2" / "train_state.safetensors"
    assert [n for n in ("w4", "w12", "w", "wx", "w4a", "x4", "w-1") if layout.is_width_dir_name(n)] \
        == ["w4", "w12"]
    assert layout.is_activity_entry("done", False) and layout.is_activity_entry("w3", True)
    assert not layout.is_activity_entry("w3", False) and not layout.is_activity_entry("run.json", False)
    assert layout.is_checkpoint_temporary("e00001.safetensors.0a1b2c3d.tmp")
    assert not layout.is_checkpoint_temporary("e00001.safetensors.tmp")
    assert not layout.is_checkpoint_temporary("done.0a1b2c3d.tmp")
    assert layout.checkpoint_epochs(run, 4) == [] and not layout.has_checkpoint_files(run)
    (run / "w4").mkdir(parents=True)
    for name in ("e00010.safetensors", "e00002.safetensors", "e00003.safetensors.ab.tmp", "done",
                 "train_state.safetensors"):
        (run / "w4" / name).write_bytes(b"")
    assert layout.checkpoint_epochs(run, 4) == [2, 10] and layout.has_checkpoint_files(run)


def test_the_run_folder_layout_is_spelled_only_in_layout() -> None:
    """No module of the run folder's writers and readers spells a file name of the layout, or
    builds a width folder name, itself (docstrings and messages aside)."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "ckpt_analyzer"
    names = {"run.json", "labels.safetensors", "done", ".writer.lock", "train_state.safetensors",
             "analysis.h5", ".tmp", "*.tmp", ".safetensors"}
    files = [p for p in (pkg / "checkpoints").glob("*.py") if p.name != "layout.py"]
    files += [*(pkg / "integrations").glob("*.py"), *(pkg / "train").glob("*.py"),
              pkg / "functional" / "loss_error.py"]
    found = []
    for f in [*files, pkg / "probes" / "landscape.py"]:
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in docs:
                found.append(f"{f.name}:{n.lineno}: {n.value!r}")
            if (f in files and isinstance(n, ast.JoinedStr) and len(n.values) > 1
                    and isinstance(n.values[0], ast.Constant) and n.values[0].value == "w"):
                found.append(f"{f.name}:{n.lineno}: f'w{{...}}'")
    assert found == []
    landscape = (pkg / "probes" / "landscape.py").read_text()
    assert "checkpoints" not in {a.split(".")[0] for a in  # the probe reads no folder itself
                                 (n.module or "" for n in ast.walk(ast.parse(landscape))
                                  if isinstance(n, ast.ImportFrom))}


# ---------------------------------------------------------------- writing a checkpoint
def _slow_loss_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One point at a time, in float64 from the logits: the obvious reference."""
    import math

    if len(x) == 0:
        return math.nan, math.nan
    loss = wrong = 0.0
    with torch.no_grad():
        for i in range(len(x)):
            out = model(x[i:i + 1]).double()[0]
            loss += float(torch.logsumexp(out, 0) - out[y[i]])
            wrong += float(int(out.argmax()) != int(y[i]))
    return loss / len(x), wrong / len(x)


def test_metadata_loss_and_error_match_a_per_point_loop(digits_run: Path) -> None:
    from ckpt_analyzer.checkpoints import load_run_data
    from ckpt_analyzer.functional.loss_error import checkpoint_metrics, loss_and_error

    ref = discover(digits_run)[-1]
    model = load_model(ref.path).train()  # the evaluation switches to eval mode and back
    data = load_run_data(digits_run)
    got = checkpoint_metrics(model, data.x_train, data.y_train, data.noisy_mask, data.x_test,
                             data.y_test, batch_size=100)  # chunks of 100: several, the last short
    assert model.training
    model.eval()
    want_train = _slow_loss_error(model, data.x_train, data.y_train)
    want_test = _slow_loss_error(model, data.x_test, data.y_test)
    noisy = data.noisy_mask
    want_noisy = _slow_loss_error(model, data.x_train[noisy], data.y_train[noisy])
    assert noisy.any()
    assert got["train_loss"] == pytest.approx(want_train[0], rel=1e-6)
    assert got["test_loss"] == pytest.approx(want_test[0], rel=1e-6)
    assert (got["train_error"], got["noisy_error"], got["test_error"]) == \
        (want_train[1], want_noisy[1], want_test[1])
    # the trainer's metadata is this very evaluation (1024 rows a batch): the same bits
    recorded = read_header(ref.path)[1]
    for k, v in checkpoint_metrics(model, data.x_train, data.y_train, noisy, data.x_test,
                                   data.y_test).items():
        assert recorded[k] == repr(v), k
    empty = loss_and_error(model, data.x_test[:0], data.y_test[:0])
    assert all(v != v for v in empty)  # NaN, NaN


def test_write_checkpoint_metadata(tmp_path: Path) -> None:
    from ckpt_analyzer.checkpoints import CKPT_FORMAT, parse_metadata, write_checkpoint

    state = {"a": torch.arange(3.0)}
    path = write_checkpoint(tmp_path, state, arch="mcnn", width=2, epoch=3, step=-1,
                            num_classes=10, in_channels=1, image_size=8,
                            metrics={"test_error": 0.25},
                            extra={"lr": "0.1", "width": "99", "test_error": "0.5"})
    assert path == tmp_path / "w2" / "e00003.safetensors"
    meta = read_header(path)[1]
    assert meta == {"format": CKPT_FORMAT, "arch": "mcnn", "width": "2", "epoch": "3",
                    "step": "-1", "num_classes": "10", "in_channels": "1", "image_size": "8",
                    "train_loss": "nan", "train_error": "nan", "test_error": "0.5", "lr": "0.1"}
    assert parse_metadata(meta, path)["width"] == 2
    assert torch.equal(read_state_dict(path)["a"], state["a"])
    assert not list(tmp_path.rglob("*.tmp"))
