"""Every registered probe (built-in and plugin) meets the contract of DESIGN §4."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_analyzer.checkpoints import discover, load_state_into, read_state_dict
from ckpt_analyzer.data.run import load_run_data
from ckpt_analyzer.executors.measure import PreparedProbe, measure
from ckpt_analyzer.models import build_model
from ckpt_analyzer.probes import PROBES
from ckpt_analyzer.probes.base import Context, Outputs, Probe

# small settings so the whole registry runs in seconds; every other parameter keeps its default
SMALL = {
    "spectrum": {"points": 24, "n": 16, "subsets": ("train", "noisy", "test")},
    "interpolation": {"pairs": 3},
    "sharpness": {"samples": 24, "paths": 2},
    "normalization": {"samples": 64},
    "hessian": {"points": 24, "iterations": 6, "trace_samples": 3, "subsets": ("train", "noisy")},
    "landscape": {"points": 24, "steps": 5, "barrier_steps": 3},
    "weights_spectrum": {"min_evals": 8, "min_tail": 4},
}


def small_config(cls: type[Probe]) -> object:
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return cls.Config(**{k: v for k, v in SMALL.get(cls.name, {}).items() if k in fields})


@pytest.fixture(scope="module")
def setting(digits_run: Path) -> tuple[Context, dict[int, torch.nn.Module]]:
    data = load_run_data(digits_run)
    refs = {(r.width, r.epoch): r for r in discover(digits_run)}

    def build(width: int) -> torch.nn.Module:
        return build_model("mcnn", width, 10, 1).eval()

    def initial(width: int) -> dict[str, torch.Tensor]:
        return read_state_dict(refs[(width, 0)].path)

    ctx = Context(data=data, device=torch.device("cpu"), batch_size=97, seed=11,
                  widths=(1, 4), epochs=(0, 4), build_model=build, initial_state=initial)
    models = {}
    for w in (1, 4):
        m = build(w)
        load_state_into(m, read_state_dict(refs[(w, 4)].path), refs[(w, 4)].path)
        models[w] = m
    return ctx, models, refs  # type: ignore[return-value]


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_contract(name: str, setting: tuple) -> None:
    ctx, models, refs = setting
    cls = PROBES.get(name)
    assert isinstance(cls.name, str) and cls.name == name
    assert isinstance(cls.version, str) and cls.description
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    cfg = small_config(cls)
    if dataclasses.fields(cfg):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, dataclasses.fields(cfg)[0].name, None)

    def run_once() -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        probe = cls(cfg)
        inputs = {k: np.asarray(v) for k, v in probe.prepare(ctx).items()}
        outs = probe.outputs()
        assert isinstance(outs, Outputs)
        for metric in outs.metrics.values():
            assert set(metric.dims) <= set(outs.coords)
            assert np.dtype(metric.dtype).kind == "f"  # NaN is the cube's fill
        results = {}
        for w, model in models.items():
            res = measure(model, refs[(w, 4)], [PreparedProbe(probe, outs)], ctx)[name]
            for m, arr in res.items():
                assert arr.shape == outs.shape(m)
            results[w] = res
        assert not any(p.grad is not None for m in models.values() for p in m.parameters())
        return inputs, results

    inputs_a, res_a = run_once()
    inputs_b, res_b = run_once()
    assert inputs_a.keys() == inputs_b.keys()
    for k in inputs_a:
        assert np.array_equal(inputs_a[k], inputs_b[k]), k
    for w in res_a:
        for m in res_a[w]:
            assert np.array_equal(res_a[w][m], res_b[w][m], equal_nan=True), (name, w, m)
            assert np.isfinite(res_a[w][m]).any(), (name, w, m)
    # a different seed draws different inputs (for probes that draw any)
    other = dataclasses.replace(ctx, seed=12)
    moved = cls(cfg).prepare(other)
    random_keys = [k for k in inputs_a if inputs_a[k].dtype.kind == "f" or k.endswith("index")]
    if random_keys:
        assert any(not np.array_equal(inputs_a[k], np.asarray(moved[k])) for k in random_keys)
