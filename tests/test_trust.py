"""No code from a file (issue 20, part 1): an ``arch`` that checkpoint metadata or run.json names
as code (``file.py:f``, ``../x.py:f``, ``module:factory``) is never imported unless the person asks
(``--model SPEC``, ``--trust-code``, ``trust_code=True``). Every case uses a factory that writes a
marker file when imported: the marker must not appear."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt_analyzer.models as models_mod
from ckpt_analyzer import load_model
from ckpt_analyzer.checkpoints import read_header, read_state_dict, save_tensors
from ckpt_analyzer.cli import main
from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.models import file_arch, is_registered
from ckpt_analyzer.runner import Runner

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def f(width, num_classes, in_channels):
    from ckpt_analyzer.models import build_model
    return build_model("mcnn", width, num_classes, in_channels)
"""


def evil_file(folder: Path) -> tuple[Path, Path]:
    """A factory file that writes ``marker`` when imported; (file, marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"marker-{uuid.uuid4().hex[:8]}"
    path = folder / f"evil_{uuid.uuid4().hex[:8]}.py"  # a fresh module: never cached
    path.write_text(EVIL.format(marker=str(marker)))
    return path, marker


def evil_module(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module (on a tmp sys.path entry) that writes a marker when imported."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"evilmod_{uuid.uuid4().hex[:8]}"
    marker = folder / f"marker-{name}"
    (folder / f"{name}.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:f", marker


def set_arch(run: Path, spec: str, run_json: bool = True) -> None:
    """Rewrite every checkpoint's metadata ``arch`` (and run.json's) to ``spec``."""
    for ckpt in sorted(run.glob("w*/e*.safetensors")):
        meta = dict(read_header(ckpt)[1], arch=spec)
        save_tensors(ckpt, read_state_dict(ckpt), meta)
    if run_json:
        manifest = json.loads((run / "run.json").read_text())
        manifest["arch"] = spec
        (run / "run.json").write_text(json.dumps(manifest))


@pytest.fixture
def run_copy(digits_run: Path, tmp_path: Path) -> Path:
    """Width 1 of the session's digits run (epochs 0 and 4), to rewrite."""
    dst = tmp_path / "run"
    dst.mkdir()
    for name in ("run.json", "labels.safetensors"):
        shutil.copy(digits_run / name, dst / name)
    (dst / "w1").mkdir()
    for e in (0, 4):
        shutil.copy(digits_run / "w1" / f"e{e:05d}.safetensors", dst / "w1")
    return dst


