"""Checkpoint formats of other trainers, written by the real libraries: a sharded Hugging Face
folder (huggingface_hub's own splitter), a PyTorch distributed checkpoint (torch.distributed
.checkpoint without a process group), transformers-style .bin and ``{"model_state_dict": ...}``
files (torch.save), FSDP wrapper names, torch.compile / DDP prefixes."""

from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckpt_analyzer.checkpoints import (
    DCPState,
    ShardedSafetensorsState,
    discover,
    load_state_into,
    open_state,
    read_header,
    read_state_dict,
    strip_prefix,
)
from ckpt_analyzer.cli import main as analyze_main
from ckpt_analyzer.errors import CheckpointError
from ckpt_analyzer.models import build_model

EPOCHS = (0, 2, 4)
M = ["--model", "mcnn", "--width", "4", "--dataset", "digits", "--quiet"]


def analyze(*args: str, code: int = 0) -> str:
    r = CliRunner().invoke(analyze_main, list(args))
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    return r.output


def contract(run: Path, epoch: int) -> dict[str, torch.Tensor]:
    return read_state_dict(run / "w4" / f"e{epoch:05d}.safetensors")


def save_dcp(state: dict[str, object], folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized"
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def test_errors(cube: Path) -> np.ndarray:
    with h5py.File(cube, "r") as f:
        subsets = [s.decode() if isinstance(s, bytes) else s for s in f["metrics/subset"][()]]
        return np.asarray(f["metrics/error"][()][..., subsets.index("test")])


test_errors.__test__ = False  # type: ignore[attr-defined]


def recorded(run: Path, epoch: int) -> float:
    return float(read_header(run / "w4" / f"e{epoch:05d}.safetensors")[1]["test_error"])


# ---------------------------------------------------------------- sharded Hugging Face
@pytest.fixture(scope="module")
def hf_sharded(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint-<step>/ folders written by huggingface_hub.save_torch_state_dict, split into
    several shards, keys under 'model.', beside trainer files."""
    from huggingface_hub import save_torch_state_dict

    out = tmp_path_factory.mktemp("hfsharded") / "out"
    for e in EPOCHS:
        d = out / f"checkpoint-{e * 10}"
        d.mkdir(parents=True)
        state = {f"model.{k}": v for k, v in contract(digits_run, e).items()}
        save_torch_state_dict(state, d, max_shard_size=20_000)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": e * 10}))
        torch.save({"state": {}}, d / "optimizer.pt")
    return out


def test_sharded_folder_is_one_lazy_checkpoint(hf_sharded: Path, digits_run: Path) -> None:
    folder = hf_sharded / "checkpoint-40"
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2  # really sharded
    refs = discover(hf_sharded, "checkpoint-{step}", width=4)
    assert [(r.width, r.epoch, r.path, r.error) for r in refs] == [
        (4, e * 10, str(hf_sharded / f"checkpoint-{e * 10}"), None) for e in EPOCHS]
    # the index file named in the pattern: the same refs
    assert [r.path for r in discover(hf_sharded,
                                     "checkpoint-{step}/model.safetensors.index.json")] == \
        [r.path for r in refs]
    # the pattern matching the shards does not make each shard a checkpoint
    assert [r.path for r in discover(hf_sharded, "checkpoint-{step}/*.safetensors")] == \
        [r.path for r in refs]
    state = open_state(folder)
    assert isinstance(state, ShardedSafetensorsState)
    model = build_model("mcnn", 4, 10, 1)
    load_state_into(model, state, folder)
    want = contract(digits_run, 4)
    assert set(state._read) == {f"model.{k}" for k in want}  # only the model's keys read
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k])


def test_sharded_folder_read_only_as_far_as_needed(hf_sharded: Path, tmp_path: Path) -> None:
    """A tensor the model does not use is never read: its shard may hold garbage bytes."""
    import shutil

    folder = tmp_path / "ck"
    shutil.copytree(hf_sharded / "checkpoint-40", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    from safetensors.torch import save_file

    save_file({"unused": torch.zeros(4)}, str(folder / "extra.safetensors"))
    index["weight_map"]["unused"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    state = open_state(folder)
    load_state_into(build_model("mcnn", 4, 10, 1), state, folder)
    assert "unused" not in state._read and "unused" in state


@pytest.mark.parametrize("damage, cause", [
    ("missing_shard", "shard model-00001-of-"),
    ("bad_index", "not a safetensors index (not JSON)"),
    ("escape", "is not a file name in the index's folder"),
])
def test_sharded_folder_bad_input(hf_sharded: Path, tmp_path: Path, damage: str,
                                  cause: str) -> None:
    import shutil

    folder = tmp_path / "checkpoint-7"
    shutil.copytree(hf_sharded / "checkpoint-40", folder)
    index = folder / "model.safetensors.index.json"
    if damage == "missing_shard":
        next(folder.glob("model-00001-of-*.safetensors")).unlink()
    elif damage == "bad_index":
        index.write_text("{not json")
    else:
        obj = json.loads(index.read_text())
        obj["weight_map"][next(iter(obj["weight_map"]))] = "../../etc/passwd"
        index.write_text(json.dumps(obj))
    with pytest.raises(CheckpointError, match="checkpoint-7") as exc:
        open_state(folder)
    assert cause in str(exc.value)
    (ref,) = discover(tmp_path, "checkpoint-{step}")
    assert ref.error is not None and cause in ref.error


def test_run_on_sharded_folder(hf_sharded: Path, digits_run: Path) -> None:
    out = analyze("run", str(hf_sharded), "--probe", "metrics", *M, "--pattern",
                  "checkpoint-{step}")
    assert "3 checkpoint(s) measured" in out
    err = test_errors(hf_sharded / "analysis.h5")
    # the same weights as the contract run: its recorded test errors
    assert err[:, 0] == pytest.approx([recorded(digits_run, e) for e in EPOCHS], abs=1e-6)


def test_sharded_bin_folder(digits_run: Path, tmp_path: Path) -> None:
    """transformers' safe_serialization=False: pytorch_model.bin.index.json + .bin shards."""
    from huggingface_hub import save_torch_state_dict

    for e in EPOCHS:
        d = tmp_path / f"checkpoint-{e}"
        d.mkdir()
        save_torch_state_dict(contract(digits_run, e), d, max_shard_size=20_000,
                              safe_serialization=False)
    assert len(list((tmp_path / "checkpoint-4").glob("pytorch_model-*.bin"))) >= 2
    assert (tmp_path / "checkpoint-4" / "pytorch_model.bin.index.json").is_file()
    with pytest.raises(CheckpointError, match="only with --allow-pt"):
        open_state(tmp_path / "checkpoint-4")
    model = build_model("mcnn", 4, 10, 1)
    load_state_into(model, open_state(tmp_path / "checkpoint-4", allow_pt=True), "x")
    want = contract(digits_run, 4)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    notes: list[str] = []
    assert discover(tmp_path, "checkpoint-{epoch}", warnings=notes) == []
    assert any("3 folder checkpoint(s) of pickle-based files" in n for n in notes)
    refs = discover(tmp_path, "checkpoint-{epoch}", allow_pt=True, width=4)
    assert [(r.epoch, r.path, r.error) for r in refs] == [
        (e, str(tmp_path / f"checkpoint-{e}"), None) for e in EPOCHS]


# ---------------------------------------------------------------- DCP / FSDP sharded
@pytest.fixture(scope="module")
def dcp_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """step_<n>/ DCP folders of {"model": state, "optim": Adam state, "epoch": n}, as
    torch.distributed.checkpoint (FSDP's sharded state dict) writes them in one process."""
    out = tmp_path_factory.mktemp("dcp") / "out"
    for e in EPOCHS:
        model = build_model("mcnn", 4, 10, 1).eval()
        opt = torch.optim.Adam(model.parameters())
        model(torch.zeros(2, 1, 8, 8)).sum().backward()
        opt.step()  # an optimizer state with tensors of the model's shapes
        save_dcp({"model": contract(digits_run, e), "optim": opt.state_dict(), "epoch": e},
                 out / f"step_{e}")
    return out


def test_dcp_folder_reads_the_model(dcp_run: Path, digits_run: Path) -> None:
    folder = dcp_run / "step_4"
    assert (folder / ".metadata").is_file()
    with pytest.raises(CheckpointError, match="only with --allow-pt"):
        open_state(folder)
    state = open_state(folder, allow_pt=True)
    assert isinstance(state, DCPState)
    model = build_model("mcnn", 4, 10, 1)
    load_state_into(model, state, folder)
    want = contract(digits_run, 4)
    assert set(state._read) == {f"model.{k}" for k in want}  # the optimizer state is not read
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k])
    notes: list[str] = []
    assert discover(dcp_run, "step_{epoch}", warnings=notes) == []
    assert any("3 folder checkpoint(s) of pickle-based files (a DCP .metadata, .bin shards) "
               "not read (pass --allow-pt" in n for n in notes)
    refs = discover(dcp_run, "step_{epoch}", allow_pt=True, width=4)
    assert [(r.epoch, r.error) for r in refs] == [(e, None) for e in EPOCHS]


