"""Loss landscape: filter normalization, slices of a quadratic known in closed form, the
probe's per-width directions, barrier to the last checkpoint and an untouched model."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
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
    probe = LandscapeProbe(small(directions=2, bn="interpolate"))  # the checkpoint's BN stats
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
    assert float(res["bn_reset"]) == 0.0


def test_checkpoint_not_matching_its_widths_directions_is_an_error() -> None:
    ctx = digits_ctx()
    probe = LandscapeProbe(small(barrier=False))
    probe.prepare(ctx)
    from ckpt_analyzer.checkpoints import CheckpointRef

    ref = CheckpointRef(width=1, epoch=0, path="x")
    with pytest.raises(CkptError, match="differ from the directions drawn for width 1"):
        probe(ctx.build_model(2), ctx.with_checkpoint(ref))


def final_from(refs: dict[tuple[int, int], object], dev: torch.device) -> object:
    """A ``ctx.final_state`` as the runner builds it: the width's largest epoch in the list."""
    def final(width: int) -> tuple[int, dict[str, torch.Tensor]] | None:
        epochs = [e for w, e in refs if w == width]
        if not epochs:
            return None
        return max(epochs), read_state_dict(refs[(width, max(epochs))].path, dev)  # type: ignore[attr-defined]

    return final


@pytest.mark.parametrize("bn", ["reset", "interpolate"])
def test_barrier_runs_to_the_widths_last_checkpoint(digits_run: Path, device: str, bn: str) -> None:
    from ckpt_analyzer.checkpoints.run_data import load_run_data
    from ckpt_analyzer.models import build_model

    dev = torch.device(device)
    refs = {(r.width, r.epoch): r for r in discover(digits_run)}
    data = load_run_data(digits_run, dev)
    ctx = dataclasses.replace(on_device(digits_ctx(), device), data=data, widths=(4,),
                              final_state=final_from(refs, dev))
    probe = LandscapeProbe(small(subsets=("train", "test"), bn=bn))
    probe.prepare(dataclasses.replace(ctx, build_model=lambda w: build_model("mcnn", w, 10, 1).to(dev)))
    models = {}
    for e in (0, 4):
        m = build_model("mcnn", 4, 10, 1).eval()
        load_state_into(m, read_state_dict(refs[(4, e)].path), refs[(4, e)].path)
        models[e] = m.to(dev)
    res0 = probe(models[0], ctx.with_checkpoint(refs[(4, 0)]))  # reads the last one onto dev
    res4 = probe(models[4], ctx.with_checkpoint(refs[(4, 4)]))
    assert float(res0["barrier_epoch"]) == 4.0 and float(res0["bn_reset"]) == (bn == "reset")
    # t = 0 is the checkpoint itself (grid centre), t = 1 the last checkpoint; with bn=reset both
    # ends carry re-estimated statistics, as the centre of the slices does
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


# ---------------------------------------------------------------- batch-norm statistics
# The slow, obvious reference: a deep copy per point, its statistics re-estimated by plain
# forward passes in train mode with momentum=None (Jordan et al.'s reset_bn_stats), then the
# loss of each subset in one forward pass.

def reset_copy(model: nn.Module, x_bn: torch.Tensor, batch: int) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for part in torch.tensor_split(x_bn, math.ceil(len(x_bn) / batch)):
            m(part)
    return m.eval()


def copy_loss(model: nn.Module, state: dict[str, torch.Tensor], reset: bool, x_bn: torch.Tensor,
              batch: int, points: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    if reset:
        m = reset_copy(m, x_bn, batch)
    with torch.no_grad():
        return [F.cross_entropy(m(x).double(), y).item() for x, y in points]


def lerp(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    return {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in a}


def test_reset_batch_norm_equals_a_deep_copy_in_train_mode() -> None:
    from ckpt_analyzer.functional.landscape import batch_norm_buffers, reset_batch_norm
    from ckpt_analyzer.models import build_model

    torch.manual_seed(0)
    model = build_model("mcnn", 3, 10, 1).eval()
    with torch.no_grad():  # statistics that differ from a fresh reset
        for name, b in model.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 2.0)
    x = torch.randn(70, 1, 8, 8)
    before = snapshot(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    for batch in (70, 32):  # one chunk (the statistics of x), three of 24/23/23
        got = reset_batch_norm(model, params, x, batch)
        want = reset_copy(model, x, batch).state_dict()
        assert sorted(got) == sorted(batch_norm_buffers(model))
        for k, v in got.items():
            assert torch.allclose(v.double(), want[k].double(), rtol=1e-6, atol=1e-7), k
    # one chunk: the mean and unbiased variance of the first layer's pre-activations
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], nn.BatchNorm2d)
    z = model[0](x).detach()
    got = reset_batch_norm(model, params, x, 70)
    assert torch.allclose(got["1.running_mean"], z.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(got["1.running_var"], z.var(dim=(0, 2, 3)), rtol=1e-5)
    assert int(got["1.num_batches_tracked"]) == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training and m.momentum == 0.1 for m in bns)  # restored
    nobn = build_model("mcnn_nobn", 3, 10, 1)
    assert reset_batch_norm(nobn, dict(nobn.named_parameters()), x, 32) == {}
    assert batch_norm_buffers(nobn) == []


