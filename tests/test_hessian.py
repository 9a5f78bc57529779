"""Parameter-space Hessian: HVPs, Lanczos, power iteration and Hutchinson against a dense
Hessian from torch.autograd.functional.hessian; the probe leaves the model untouched."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same, on_device, tolerance
from torch import nn
from torch.func import functional_call

from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.functional.hessian import (
    HessianOperator,
    hutchinson_trace,
    lanczos,
    power_iteration,
)
from ckpt_analyzer.probes.base import Context, RunData
from ckpt_analyzer.probes.hessian import HessianProbe

torch.set_num_threads(1)


def tiny_net() -> nn.Module:
    """A conv + eval-mode BN + linear net with 142 parameters, float64."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 6), nn.Tanh(),
                        nn.Linear(6, 4)).double()
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return net.eval()


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    return tiny_net(), x, y


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The slow, obvious reference: autograd's full Hessian of the loss in the flat params."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])
    buffers = dict(model.named_buffers())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0)


def problem_on(device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:func:`problem`, built on the CPU and moved to ``device``."""
    model, x, y = problem()
    dev = torch.device(device)
    return model.to(dev), x.to(dev), y.to(dev)


@pytest.fixture(scope="module")
def dense() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The problem and its dense Hessian, on the CPU (the slow reference)."""
    model, x, y = problem()
    return model, x, y, dense_hessian(model, x, y)


def test_hvp_is_the_dense_product_summed_over_batches(dense: tuple, device: str) -> None:
    model, x, y, h = dense
    dev = torch.device(device)
    op = HessianOperator(copy.deepcopy(model).to(dev), x.to(dev), y.to(dev), batch_size=7)  # 6 uneven batches
    assert op.dim == h.shape[0] == 142
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # float64 double backward: another device's kernels move the last bits only
    assert torch.allclose(op.matvec(v.to(dev)).cpu(), h @ v, rtol=tolerance(device, 1e-9, 1e-8),
                          atol=tolerance(device, 1e-11, 1e-10))
    assert abs(op.loss() - F.cross_entropy(model(x), y).detach().item()) < tolerance(
        device, 1e-12, 1e-10)


@pytest.mark.parametrize("budget", [None, 0, "one chunk"])
def test_kept_graphs_give_the_same_products_bit_for_bit(budget: object, device: str) -> None:
    # bit for bit on the CPU; on a GPU a backward kernel may add atomically, so within 1e-12
    model, x, y = problem_on(device)
    ref = HessianOperator(model, x, y, batch_size=7, cache_bytes=0)  # rebuilt every product
    first = HessianOperator(model, x, y, batch_size=7)
    _, chunk_bytes = first._gradient(0, 7)
    cache = chunk_bytes if budget == "one chunk" else budget
    op = HessianOperator(model, x, y, batch_size=7, cache_bytes=cache)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64).to(x.device)
        assert_same(device, op.matvec(v), ref.matvec(v), rtol=1e-12, atol=1e-13)
    assert ref._graphs == [] and ref.cached_bytes == 0
    assert len(op._graphs) == {None: 6, 0: 0, "one chunk": 1}[budget]  # type: ignore[index]
    assert op.cached_bytes <= op.cache_bytes
    assert op.cached_bytes == len(op._graphs) * chunk_bytes or budget is None
    op.release()
    assert op._graphs == [] and op.cached_bytes == 0


