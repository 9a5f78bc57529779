"""Every registered probe (built-in and plugin) meets the contract of docs/probes.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