@pytest.fixture(scope="module")
def w4(digits_run: Path) -> tuple[object, dict[int, nn.Module], dict[tuple[int, int], object]]:
    from ckpt_analyzer.checkpoints.run_data import load_run_data
    from ckpt_analyzer.models import build_model

    refs = {(r.width, r.epoch): r for r in discover(digits_run)}
    data = load_run_data(digits_run)
    ctx = dataclasses.replace(digits_ctx(batch_size=64), data=data, widths=(4,),
                              build_model=lambda w: build_model("mcnn", w, 10, 1).eval(),
                              final_state=final_from(refs, torch.device("cpu")))
    models = {}
    for e in (0, 2, 4):
        m = build_model("mcnn", 4, 10, 1).eval()
        load_state_into(m, read_state_dict(refs[(4, e)].path), refs[(4, e)].path)
        models[e] = m
    return ctx, models, refs


@pytest.mark.parametrize("bn", ["reset", "interpolate"])
def test_barrier_equals_a_deep_copy_loop(w4: tuple, bn: str) -> None:
    """Every point of the segment and the barrier equal the deep-copy reference to float32
    rounding, and the 1-D slice's end points too (each with its own re-estimated statistics)."""
    ctx, models, refs = w4
    cfg = small(subsets=("train", "test"), bn=bn, bn_samples=150, barrier_steps=5, points=60)
    probe = LandscapeProbe(cfg)
    probe.prepare(ctx)
    res = probe(models[0], ctx.with_checkpoint(refs[(4, 0)]))
    assert float(res["bn_reset"]) == (bn == "reset")
    if bn == "reset":
        idx = torch.as_tensor(probe.inputs["bn/index"])
        assert len(idx) == 150 and len(set(idx.tolist())) == 150
    else:  # nothing drawn
        assert "bn/index" not in probe.inputs
        idx = torch.zeros(0, dtype=torch.long)
    x_bn = ctx.data.x_train[idx]
    points = [(ctx.data.x_train[torch.as_tensor(probe.inputs["train/index"])],
               ctx.data.y_train[torch.as_tensor(probe.inputs["train/index"])]),
              (ctx.data.x_test[torch.as_tensor(probe.inputs["test/index"])],
               ctx.data.y_test[torch.as_tensor(probe.inputs["test/index"])])]
    a, b = models[0].state_dict(), models[4].state_dict()
    ts = np.linspace(0, 1, 5)
    want = np.array([copy_loss(models[0], lerp(a, b, t), bn == "reset", x_bn, ctx.forward_batch,
                               points) for t in ts]).T  # (subset, t)
    np.testing.assert_allclose(res["barrier_loss"], want, rtol=2e-6)
    line = want[:, :1] * (1 - ts) + want[:, -1:] * ts
    np.testing.assert_allclose(res["barrier"], (want - line).max(axis=1), rtol=1e-5, atol=1e-6)
    # the slice's end point alpha = r: theta + r * delta (filter normalized), own statistics
    names, raw = probe._draw(4, models[0])
    params = {n: p.detach() for n, p in models[0].named_parameters()}
    flat = torch.as_tensor(raw[0]).split([p.numel() for p in params.values()])
    d = filter_normalize({n: c.view_as(p) for (n, p), c in zip(params.items(), flat)}, params)
    moved = dict(a)
    moved.update({n: params[n] + cfg.r * d[n] for n in params})
    end = copy_loss(models[0], moved, bn == "reset", x_bn, ctx.forward_batch, points)
    np.testing.assert_allclose(res["loss"][:, -1], end, rtol=2e-6)


def test_reset_is_blind_to_the_scale_of_a_filter_before_batch_norm(w4: tuple) -> None:
    """Known answer: a conv filter (and its bias) scaled by c > 0 before batch norm computes
    the same function once the statistics are re-estimated (up to BN's eps); with the
    checkpoint's statistics it does not."""
    ctx, models, refs = w4
    model = copy.deepcopy(models[2])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[1].weight.mul_(3.0)
        if convs[1].bias is not None:
            convs[1].bias.mul_(3.0)
    out = {}
    for bn in ("reset", "interpolate"):
        for name, m in (("base", models[2]), ("scaled", model)):
            probe = LandscapeProbe(small(subsets=("train",), bn=bn, barrier=False, steps=3))
            probe.prepare(ctx)
            out[bn, name] = probe(m, ctx.with_checkpoint(refs[(4, 2)]))["loss"][0, 1]  # centre
    assert out["reset", "scaled"] == pytest.approx(out["reset", "base"], rel=1e-4)
    assert abs(out["interpolate", "scaled"] - out["interpolate", "base"]) > 1e-2


