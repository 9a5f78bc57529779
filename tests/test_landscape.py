"""Loss landscape: filter normalization, slices of a quadratic known in closed form, the
probe's per-width directions, barrier to the last checkpoint and an untouched model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import on_device, tolerance
from test_hessian import digits_ctx, snapshot
from torch import nn

from ckpt_analyzer.checkpoints import discover, load_state_into, read_state_dict
from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.errors import CkptError
from ckpt_analyzer.functional.landscape import (
    barrier_height,
    filter_normalize,
    grid_losses,
    interpolate_states,
    slice_grid,
)
from ckpt_analyzer.probes.landscape import LandscapeProbe

torch.set_num_threads(1)


def test_filter_normalization_matches_each_filters_norm(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"conv.weight": torch.randn(5, 3, 3, 3, generator=g) * torch.arange(1, 6).view(5, 1, 1, 1),
               "conv.bias": torch.randn(5, generator=g),
               "bn.weight": torch.rand(5, generator=g),
               "fc.weight": torch.randn(4, 7, generator=g)}
    direction = {k: torch.randn(v.shape, generator=g) * 10 for k, v in weights.items()}
    dev = torch.device(device)
    d = {k: v.cpu() for k, v in filter_normalize({k: v.to(dev) for k, v in direction.items()},
                                                  {k: v.to(dev) for k, v in weights.items()}).items()}
    tol = tolerance(device, 1e-5)
    for name in ("conv.weight", "fc.weight"):
        for j in range(weights[name].shape[0]):
            assert float(d[name][j].norm()) == pytest.approx(float(weights[name][j].norm()), rel=tol)
            cos = F.cosine_similarity(d[name][j].flatten(), direction[name][j].flatten(), dim=0)
            assert float(cos) == pytest.approx(1.0, abs=tol)  # only rescaled
    assert not d["conv.bias"].any() and not d["bn.weight"].any()
    kept = filter_normalize(direction, weights, ignore_bn_bias=False)
    assert torch.equal(kept["bn.weight"], weights["bn.weight"])


def test_slices_of_a_quadratic_are_known_in_closed_form(device: str) -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, b = m @ m.T, torch.randn(6, generator=g, dtype=torch.float64)
    dev = torch.device(device)
    ad, bd = a.to(dev), b.to(dev)

    def evaluate(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        th = torch.cat([state["w"].flatten(), state["v"]])  # on the device
        val = 0.5 * th @ ad @ th + bd @ th
        return val.view(1).cpu(), -val.view(1).cpu()

    def on(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dev) for k, v in state.items()}

    base = {"w": torch.randn(2, 2, generator=g, dtype=torch.float64),
            "v": torch.randn(2, generator=g, dtype=torch.float64)}
    d1 = {"w": torch.randn(2, 2, generator=g, dtype=torch.float64),
          "v": torch.randn(2, generator=g, dtype=torch.float64)}
    d2 = {"w": torch.randn(2, 2, generator=g, dtype=torch.float64)}  # v not moved
    th0 = torch.cat([base["w"].flatten(), base["v"]])
    u1 = torch.cat([d1["w"].flatten(), d1["v"]])
    u2 = torch.cat([d2["w"].flatten(), torch.zeros(2, dtype=torch.float64)])
    alphas = torch.linspace(-2, 2, 9, dtype=torch.float64)
    f0, grad = 0.5 * th0 @ a @ th0 + b @ th0, a @ th0 + b
    loss, err = grid_losses(evaluate, on(base), [on(d1)], slice_grid(alphas, 1))
    closed = f0 + alphas * (grad @ u1) + 0.5 * alphas**2 * (u1 @ a @ u1)
    assert torch.allclose(loss[:, 0], closed, rtol=1e-12) and torch.equal(err, -loss)
    loss2, _ = grid_losses(evaluate, on(base), [on(d1), on(d2)], slice_grid(alphas, 2))
    al, be = torch.meshgrid(alphas, alphas, indexing="ij")
    closed2 = (f0 + al * (grad @ u1) + be * (grad @ u2) + 0.5 * al**2 * (u1 @ a @ u1)
               + al * be * (u1 @ a @ u2) + 0.5 * be**2 * (u2 @ a @ u2))
    assert torch.allclose(loss2[:, 0].view(9, 9), closed2, rtol=1e-12)


def test_interpolation_and_barrier_height(device: str) -> None:
    dev = torch.device(device)
    a = {"w": torch.zeros(3, device=dev), "n": torch.tensor(5, device=dev)}
    b = {"w": torch.ones(3, device=dev), "n": torch.tensor(9, device=dev)}
    mid = {k: v.cpu() for k, v in interpolate_states(a, b, 0.25).items()}
    assert torch.allclose(mid["w"], torch.full((3,), 0.25)) and int(mid["n"]) == 5
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    loss = torch.stack([1 + t + torch.sin(np.pi * t), 2 - t, torch.full_like(t, float("nan"))])
    h = barrier_height(t.to(dev), loss.to(dev)).cpu()
    assert float(h[0]) == pytest.approx(1.0) and float(h[1]) == pytest.approx(0.0, abs=1e-12)
    assert torch.isnan(h[2])


def small(**kw: object) -> LandscapeProbe.Config:
    base = {"steps": 5, "points": 20, "barrier_steps": 3}
    base.update(kw)
    return LandscapeProbe.Config(**base)  # type: ignore[arg-type]


def test_directions_per_width_are_stored_and_order_independent() -> None:
    ctx = digits_ctx()
    probe = LandscapeProbe(small(directions=2))
    inputs = probe.prepare(ctx)
    m1, m2 = ctx.build_model(1), ctx.build_model(2)
    for w, m in ((1, m1), (2, m2)):
        n = sum(p.numel() for p in m.parameters())
        assert inputs[f"w{w}/direction"].shape == (2, n)
        assert list(inputs[f"w{w}/names"]) == [k for k, _ in m.named_parameters()]
    # a width first met lazily (not prepared) draws exactly what prepare would have stored
    lazy = LandscapeProbe(small(directions=2))
    lazy.prepare(dataclasses.replace(ctx, widths=(2,)))
    assert np.array_equal(lazy._draw(1, m1)[1], inputs["w1/direction"])
    slim = LandscapeProbe(small(store_directions=False))
    assert "w1/direction" not in slim.prepare(ctx) and "w1/names" in slim.prepare(ctx)


def test_probe_slices_without_touching_the_model_and_nan_barrier_outside_a_run(device: str) -> None:
    ctx = on_device(digits_ctx(), device)
    probe = LandscapeProbe(small(directions=2))
    probe.prepare(ctx)
    outs = probe.outputs()
    model = ctx.build_model(2)  # on the device
    before = snapshot(model)
    with pytest.warns(UserWarning, match="barrier"):
        res = outs.check(probe(model, dataclasses.replace(ctx, checkpoint=None)), "landscape")
        probe._target = None
        from ckpt_analyzer.checkpoints import CheckpointRef

        ref = CheckpointRef(width=2, epoch=0, path="/nonexistent/w2/e00000.safetensors")
        res = outs.check(probe(model, ctx.with_checkpoint(ref)), "landscape")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert res["loss"].shape == (4, 5, 5)
    # the centre of the grid is the model itself (the reference: the same model on the CPU)
    cpu = digits_ctx()
    x, y = cpu.data.x_test, cpu.data.y_test
    idx = torch.as_tensor(probe.inputs["test/index"])
    direct = F.cross_entropy(cpu.build_model(2)(x[idx]).double(), y[idx]).item()
    assert res["loss"][3, 2, 2] == pytest.approx(direct, rel=tolerance(device, 1e-6))
    assert np.isnan(res["barrier_loss"]).all() and np.isnan(res["barrier_epoch"])


def test_checkpoint_not_matching_its_widths_directions_is_an_error() -> None:
    ctx = digits_ctx()
    probe = LandscapeProbe(small(barrier=False))
    probe.prepare(ctx)
    from ckpt_analyzer.checkpoints import CheckpointRef

    ref = CheckpointRef(width=1, epoch=0, path="x")
    with pytest.raises(CkptError, match="differ from the directions drawn for width 1"):
        probe(ctx.build_model(2), ctx.with_checkpoint(ref))


def test_barrier_runs_to_the_widths_last_checkpoint(digits_run: Path, device: str) -> None:
    from ckpt_analyzer.data.run import load_run_data
    from ckpt_analyzer.models import build_model

    dev = torch.device(device)
    refs = {(r.width, r.epoch): r for r in discover(digits_run)}
    data = load_run_data(digits_run, dev)
    ctx = dataclasses.replace(on_device(digits_ctx(), device), data=data, widths=(4,))
    probe = LandscapeProbe(small(subsets=("train", "test")))
    probe.prepare(dataclasses.replace(ctx, build_model=lambda w: build_model("mcnn", w, 10, 1).to(dev)))
    models = {}
    for e in (0, 4):
        m = build_model("mcnn", 4, 10, 1).eval()
        load_state_into(m, read_state_dict(refs[(4, e)].path), refs[(4, e)].path)
        models[e] = m.to(dev)
    res0 = probe(models[0], ctx.with_checkpoint(refs[(4, 0)]))  # reads the last one onto dev
    res4 = probe(models[4], ctx.with_checkpoint(refs[(4, 4)]))
    assert float(res0["barrier_epoch"]) == 4.0
    # t = 0 is the checkpoint itself (grid centre), t = 1 the last checkpoint
    assert np.allclose(res0["barrier_loss"][:, 0], res0["loss"][:, 2], rtol=tolerance(device, 1e-6))
    assert np.allclose(res0["barrier_loss"][:, -1], res4["loss"][:, 2], rtol=tolerance(device, 1e-5))
    # from the last checkpoint to itself the path is flat: barrier 0
    assert np.allclose(res4["barrier_loss"], res4["loss"][:, 2:3], rtol=tolerance(device, 1e-6))
    assert np.allclose(res4["barrier"], 0.0, atol=tolerance(device, 1e-9, 1e-6))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="directions"):
        build_config(LandscapeProbe.Config, {"directions": "3"}, "landscape")
    with pytest.raises(ConfigError, match="r must be"):
        build_config(LandscapeProbe.Config, {"r": "0"}, "landscape")
    assert build_config(LandscapeProbe.Config, {"steps": "7"}, "landscape").steps == 7


def test_model_is_restored_exactly_with_a_plain_module(device: str) -> None:
    """No weights are ever written: the same tensors, bit for bit, with BN-free nets too."""
    ctx = on_device(digits_ctx(), device)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval().to(torch.device(device))
    probe = LandscapeProbe(small(barrier=False))
    probe.prepare(dataclasses.replace(ctx, widths=()))
    ptrs = [p.data_ptr() for p in net.parameters()]
    before = snapshot(net)
    probe(net, ctx)
    assert [p.data_ptr() for p in net.parameters()] == ptrs
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
