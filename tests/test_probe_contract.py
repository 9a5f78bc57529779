"""Every registered probe (built-in and plugin) meets the contract of docs/probes.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ckpt_analyzer.probes import PROBES
from ckpt_analyzer.probes.base import Probe
from ckpt_analyzer.testing import check_probe

# small settings so the whole registry runs in seconds; every other parameter keeps its default
SMALL = {
    "spectrum": {"points": 24, "n": 16, "subsets": ("train", "noisy", "test")},
    "interpolation": {"pairs": 3},
    "sharpness": {"samples": 24, "paths": 2},
    "normalization": {"samples": 64},
    "hessian": {"points": 24, "iterations": 6, "trace_samples": 3, "subsets": ("train", "noisy")},
    "landscape": {"points": 24, "steps": 5, "barrier_steps": 3},
    "weights_spectrum": {"min_evals": 8},
}


def small_config(cls: type[Probe]) -> object:
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return cls.Config(**{k: v for k, v in SMALL.get(cls.name, {}).items() if k in fields})


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_contract(name: str, digits_run: Path, device: str) -> None:
    """The published checker (ckpt_analyzer.testing.check_probe), on the trained test run."""
    cls = PROBES.get(name)
    check_probe(cls, small_config(cls), run_dir=digits_run, device=device)


def test_check_probe_catches_a_broken_probe() -> None:
    from dataclasses import dataclass, field

    from ckpt_analyzer.probes.base import Metric, Outputs, Probe

    @dataclass(frozen=True)
    class Cfg:
        scale: float = field(default=1.0, metadata={"help": "how much to nudge"})

    class Nudges(Probe[Cfg]):
        name = "nudges"
        description = "modifies the model it measures"
        Config = Cfg

        def outputs(self) -> Outputs:
            return Outputs(metrics={"x": Metric(())})

        def __call__(self, model, ctx):  # type: ignore[no-untyped-def]
            import torch

            with torch.no_grad():
                next(model.parameters()).add_(self.config.scale)
            return {"x": 1.0}

    with pytest.raises(AssertionError, match="probe 'nudges': changed the model's"):
        check_probe(Nudges)


# -- one declaration of outputs (ckpt_analyzer.schema): the probe base and the journal share
#    Decl.check, and the journal stores Decl's JSON unchanged

def _declared() -> object:
    from ckpt_analyzer.schema import Metric, Outputs

    return Outputs(coords={"subset": ("train", "test"), "k": np.arange(3)},
                   metrics={"A": Metric(("subset", "k"), description="mean |F_k|"),
                            "n": Metric((), dtype="float32")})


def test_the_declaration_has_one_canonical_json_form() -> None:
    """The journal's ``probe.outputs`` text (format ckpt-analyzer.journal/1), pinned."""
    from ckpt_analyzer.schema import Decl

    decl = _declared().declare("p")  # type: ignore[attr-defined]
    text = ('{"coords": [["subset", "str", ["train", "test"]], ["k", "int", [0, 1, 2]]], '
            '"metrics": [["A", ["subset", "k"], "float64", "mean |F_k|"], ["n", [], "float32", ""]]}')
    assert decl.to_json() == text
    assert Decl.from_json(text) == decl
    assert decl.shape(("subset", "k")) == (2, 3)


BAD_RESULTS = [
    ({"A": np.zeros((2, 3))}, "probe 'p' returned the wrong metrics (missing n; declared A, n)"),
    ({"A": np.zeros((2, 3)), "n": 1.0, "x": 2.0},
     "probe 'p' returned the wrong metrics (undeclared x; declared A, n)"),
    ({"A": np.zeros((3, 2)), "n": 1.0},
     "probe 'p' metric 'A' has shape (3, 2), declared (2, 3) for dims ('subset', 'k')"),
    ({"A": np.zeros((2, 3)), "n": "many"}, "probe 'p' metric 'n' is not a float32 array"),
]


@pytest.mark.parametrize(("results", "message"), BAD_RESULTS)
def test_the_probe_base_and_the_journal_run_one_check(results: dict[str, object], message: str,
                                                       tmp_path: Path) -> None:
    from ckpt_analyzer.cube import Cube
    from ckpt_analyzer.errors import ProbeError
    from ckpt_analyzer.probes.base import Outputs, Probe
    from ckpt_analyzer.testing import contract_context

    class P(Probe):  # type: ignore[type-arg]
        name = "p"
        description = "returns what the test gives it"

        def outputs(self) -> Outputs:
            return _declared()  # type: ignore[return-value]

        def __call__(self, model, ctx):  # type: ignore[no-untyped-def]
            return results

    ctx, models = contract_context()
    model, ref = models[1]
    with pytest.raises(ProbeError) as by_probe:
        P().measure(model, ctx.with_checkpoint(ref))
    with Cube(tmp_path / "c.h5") as cube:
        cube.begin_probe("p", "1", {}, 0, _declared(), {})  # type: ignore[arg-type]
        with pytest.raises(ProbeError) as by_journal:
            cube.record("p", 0, 1, results)  # type: ignore[arg-type]
        good = {"A": np.arange(6.0).reshape(2, 3), "n": np.float64(1 / 3)}
        checked = P().declaration().check(good, "p")
        assert checked["n"].dtype == np.float32 and checked["n"] == np.float32(1 / 3)
        cube.record("p", 0, 1, good)
        assert cube.done("p") == {(0, 1)}
    assert str(by_probe.value).startswith(message)
    assert str(by_journal.value) == str(by_probe.value)


def test_check_probe_refuses_a_declaration_the_cube_would_refuse() -> None:
    from ckpt_analyzer.probes.base import Metric, Outputs, Probe

    class Counts(Probe):  # type: ignore[type-arg]
        name = "counts"
        description = "declares an integer metric"

        def outputs(self) -> Outputs:
            return Outputs(metrics={"n": Metric((), dtype="int64")})

        def __call__(self, model, ctx):  # type: ignore[no-untyped-def]
            return {"n": 1}

    with pytest.raises(AssertionError, match="probe 'counts' metric 'n' must have a float dtype"):
        check_probe(Counts)