FAST = ["--probe", "metrics", "--quiet", "--device", "cpu"]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------- ckpt-analyze run
@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_run_refuses_a_file_named_by_the_checkpoints(run_copy: Path, tmp_path: Path,
                                                     kind: str, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    evil, marker = evil_file(tmp_path / "elsewhere")
    spec = f"{evil}:f"
    if kind == "relative":  # ../../evil.py:f, relative to where the reader runs
        monkeypatch.chdir(run_copy / "w1")
        spec = f"{os.path.relpath(evil)}:f"
    set_arch(run_copy, spec)
    r = CliRunner().invoke(main, ["run", str(run_copy), *FAST])
    assert r.exit_code == 2, r.output
    line = one_line(r.stderr)
    assert line == (f"error: {run_copy}/w1/e00000.safetensors: arch '{spec}' is code named by "
                    f"the file, not a registered architecture; pass --model '{spec}' to run it, "
                    "or --trust-code")
    assert not marker.exists()
    assert not (run_copy / "analysis.h5").exists()


@pytest.mark.parametrize("how", ["--model", "--trust-code"])
def test_run_builds_it_when_the_person_says_so(run_copy: Path, tmp_path: Path, how: str) -> None:
    evil, marker = evil_file(tmp_path / "elsewhere")
    spec = f"{evil}:f"
    set_arch(run_copy, spec)
    flag = ["--model", spec] if how == "--model" else ["--trust-code"]
    r = CliRunner().invoke(main, ["run", str(run_copy), *FAST, *flag])
    assert r.exit_code == 0, r.output
    assert marker.exists()  # it ran: the person asked for it
    assert (run_copy / "analysis.h5").is_file()


def test_runner_refuses_a_module_factory_and_trust_code_runs_it(
        run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, marker = evil_module(tmp_path / "mods", monkeypatch)
    set_arch(run_copy, spec)
    with pytest.raises(UsageError, match=rf"e00000.safetensors: arch '{spec}' is code named by "
                       "the file"):
        Runner(str(run_copy), ["metrics"], device="cpu").run()
    assert not marker.exists()
    summary = Runner(str(run_copy), ["metrics"], device="cpu", trust_code=True,
                     output=str(tmp_path / "t.h5")).run()
    assert summary.computed == 2 and marker.exists()


def test_pool_executor_refuses_in_the_parent(run_copy: Path, tmp_path: Path) -> None:
    evil, marker = evil_file(tmp_path / "elsewhere")
    set_arch(run_copy, f"{evil}:f")
    with pytest.raises(UsageError, match="is code named by the file"):
        Runner(str(run_copy), ["metrics"], device="cpu", executor="pool", workers=1).run()
    assert not marker.exists()


def test_worker_cannot_build_an_untrusted_plan(run_copy: Path, tmp_path: Path) -> None:
    """A Plan that reaches a worker without the parent's check (or a forged one) still cannot
    build the file's code: the worker checks again."""
    from ckpt_analyzer.executors.work import Plan, Worker

    evil, marker = evil_file(tmp_path / "elsewhere")
    meta = dict(read_header(run_copy / "w1" / "e00000.safetensors")[1], arch=f"{evil}:f",
                width=1, num_classes=10, in_channels=1)
    plan = Plan(run_dir=str(run_copy), probes=pickle.dumps([]), widths=(1,), epochs=(0,),
                width_meta={1: meta})
    worker = Worker(plan)
    with pytest.raises(UsageError, match="is code named by the file"):
        worker.build(1)
    assert not marker.exists()
    trusted = Worker(Plan(**{**plan.__dict__, "trust_code": True}))
    assert trusted.build(1) is not None and marker.exists()


def test_cli_subprocess_refuses_and_names_the_file(run_copy: Path, tmp_path: Path) -> None:
    evil, marker = evil_file(tmp_path / "elsewhere")
    set_arch(run_copy, f"{evil}:f")
    r = subprocess.run([sys.executable, "-m", "ckpt_analyzer.cli", "run", str(run_copy), *FAST],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "is code named by the file" in one_line(r.stderr) and str(evil) in r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- the notebook API, testing.py
def test_load_model_refuses_and_model_or_trust_code_builds(run_copy: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = run_copy / "w1" / "e00004.safetensors"
    for spec, marker in (evil_file(tmp_path / "f"), evil_module(tmp_path / "m", monkeypatch)):
        spec = f"{spec}:f" if isinstance(spec, Path) else spec
        set_arch(run_copy, spec, run_json=False)
        with pytest.raises(UsageError) as err:
            load_model(ckpt)
        assert str(err.value) == (f"{ckpt}: arch '{spec}' is code named by the file, not a "
                                  f"registered architecture; pass --model '{spec}' to run it, "
                                  "or --trust-code")
        assert not marker.exists()
        assert load_model(ckpt, trust_code=True) is not None and marker.exists()
        marker.unlink()
        assert load_model(ckpt, model="mcnn") is not None  # --model: the file's arch is unused
        assert not marker.exists()


def test_contract_context_refuses_a_run_json_factory(run_copy: Path, tmp_path: Path) -> None:
    from ckpt_analyzer.testing import contract_context

    evil, marker = evil_file(tmp_path / "elsewhere")
    set_arch(run_copy, f"{evil}:f")
    with pytest.raises(UsageError, match=r"run.json: arch '.*' is code named by the file"):
        contract_context(run_copy)
    assert not marker.exists()
    _, built = contract_context(run_copy, trust_code=True)
    assert set(built) == {1} and marker.exists()


def test_registered_and_library_names_need_no_flag(run_copy: Path) -> None:
    assert is_registered("mcnn") and is_registered("torchvision:resnet18")
    assert is_registered("timm:anything")  # a library's name: built by the library, no user code
    assert not is_registered("ckpt_analyzer.models.mcnn:mcnn")  # a module spec is code
    assert file_arch("mcnn", "f") == "mcnn"
    with pytest.raises(UsageError, match=r"^f: arch 'mcnx' is not a registered architecture "
                       r"\(did you mean 'mcnn'\?\); pass --model NAME$"):
        file_arch("mcnx", "f")
    with pytest.raises(UsageError, match=r"^f: arch must be an architecture name \(got int"):
        file_arch(3, "f")


# ---------------------------------------------------------------- properties
def _no_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the model builder imports anything named by a spec."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"imported code named by a file: {args!r}")

    class NoImport:
        import_module = staticmethod(boom)

    monkeypatch.setattr(models_mod, "import_user_file", boom)
    monkeypatch.setattr(models_mod, "load_factory", boom)
    monkeypatch.setattr(models_mod, "importlib", NoImport)


ARCHS = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b: f"{a}:{b}", st.text(max_size=30), st.text(max_size=20)),
    st.builds(lambda a, b: f"{a}.py:{b}", st.text(max_size=30), st.text(max_size=20)),
    st.builds(lambda a, b: f"{a}:{b}", st.sampled_from(["torchvision", "timm"]),
              st.text(max_size=20)),
    st.sampled_from(["mcnn", "mlp", "/x/evil.py:f", "../../evil.py:f", "os:system",
                     "builtins:eval", "torchvision:resnet18", "mcnn:mcnn", ":", "a:", ":b", ""]),
)


@settings(max_examples=300, deadline=None)
@given(arch=ARCHS, trust=st.booleans())
def test_file_arch_property(arch: str, trust: bool) -> None:
    """A file's arch is returned only when registered (or trusted); otherwise one UsageError
    line naming the file, whatever the string holds. Nothing is ever imported."""
    mp = pytest.MonkeyPatch()
    _no_imports(mp)
    try:
        try:
            got = file_arch(arch, "RUN/w1/e00000.safetensors", trust)
        except UsageError as exc:
            msg = str(exc)
            assert not trust and not is_registered(arch)
            assert msg.startswith("RUN/w1/e00000.safetensors: arch ") and "\n" not in msg
            assert len(msg) < 700
        else:
            assert got == arch and (trust or is_registered(arch))
    finally:
        mp.undo()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=ARCHS)
def test_load_model_over_metadata_strings(arch: str, digits_run: Path, tmp_path_factory:
                                          pytest.TempPathFactory) -> None:
    """Arbitrary ``arch`` metadata: load_model builds a registered name or raises one clear
    CkptError line; it never imports what the string names."""
    src = digits_run / "w1" / "e00004.safetensors"
    ckpt = tmp_path_factory.mktemp("prop") / "e00004.safetensors"
    save_tensors(ckpt, read_state_dict(src), dict(read_header(src)[1], arch=arch))
    mp = pytest.MonkeyPatch()
    _no_imports(mp)
    try:
        try:
            load_model(ckpt)
        except CkptError as exc:
            assert "\n" not in str(exc)
            if not is_registered(arch):  # refused before anything is built, naming the file
                assert isinstance(exc, UsageError) and str(exc).startswith(f"{ckpt}: arch ")
        else:
            assert is_registered(arch)
    finally:
        mp.undo()
