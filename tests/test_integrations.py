"""Meeting users where they train: RunWriter from any loop (the README example), Lightning,
other trainers' files (Hugging Face folders with steps, plain torch.save, Lightning .ckpt),
architectures by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckpt_analyzer import RunWriter
from ckpt_analyzer.checkpoints import (
    discover,
    is_done,
    read_header,
    read_run_json,
    read_state_dict,
    save_tensors,
    strip_prefix,
)
from ckpt_analyzer.errors import CheckpointError, CkptError, UsageError
from ckpt_analyzer.models import build_model

ROOT = Path(__file__).resolve().parents[1]
ANALYZE = [sys.executable, "-m", "ckpt_analyzer.cli"]


def analyze(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*ANALYZE, *args], capture_output=True, text=True, env=dict(os.environ),
                       cwd=ROOT)  # where the writer ran: a script factory's name is relative
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


def cube_metrics(path: Path) -> tuple[dict[str, object], np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return (dict(f.attrs), f["epoch"][()], f["width"][()], f["metrics/error"][()])


# ---------------------------------------------------------------- your own loop
@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's plain-PyTorch loop, run as a script."""
    out = tmp_path_factory.mktemp("own") / "run"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out


def test_own_loop_example_writes_the_contract(own_run: Path) -> None:
    run = read_run_json(own_run)
    assert run is not None and run["widths"] == [2, 8] and run["epochs"] == 5
    # the script's factory by its path relative to the working directory, never an absolute one
    assert run["arch"] == "examples/own_loop.py:make_model"  # importable: --trust-code
    assert run["label_noise"]["fraction"] == 0.2 and run["optimizer"]["name"] == "sgd"
    assert run["save"]["epochs"] == [0, 1, 2, 3, 4, 5] and run["time_unit"] == "epoch"
    refs = discover(own_run)
    assert [(r.width, r.epoch) for r in refs] == [(w, e) for w in (2, 8) for e in range(6)]
    meta = refs[-1].metadata
    assert meta["step"] > 0 and meta["lr"] == "0.1" and 0 <= meta["train_error"] < 0.9
    assert is_done(own_run, 2) and is_done(own_run, 8) and is_done(own_run)
    assert not list(own_run.rglob("*.tmp"))


def test_own_loop_analyzed_with_trust_code(own_run: Path) -> None:
    # the recorded factory is a file: built only when the reader says so (issue 20)
    r = analyze("run", str(own_run), "--probe", "metrics", "--quiet", check=False)
    assert r.returncode == 2 and "is code named by the file" in r.stderr
    assert "--trust-code" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    analyze("run", str(own_run), "--probe", "metrics", "--quiet", "--trust-code")
    attrs, epochs, widths, err = cube_metrics(own_run / "analysis.h5")
    assert attrs["time_unit"] == "epoch" and list(widths) == [2, 8] and list(epochs) == list(range(6))
    with h5py.File(own_run / "analysis.h5", "r") as f:
        subsets = [s.decode() if isinstance(s, bytes) else s for s in f["metrics/subset"][()]]
    # the analyzer's train error is the error the writer recorded (same model, same labels)
    for j, w in enumerate((2, 8)):
        meta = read_header(own_run / f"w{w}" / "e00005.safetensors")[1]
        assert err[-1, j, subsets.index("train")] == pytest.approx(float(meta["train_error"]), abs=1e-6)
        assert err[-1, j, subsets.index("test")] == pytest.approx(float(meta["test_error"]), abs=1e-6)