def test_dcp_metadata_is_never_fully_unpickled(dcp_run: Path, tmp_path: Path) -> None:
    """A .metadata that names any other global is refused before it is built."""
    import shutil

    folder = tmp_path / "step_9"
    shutil.copytree(dcp_run / "step_4", folder)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="posix.system is not a DCP metadata class"):
        open_state(folder, allow_pt=True)
    assert not (tmp_path / "pwned").exists()
    (ref,) = discover(tmp_path, "step_{epoch}", allow_pt=True)
    assert ref.error is not None and "not a readable DCP checkpoint" in ref.error


def test_run_on_dcp_folder(dcp_run: Path, digits_run: Path) -> None:
    analyze("run", str(dcp_run), "--probe", "metrics", *M, "--pattern", "step_{epoch}",
            code=1)  # no checkpoints without --allow-pt
    out = analyze("run", str(dcp_run), "--probe", "metrics", *M, "--pattern", "step_{epoch}",
                  "--allow-pt")
    assert "3 checkpoint(s) measured" in out
    err = test_errors(dcp_run / "analysis.h5")
    assert err[:, 0] == pytest.approx([recorded(digits_run, e) for e in EPOCHS], abs=1e-6)


# ---------------------------------------------------------------- pickles and prefixes
def test_transformers_bin_and_model_state_dict_files(digits_run: Path, tmp_path: Path) -> None:
    want = contract(digits_run, 2)
    model = build_model("mcnn", 4, 10, 1)
    # a transformers-style pytorch_model.bin: a plain state dict through torch.save
    torch.save(want, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pt"):
        open_state(tmp_path / "pytorch_model.bin")
    load_state_into(model, open_state(tmp_path / "pytorch_model.bin", allow_pt=True),
                    "pytorch_model.bin")
    # the common {"epoch", "model_state_dict", "optimizer_state_dict"} file: found by its keys
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.eval()(torch.zeros(2, 1, 8, 8)).sum().backward()
    opt.step()
    torch.save({"epoch": 2, "model_state_dict": {f"module.{k}": v for k, v in want.items()},
                "optimizer_state_dict": opt.state_dict(), "test_acc": 0.9}, tmp_path / "c.pt")
    state = open_state(tmp_path / "c.pt", allow_pt=True)
    assert set(strip_prefix(state, want)) == set(want)  # model_state_dict.module. found
    # --state-key model_state_dict: the same (a module. prefix under it still found)
    got = strip_prefix(state, want, "model_state_dict")
    assert all(torch.equal(got[k], want[k]) for k in want)
    # a pickle with arbitrary objects is still refused
    buf = io.BytesIO()
    torch.save({"model_state_dict": want, "cfg": Path("x")}, buf)
    (tmp_path / "d.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="weights_only"):
        open_state(tmp_path / "d.pt", allow_pt=True)


@pytest.mark.parametrize("rename", [
    lambda k: f"_orig_mod.{k}",  # torch.compile
    lambda k: f"module.{k}",  # DDP
    lambda k: f"module._orig_mod.{k}",  # both
    lambda k: ".".join(p if i else f"{p}._fsdp_wrapped_module"
                       for i, p in enumerate(k.split("."))),  # FSDP(1) wrapper inside keys
    lambda k: f"_checkpoint_wrapped_module.{k}",  # activation checkpointing
])
def test_prefixes_and_wrappers(digits_run: Path, rename: object) -> None:
    want = contract(digits_run, 4)
    state = {rename(k): v for k, v in want.items()}  # type: ignore[operator]
    model = build_model("mcnn", 4, 10, 1)
    load_state_into(model, state, "x")
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in want)


def test_state_key_on_the_command_line(digits_run: Path, tmp_path: Path) -> None:
    """.pt files with {"epoch", "model_state_dict"} and safetensors with such prefixed keys."""
    from safetensors.torch import save_file

    for e in EPOCHS:
        state = contract(digits_run, e)
        torch.save({"epoch": e, "model_state_dict": state}, tmp_path / f"ep{e}.pt")
    out = analyze("run", str(tmp_path), "--probe", "metrics", *M, "--pattern", "ep{epoch}.pt",
                  "--allow-pt", "--state-key", "model_state_dict")
    assert "3 checkpoint(s) measured" in out
    err = test_errors(tmp_path / "analysis.h5")
    assert err[:, 0] == pytest.approx([recorded(digits_run, e) for e in EPOCHS], abs=1e-6)
    st = tmp_path / "st"
    st.mkdir()
    for e in EPOCHS:
        save_file({f"model_state_dict.{k}": v for k, v in contract(digits_run, e).items()},
                  str(st / f"ep{e}.safetensors"))
    analyze("run", str(st), "--probe", "metrics", *M, "--pattern", "ep{epoch}.safetensors",
            "--state-key", "model_state_dict")
    assert test_errors(st / "analysis.h5")[:, 0] == pytest.approx(err[:, 0], abs=0)
    r = CliRunner().invoke(analyze_main, ["run", str(st), "--probe", "metrics", *M, "-o",
                                          str(st / "b.h5"), "--pattern",
                                          "ep{epoch}.safetensors", "--state-key", "optim"])
    assert r.exit_code == 1 and "prefix 'optim.' matches no key" in r.output