def test_without_batch_norm_both_modes_agree_exactly() -> None:
    from ckpt_analyzer.models import build_model

    ctx = dataclasses.replace(digits_ctx(), build_model=lambda w: build_model("mcnn_nobn", w, 10, 1).eval())
    torch.manual_seed(3)
    a, b = build_model("mcnn_nobn", 2, 10, 1).eval(), build_model("mcnn_nobn", 2, 10, 1).eval()
    from ckpt_analyzer.checkpoints import CheckpointRef

    ctx = dataclasses.replace(ctx, final_state=lambda w: (7, b.state_dict()))
    ref = CheckpointRef(width=2, epoch=0, path="<a>")
    res = {}
    for bn in ("reset", "interpolate"):
        probe = LandscapeProbe(small(directions=2, bn=bn))
        probe.prepare(ctx)
        res[bn] = probe(a, ctx.with_checkpoint(ref))
    assert float(res["reset"]["bn_reset"]) == 0.0 and float(res["reset"]["barrier_epoch"]) == 7.0
    for k, v in res["reset"].items():
        assert np.array_equal(v, res["interpolate"][k], equal_nan=True), k
    assert np.isfinite(res["reset"]["barrier"]).all()


def test_a_model_to_itself_has_barrier_zero_in_both_modes(w4: tuple) -> None:
    ctx, models, refs = w4
    for bn in ("reset", "interpolate"):
        probe = LandscapeProbe(small(bn=bn, barrier_steps=4))
        probe.prepare(ctx)
        res = probe(models[4], ctx.with_checkpoint(refs[(4, 4)]))
        assert np.allclose(res["barrier"], 0.0, atol=1e-9), bn
        assert np.allclose(res["barrier_loss"], res["barrier_loss"][:, :1], rtol=1e-6), bn


def test_final_state_failures_give_nan_barrier_with_a_warning(w4: tuple) -> None:
    from ckpt_analyzer.errors import CheckpointError

    ctx, models, refs = w4

    def broken(width: int) -> None:
        raise CheckpointError("truncated file", "/x/w4/ckpt_9.safetensors")

    for final, match in ((broken, "cannot read its last checkpoint.*truncated"),
                         (lambda w: None, "no checkpoint in the run's list")):
        probe = LandscapeProbe(small())
        probe.prepare(ctx)
        with pytest.warns(UserWarning, match=match):
            res = probe(models[0], dataclasses.replace(ctx, final_state=final).with_checkpoint(refs[(4, 0)]))
        assert np.isnan(res["barrier"]).all() and np.isnan(res["barrier_epoch"])
        assert np.isfinite(res["loss"]).all()


def test_foreign_folder_gives_a_finite_barrier_in_process_and_in_a_pool(digits_run: Path,
                                                                         tmp_path: Path) -> None:
    """No run.json, --pattern names, ``module.`` keys: the barrier runs to the width's last
    checkpoint of the run's own list; the pool's workers get it too (the same cube)."""
    import time

    import h5py
    from helpers import FOREIGN_PATTERN, foreign_folder

    from ckpt_analyzer.runner.core import Runner

    foreign = foreign_folder(digits_run, tmp_path / "foreign", [(4, 0), (4, 2), (4, 4)],
                             prefix="module.")
    settings = {"landscape": {"points": 16, "steps": 3, "barrier_steps": 3, "bn_samples": 64}}
    cubes = {}
    for name, kw in (("local", {}), ("pool", {"workers": 2, "worker_threads": 1})):
        out = tmp_path / f"{name}.h5"
        t0 = time.perf_counter()
        summary = Runner(run_dir=str(foreign), probes=["landscape"], output=str(out),
                         settings=settings, model="mcnn", dataset="digits",
                         pattern=FOREIGN_PATTERN, batch_size=64,
                         **kw).run()  # type: ignore[arg-type]
        assert not summary.failed and summary.computed == 3, summary.failed
        with h5py.File(out, "r") as f:
            cubes[name] = {k: f[f"landscape/{k}"][()] for k in (
                "barrier", "barrier_loss", "barrier_epoch", "loss", "bn_reset")}
            config = json.loads(f["landscape"].attrs["config"])
            assert config["bn"] == "reset" and config["bn_samples"] == 64
            assert f["landscape/inputs/bn/index"].shape == (64,)
        if name == "pool" and time.perf_counter() - t0 > 60:
            pytest.skip("the pool took over 60 s on this machine (the local cube was checked)")
    local = cubes["local"]
    # subsets train, clean, noisy, test; a foreign folder has no label noise: 'noisy' is empty
    assert np.isfinite(local["barrier"][..., [0, 1, 3]]).all() and (local["barrier_epoch"] == 4).all()
    assert np.isnan(local["barrier"][..., 2]).all()
    assert (local["bn_reset"] == 1).all()
    ok = [0, 1, 3]
    assert np.allclose(local["barrier"][-1][..., ok], 0.0, atol=1e-9)  # epoch 4 is the end itself
    # every segment ends at epoch 4 (the slice centre there, statistics re-estimated alike)
    end = local["loss"][2, 0, ok, 1]
    assert np.allclose(local["barrier_loss"][:, 0, ok, -1], end, rtol=1e-6)
    assert not np.allclose(local["barrier_loss"][0, 0, ok, 0], end, rtol=1e-3)
    for k, v in local.items():
        assert np.array_equal(v, cubes["pool"][k], equal_nan=True), k