def test_unplanned_width_on_disk_is_skipped_and_named(own_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(own_run, run, ignore=shutil.ignore_patterns("analysis.h5*"))
    stray = run / "w16" / "e00000.safetensors"
    stray.parent.mkdir()
    meta = dict(read_header(run / "w8" / "e00000.safetensors")[1], width="16")
    save_tensors(stray, read_state_dict(run / "w8" / "e00000.safetensors"), meta)
    r = analyze("run", str(run), "--probe", "metrics", "--quiet", "--trust-code", check=False)
    assert r.returncode == 1
    assert "width 16 was never planned by the trainer (run.json widths: 2, 8)" in r.stdout
    assert "w16/e00000.safetensors" in r.stdout
    _, _, widths, _ = cube_metrics(run / "analysis.h5")
    assert list(widths) == [2, 8]


def mlp_factory(width: int, num_classes: int, in_channels: int) -> torch.nn.Module:
    return build_model("mlp", width, num_classes, in_channels)


def test_writer_bad_input_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "w"
    w = RunWriter(out, model="mcnn", widths=[1, 2], epochs=2, save=[0, 2], seed=1)
    net = build_model("mcnn", 1, w.num_classes, w.in_channels)
    with pytest.raises(UsageError, match=r"width 4 was not planned \(run.json widths: 1, 2\)"):
        w.save(net, width=4, epoch=0)
    with pytest.raises(UsageError, match="epoch 1 is not in the planned save schedule"):
        w.save(net, width=1, epoch=1)
    with pytest.raises(UsageError, match="'0.weight' has shape"):  # a width-1 net saved as 2
        w.save(net, width=2, epoch=0)

    class Wrapper(torch.nn.Module):  # as a LightningModule holds its network
        def __init__(self) -> None:
            super().__init__()
            self.net = net

    path = w.save(Wrapper(), width=1, epoch=0, note="init", custom=3)
    meta = read_header(path)[1]
    assert meta["arch"] == "mcnn" and meta["step"] == "-1" and meta["note"] == "init"
    assert set(read_state_dict(path)) == set(net.state_dict())  # prefix 'net.' stripped
    assert float(meta["test_error"]) > 0.5  # computed on the test split, untrained
    with pytest.raises(CkptError, match=r"w1: finish\(width=1\): planned checkpoint\(s\) of "
                       r"epoch 2 missing; width 1 not marked done"):
        w.finish(1)
    assert not is_done(out, 1)
    w.save(net, width=1, epoch=2)
    w.finish(1)
    with pytest.raises(UsageError, match="already marked finished"):
        w.save(net, width=1, epoch=2)
    with pytest.warns(UserWarning, match=r"not marked done, planned checkpoints missing: width 2: "
                      r"epoch 0, 2"):
        w.close()
    assert not is_done(out)  # width 2 has not finished
    # re-opening with the same settings continues (the first writer is closed); other settings
    # are refused
    again = RunWriter(out, model="mcnn", widths=[1, 2], epochs=2, save=[0, 2], seed=1)
    with pytest.warns(UserWarning, match="width 2: epoch 0, 2"):
        again.close()  # still incomplete: said again, not marked
    assert not is_done(out)
    with pytest.raises(CkptError, match="other settings"):
        RunWriter(out, model="mcnn", widths=[1, 2, 4], epochs=2, save=[0, 2], seed=1)


def test_writer_factory_recording(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"is code, not a registered architecture; the analyzer "
                      r"runs it only when asked: ckpt-analyze run .*/a --model "
                      rf"{__name__}:mlp_factory \(or --trust-code\)"):
        w = RunWriter(tmp_path / "a", model=mlp_factory, epochs=1, label_noise=0.1)
    assert w.arch == f"{__name__}:mlp_factory"
    assert int(w.noisy_mask.sum()) == round(0.1 * len(w.y_train))
    with pytest.warns(UserWarning, match="cannot be imported by the analyzer"):
        RunWriter(tmp_path / "b", model=lambda wd, c, i: mlp_factory(wd, c, i))
    y = w.data.y_train.clone()  # the true labels, 5 of them changed
    y[:5] = (y[:5] + 1) % 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = RunWriter(tmp_path / "c", model="mlp", train_labels=y)
    assert int(given.noisy_mask.sum()) == 5
    assert read_run_json(tmp_path / "c")["label_noise"]["kind"] == "given"  # type: ignore[index]


def test_a_script_factory_is_recorded_by_name(tmp_path: Path) -> None:
    """A factory of ``__main__``: ``python pkg/train.py`` records the script's path relative to
    the working directory; ``python -m pkg.train`` the module's name; neither is absolute, and
    each builds the model again with --model/--trust-code semantics (models.load_factory)."""
    from ckpt_analyzer.models import file_arch, load_factory

    pkg = tmp_path / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(
        "import sys\nfrom ckpt_analyzer import RunWriter\nfrom ckpt_analyzer.models import build_model\n\n"
        "def make(width, num_classes, in_channels):\n"
        "    return build_model('mlp', width, num_classes, in_channels)\n\n"
        "if __name__ == '__main__':\n"
        "    RunWriter(sys.argv[1], model=make, evaluate=False).close()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    archs = {}
    for how, cmd in (("script", ["pkg/train.py"]), ("module", ["-m", "pkg.train"])):
        out = tmp_path / how
        r = subprocess.run([sys.executable, *cmd, str(out)], capture_output=True, text=True,
                           cwd=tmp_path / "proj", env=env)
        assert r.returncode == 0, r.stderr
        assert "--trust-code" in r.stderr  # the warning names the command line
        run = read_run_json(out)
        assert run is not None
        archs[how] = run["arch"]
        meta_arch = run["arch"]
        with pytest.raises(UsageError, match="is code named by the file"):  # issue 20's rule
            file_arch(meta_arch, out / "run.json")
    assert archs == {"script": "pkg/train.py:make", "module": "pkg.train:make"}
    assert "from this directory" in subprocess.run(
        [sys.executable, "pkg/train.py", str(tmp_path / "again")], capture_output=True,
        text=True, cwd=tmp_path / "proj", env=env).stderr
    cwd = os.getcwd()
    try:  # from where the writer ran, the recorded name builds the same factory
        os.chdir(tmp_path / "proj")
        net = load_factory(archs["script"])(3, 10, 1)
    finally:
        os.chdir(cwd)
    assert [tuple(p.shape) for p in net.parameters()] == \
        [tuple(p.shape) for p in build_model("mlp", 3, 10, 1).parameters()]


# ---------------------------------------------------------------- other trainers' files
@pytest.fixture(scope="module")
def hf_folder(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face Trainer-style folder: checkpoint-<step>/model.safetensors (keys under a
    'backbone.' module, metadata {'format': 'pt'}) beside optimizer and trainer state files."""
    out = tmp_path_factory.mktemp("hf") / "out"
    for e, step in ((0, 0), (2, 22), (4, 44)):
        d = out / f"checkpoint-{step}"
        d.mkdir(parents=True)
        state = read_state_dict(digits_run / "w4" / f"e{e:05d}.safetensors")
        save_file({f"backbone.{k}": v for k, v in state.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
        torch.save({"state": {}}, d / "optimizer.pt")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return out


def test_hugging_face_folder_with_steps(hf_folder: Path, digits_run: Path) -> None:
    cube = hf_folder / "analysis.h5"
    analyze("run", str(hf_folder), "--probe", "metrics", "--model", "mcnn", "--width", "4",
            "--dataset", "digits", "--pattern", "checkpoint-{step}/model.safetensors", "--quiet")
    attrs, steps, widths, err = cube_metrics(cube)
    assert attrs["time_unit"] == "step" and list(steps) == [0, 22, 44] and list(widths) == [4]
    with h5py.File(cube, "r") as f:
        subsets = [s.decode() if isinstance(s, bytes) else s for s in f["metrics/subset"][()]]
    assert np.isfinite(err[..., [subsets.index("train"), subsets.index("test")]]).all()
    # the same weights as the contract run: the same test error as its metadata
    meta = read_header(digits_run / "w4" / "e00004.safetensors")[1]
    assert err[-1, 0, subsets.index("test")] == pytest.approx(float(meta["test_error"]), abs=1e-6)
    text = analyze("report", str(cube), "--no-store").stdout
    assert "steps 0..44" in text and "events in steps" in text and "last step" in text
    rep = json.loads(analyze("report", str(cube), "--no-store", "--json").stdout)
    assert rep["parameters"]["time_unit"] == "step" and rep["parameters"]["unit"] == "steps"

    from ckpt_analyzer.plot import make_figure

    fig = make_figure(cube, "double-descent")
    assert any(ax.get_xlabel().startswith("step") for ax in fig.axes)


def test_prefix_errors(hf_folder: Path) -> None:
    r = analyze("run", str(hf_folder), "--probe", "metrics", "--model", "mcnn", "--width", "4",
                "--pattern", "checkpoint-{step}/model.safetensors", "--prefix", "encoder",
                "-o", str(hf_folder / "p.h5"), "--quiet", check=False)
    assert r.returncode == 1
    assert "prefix 'encoder.' matches no key: the model expects '0.weight'" in r.stdout
    assert "the file has 'backbone." in r.stdout
    state = {"a.w": torch.ones(1), "b.w": torch.ones(1)}
    with pytest.raises(CheckpointError, match="several module prefixes fit"):
        strip_prefix(state, ["w"], None, "x")
    assert strip_prefix({"module.w": 1, "x": 2}, ["w"]) == {"w": 1}


def test_plain_torch_save_single_model(digits_run: Path, tmp_path: Path) -> None:
    """torch.save(model.state_dict()) files, no width in the pattern: --width, --allow-pt."""
    for e in (0, 4):
        torch.save(read_state_dict(digits_run / "w1" / f"e{e:05d}.safetensors"),
                   tmp_path / f"ckpt_{e}.pt")
    args = ["run", str(tmp_path), "--probe", "metrics", "--model", "mcnn", "--quiet",
            "--pattern", "ckpt_{epoch}.pt"]
    r = analyze(*args, check=False)
    assert r.returncode == 2 and "pass --allow-pt" in r.stderr
    analyze(*args, "--allow-pt")
    attrs, epochs, widths, _ = cube_metrics(tmp_path / "analysis.h5")
    assert attrs["time_unit"] == "epoch" and list(epochs) == [0, 4] and list(widths) == [1]


@pytest.mark.parametrize("pattern", ["w{width}/ckpt.safetensors", "e{epoch}_s{step}.safetensors"])
def test_pattern_needs_one_time_field(hf_folder: Path, pattern: str) -> None:
    r = analyze("run", str(hf_folder), "--probe", "metrics", "--model", "mcnn",
                "--pattern", pattern, "--quiet", check=False)
    assert r.returncode == 2 and "{epoch} and {step}" in r.stderr


def test_lightning_ckpt_without_state_dict(tmp_path: Path) -> None:
    p = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 30}, p)
    with pytest.raises(CheckpointError, match=r"without 'state_dict' \(found: epoch, global_step\)"):
        read_state_dict(p, allow_pt=True)
    with pytest.raises(CheckpointError, match="--allow-pt"):
        read_state_dict(p)


# ---------------------------------------------------------------- architectures by name
def test_torchvision_and_timm_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    net = build_model("torchvision:resnet18", 1, 10, 1)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10
    assert net.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UsageError, match="closest: resnet18"):
        build_model("torchvision:resnet19", 1, 10, 1)

    class FakeTimm:  # timm's create_model interface, without installing timm
        @staticmethod
        def is_model(name: str) -> bool:
            return name == "tiny"

        @staticmethod
        def list_models() -> list[str]:
            return ["tiny"]

        @staticmethod
        def create_model(name: str, pretrained: bool, num_classes: int, in_chans: int) -> torch.nn.Module:
            assert not pretrained
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    monkeypatch.setitem(sys.modules, "timm", FakeTimm)
    assert build_model("timm:tiny", 1, 7, 3)(torch.randn(2, 3, 4, 4)).shape == (2, 7)
    with pytest.raises(UsageError, match="timm has no such model"):
        build_model("timm:huge", 1, 7, 3)


def test_real_timm_model_end_to_end(tmp_path: Path) -> None:
    """timm's own test_resnet (the `dev` extra installs timm): foreign checkpoints analyzed with
    --model timm:test_resnet give the test error of the same weights evaluated directly."""
    timm = pytest.importorskip("timm", reason="timm is not installed (the 'dev' extra)")
    from ckpt_analyzer.checkpoints.run_data import load_run_data

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    states = {}
    for e in (0, 3):
        if e:
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        states[e] = {k: v.clone() for k, v in net.state_dict().items()}
        save_file(states[e], str(tmp_path / f"ckpt_{e}.safetensors"))
    analyze("run", str(tmp_path), "--probe", "metrics", "--model", "timm:test_resnet",
            "--dataset", "digits", "--pattern", "ckpt_{epoch}.safetensors", "--quiet")
    attrs, epochs, widths, err = cube_metrics(tmp_path / "analysis.h5")
    assert list(epochs) == [0, 3] and list(widths) == [1]
    with h5py.File(tmp_path / "analysis.h5", "r") as f:
        subsets = [x.decode() if isinstance(x, bytes) else x for x in f["metrics/subset"][()]]
    data = load_run_data(tmp_path, dataset="digits")
    for i, e in enumerate((0, 3)):
        net.load_state_dict(states[e])
        with torch.no_grad():
            want = (net(data.x_test).argmax(1) != data.y_test).double().mean().item()
        assert err[i, 0, subsets.index("test")] == pytest.approx(want, abs=1e-12)
    assert err[0, 0, subsets.index("test")] != err[1, 0, subsets.index("test")]


# ---------------------------------------------------------------- Lightning
def test_lightning_callback_and_ckpt_reader(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning.pytorch", reason="lightning is not installed (the "
                            "'lightning' extra)")
    from ckpt_analyzer.integrations.lightning import ContractCheckpoint

    writer = RunWriter(tmp_path / "run", model="mcnn", dataset="digits", widths=[2], epochs=3,
                       optimizer={"name": "adam", "lr": 1e-2})

    class Lit(L.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model("mcnn", 2, writer.num_classes, writer.in_channels)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(writer.x_train, writer.y_train), batch_size=256, shuffle=True)
    lit_dir = tmp_path / "lightning"
    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path),
                        callbacks=[ContractCheckpoint(writer, width=2),
                                   L.callbacks.ModelCheckpoint(dirpath=lit_dir, save_top_k=-1,
                                                               every_n_epochs=1)])
    trainer.fit(Lit(), loader)

    refs = discover(tmp_path / "run")
    assert [(r.width, r.epoch) for r in refs] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert [r.metadata["step"] for r in refs] == [0, 6, 12, 18]
    assert "logged.train_loss" in refs[-1].metadata
    assert is_done(tmp_path / "run", 2)
    analyze("run", str(tmp_path / "run"), "--probe", "metrics", "--quiet")

    # Lightning's own .ckpt files: weights under state_dict, keys under 'net.'
    ckpts = sorted(lit_dir.glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt",
                                       "epoch=2-step=18.ckpt"]
    last = strip_prefix(read_state_dict(ckpts[-1], allow_pt=True),
                        read_state_dict(refs[-1].path), None, ckpts[-1])
    contract = read_state_dict(refs[-1].path)
    assert all(torch.equal(last[k], contract[k]) for k in contract)  # the same weights
    analyze("run", str(lit_dir), "--probe", "metrics", "--model", "mcnn", "--width", "2",
            "--dataset", "digits", "--pattern", "epoch=*-step={step}.ckpt", "--allow-pt", "--quiet")
    attrs, steps, widths, err = cube_metrics(lit_dir / "analysis.h5")
    assert attrs["time_unit"] == "step" and list(steps) == [6, 12, 18] and list(widths) == [2]
    _, _, _, err_contract = cube_metrics(tmp_path / "run" / "analysis.h5")
    np.testing.assert_allclose(err[-1], err_contract[-1], atol=1e-6)


def test_run_writer_and_ckpt_train_write_the_same_checkpoint(digits_run: Path, tmp_path: Path) -> None:
    """One write_checkpoint and one metadata evaluation: a RunWriter with ckpt-train's data and
    labels, saving ckpt-train's state, writes the same metadata (every number to the bit) and
    the same tensors."""
    run = read_run_json(digits_run)
    assert run is not None
    noise = run["label_noise"]
    writer = RunWriter(tmp_path / "w", model=run["arch"], dataset=run["dataset"]["name"],
                       split_seed=run["dataset"]["split_seed"], label_noise=noise["fraction"],
                       noise_kind=noise["kind"], seed=noise["seed"])
    src = digits_run / "w4" / "e00003.safetensors"
    want = read_header(src)[1]
    path = writer.save(read_state_dict(src), width=4, epoch=3, step=int(want["step"]))
    writer.close()
    got = read_header(path)[1]
    assert got == want
    state, copy = read_state_dict(src), read_state_dict(path)
    assert state.keys() == copy.keys() and all(torch.equal(state[k], copy[k]) for k in state)