def test_kept_graphs_follow_values_changed_in_place(device: str) -> None:
    model, x, y = problem_on(device)
    op = HessianOperator(model, x, y, batch_size=16)
    v = torch.ones(op.dim, dtype=torch.float64, device=x.device)
    before = op.matvec(v)
    with torch.no_grad():
        model[0].weight.add_(0.5)  # a parameter
        model[1].running_var.mul_(2.0)  # a buffer
    after = op.matvec(v)
    assert not torch.equal(after, before)
    fresh = HessianOperator(model, x, y, batch_size=16, cache_bytes=0).matvec(v)
    assert_same(device, after, fresh, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        x.mul_(0.5)  # the points
    assert_same(device, op.matvec(v), HessianOperator(model, x, y, 16, cache_bytes=0).matvec(v),
                rtol=1e-12, atol=1e-13)


def test_lanczos_top_eigenvalues_match_dense_eigendecomposition(dense: tuple,
                                                                device: str) -> None:
    model, x, y, h = dense
    dev = torch.device(device)
    op = HessianOperator(copy.deepcopy(model).to(dev), x.to(dev), y.to(dev), batch_size=16)
    ref = torch.linalg.eigvalsh(h).flip(0)[:3]
    vals, res = lanczos(op.matvec, op.dim, k=3, iterations=60,
                        generator=torch.Generator().manual_seed(0), device=dev)
    assert op.calls == 60
    # 1e-4: what 60 Lanczos steps converge to, on any device (float64 products)
    assert torch.allclose(vals, ref, rtol=1e-4, atol=0), (vals, ref)
    assert bool((res < 1e-3 * ref.abs()).all())
    # a full Krylov space is invariant: exact, and it stops early
    hd = h.to(dev)
    full, _ = lanczos(lambda v: hd @ v, op.dim, k=3, iterations=500, device=dev)
    assert torch.allclose(full, ref, rtol=tolerance(device, 1e-9, 1e-8))


def test_operator_on_a_device_takes_host_vectors(dense: tuple, device: str) -> None:
    """Lanczos and Hutchinson keep their vectors on the CPU (their default) while the operator
    runs on the device: products come back on the vector's device."""
    model, x, y, h = dense
    dev = torch.device(device)
    op = HessianOperator(copy.deepcopy(model).to(dev), x.to(dev), y.to(dev), batch_size=16)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hv = op.matvec(v)
    assert hv.device == v.device and hv.dtype == v.dtype
    assert torch.allclose(hv, h @ v, rtol=tolerance(device, 1e-9, 1e-7), atol=1e-11)
    vals, _ = lanczos(op.matvec, op.dim, k=2, iterations=60,
                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vals, torch.linalg.eigvalsh(h).flip(0)[:2], rtol=1e-4)


def test_lanczos_pads_nan_beyond_the_dimension(device: str) -> None:
    dev = torch.device(device)
    a = torch.diag(torch.tensor([3.0, -1.0], dtype=torch.float64)).to(dev)
    vals, _ = lanczos(lambda v: a @ v, 2, k=3, iterations=5, device=dev)
    assert vals[:2].tolist() == pytest.approx([3.0, -1.0])
    assert math.isnan(vals[2])


def test_power_iteration_with_deflation_matches_dense(dense: tuple, device: str) -> None:
    model, x, y, h = dense
    ev = torch.linalg.eigvalsh(h)
    ref = ev[torch.argsort(ev.abs(), descending=True)][:2]
    dev = torch.device(device)
    hd = h.to(dev)
    vals, res = power_iteration(lambda v: hd @ v, h.shape[0], k=2, iterations=3000, tol=1e-12,
                                generator=torch.Generator().manual_seed(0), device=dev)
    # 1e-4: what the iteration converges to, on any device (float64 products)
    assert torch.allclose(vals, ref, rtol=1e-4), (vals, ref)


def test_hutchinson_trace_within_three_standard_errors(dense: tuple, device: str) -> None:
    model, x, y, h = dense
    dev = torch.device(device)
    op = HessianOperator(copy.deepcopy(model).to(dev), x.to(dev), y.to(dev), batch_size=64)
    est, se, q = hutchinson_trace(op.matvec, op.dim, samples=64,
                                  generator=torch.Generator().manual_seed(3), device=dev)
    assert len(q) == 64 and se > 0
    assert abs(est - float(torch.trace(h))) < 3 * se
    # the standard error is that of the mean of the samples
    assert se == pytest.approx(float(q.std()) / 8)


# ---------------------------------------------------------------- the probe

@functools.cache
def digits_ctx(noise: bool = True, batch_size: int = 64) -> Context:
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs[:300] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(ys[:300])
    mean, std = x.mean().view(1), x.std().view(1)
    x = (x - mean) / std
    noisy = (torch.arange(300) % 5 == 0) if noise else torch.zeros(300, dtype=torch.bool)
    data = RunData(x_train=x[:200], y_train=torch.where(noisy, (y + 1) % 10, y)[:200],
                   clean_labels=y[:200], noisy_mask=noisy[:200], x_test=x[200:],
                   y_test=y[200:], mean=mean, std=std, num_classes=10)

    def build(width: int) -> nn.Module:
        from ckpt_analyzer.models.mcnn import mcnn

        torch.manual_seed(width)
        return mcnn(width, 10, 1).eval()

    return Context(data=data, device=torch.device("cpu"), batch_size=batch_size, seed=5,
                   widths=(1, 2), epochs=(0,), build_model=build)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_probe_shapes_determinism_and_untouched_model(device: str) -> None:
    ctx = on_device(digits_ctx(), device)
    cfg = HessianProbe.Config(points=24, iterations=6, k=2, trace_samples=3)
    probe = HessianProbe(cfg)
    inputs = probe.prepare(ctx)
    assert set(inputs) == {"train/index", "test/index", "w1/parameters", "w2/parameters"}
    assert int(inputs["w2/parameters"][0]) == sum(p.numel() for p in ctx.build_model(2).parameters())
    outs = probe.outputs()
    model = ctx.build_model(2)
    flags = [p.requires_grad for p in model.parameters()]
    before = snapshot(model)
    res = outs.check(probe(model, ctx), "hessian")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert res["eigenvalues"].shape == (2, 2) and np.isfinite(res["eigenvalues"]).all()
    assert (np.diff(res["eigenvalues"], axis=1) <= 0).all()
    assert np.isfinite(res["trace_stderr"]).all()
    again = HessianProbe(cfg)
    again.prepare(ctx)
    res2 = again(model, ctx)
    for m in res:  # bit for bit on the CPU
        assert_same(device, res[m], res2[m], err_msg=m)


def test_probe_empty_subset_is_nan_and_power_method_runs(device: str) -> None:
    ctx = on_device(digits_ctx(noise=False), device)
    cfg = HessianProbe.Config(points=16, subsets=("noisy", "test"), method="power", k=1,
                              iterations=5, trace_samples=0)
    probe = HessianProbe(cfg)
    inputs = probe.prepare(ctx)
    assert len(inputs["noisy/index"]) == 0
    res = probe(ctx.build_model(1), ctx)
    assert np.isnan(res["eigenvalues"][0]).all() and np.isfinite(res["eigenvalues"][1]).all()
    assert np.isnan(res["trace"]).all()


def test_too_large_model_is_refused_with_its_cost() -> None:
    ctx = digits_ctx()
    probe = HessianProbe(HessianProbe.Config(points=8, iterations=50, max_basis_gb=1e-4))
    with pytest.raises(ConfigError, match=r"parameters.*Hessian-vector products.*GB Lanczos"):
        probe.prepare(ctx)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="iterations"):
        build_config(HessianProbe.Config, {"k": "5", "iterations": "3"}, "hessian")
    with pytest.raises(ConfigError, match="subset"):
        build_config(HessianProbe.Config, {"subsets": "train,bogus"}, "hessian")
    cfg = build_config(HessianProbe.Config, {"method": "power", "k": "2"}, "hessian")
    assert cfg.method == "power" and cfg.k == 2
