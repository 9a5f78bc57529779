"""Layerwise normalization (Liao, Poggio et al.): BN folding, layer norms, f~ and the probe."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same, tolerance
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.errors import CkptError
from ckpt_analyzer.functional.normalization import (
    ChannelAffine,
    fold_batchnorm,
    is_homogeneous,
    layer_norms,
    log_norm_product,
    normalized_network,
    output_normalized_logits,
    weight_layers,
)
from ckpt_analyzer.probes.base import Context, RunData
from ckpt_analyzer.probes.normalization import NormalizationProbe

torch.set_num_threads(1)


# ---------------------------------------------------------------- models and data


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every batch norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.3)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))
    return model


def conv_bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 10), nn.BatchNorm1d(10))


class MCNN(nn.Module):
    """Nakkiran-style 5-layer CNN, as the trainer's mcnn (conv-BN-ReLU blocks, max pools)."""

    def __init__(self, k: int = 4, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(cout), nn.ReLU()]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        self.features = nn.Sequential(block(in_channels, k, False), block(k, 2 * k, True),
                                      block(2 * k, 4 * k, True), block(4 * k, 8 * k, True))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * k, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class PreActChain(nn.Module):
    """Pre-activation ordering BN -> ReLU -> conv without residual sums (homogeneous)."""

    def __init__(self, k: int = 4, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.bn1 = nn.BatchNorm2d(1)
        self.conv1 = nn.Conv2d(1, k, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(k)
        self.conv2 = nn.Conv2d(k, k, 3, padding=1)
        self.fc = nn.Linear(k, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(h)))
        if self.residual:
            out = out + h
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SmallCNN(nn.Module):
    """Homogeneous: conv, ReLU, LeakyReLU, max/avg pooling, view, scalar multiple, linear."""

    def __init__(self, k: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, k, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(k, 2 * k, 3, padding=1, bias=bias)
        self.fc1 = nn.Linear(2 * k * 4, 16, bias=bias)
        self.fc2 = nn.Linear(16, 10, bias=bias)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = nn.functional.avg_pool2d(self.act(self.conv2(h)), 2)
        h = self.fc1(h.view(h.size(0), -1))
        return 0.5 * self.fc2(torch.relu(h))


class Residual(nn.Module):
    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, k, 3, padding=1)
        self.conv2 = nn.Conv2d(k, k, 3, padding=1)
        self.fc = nn.Linear(k, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(h + self.conv2(h))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def digits() -> RunData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    mean, std = x.mean().reshape(1), x.std().reshape(1)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    perm = torch.as_tensor(np.random.default_rng(0).permutation(len(y)))
    tr, te = perm[:1347], perm[1347:]
    return RunData(x_train=x[tr], y_train=y[tr], clean_labels=y[tr],
                   noisy_mask=torch.zeros(len(tr), dtype=torch.bool), x_test=x[te],
                   y_test=y[te], mean=mean, std=std, num_classes=10)


def make_ctx(data: RunData, build, widths: tuple[int, ...] = (4,), device: str = "cpu") -> Context:
    dev = torch.device(device)
    return Context(data=data.to(dev), device=dev, batch_size=256, seed=3, widths=widths,
                   build_model=build)


def moved(model: nn.Module, device: str) -> nn.Module:
    """A copy of ``model`` on ``device`` (the CPU original stays for the reference)."""
    return copy.deepcopy(model).to(torch.device(device))


def run_probe(probe: NormalizationProbe, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
    out = probe(model.eval(), ctx)
    return probe.outputs().check(out, probe.name)


def seeded(cls, *args, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------- batch-norm folding


def test_fold_conv_bn_relu_pool_preserves_outputs(device: str) -> None:
    net = randomize_bn(seeded(conv_bn_net)).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fast = moved(net, device)
    folded = fold_batchnorm(fast)
    with torch.no_grad():
        assert rel_err(folded(x.to(torch.device(device))).cpu(), net(x)) < tolerance(device, 1e-5)
    assert not any(isinstance(m, (_BatchNorm, ChannelAffine)) for m in folded.modules())
    assert [p for p, _ in weight_layers(folded)] == ["0", "4", "9"]
    assert any(isinstance(m, _BatchNorm) for m in fast.modules())  # the input is untouched


def test_fold_matches_explicit_bn_formula(device: str) -> None:
    net = randomize_bn(seeded(conv_bn_net)).eval()
    folded = fold_batchnorm(moved(net, device))
    conv, bn = net[0], net[1]
    w = folded.get_submodule("0").weight.detach().cpu()
    b = folded.get_submodule("0").bias.detach().cpu()
    rel = tolerance(device, 1e-5)
    for c in range(conv.out_channels):  # W' = W g / s, b' = (b - mu) g / s + beta
        s = math.sqrt(bn.running_var[c].item() + bn.eps)
        g = bn.weight[c].item()
        for idx, value in np.ndenumerate(conv.weight[c].detach().numpy()):
            assert w[c][idx].item() == pytest.approx(value * g / s, rel=rel, abs=1e-7)
        want = (conv.bias[c].item() - bn.running_mean[c].item()) * g / s + bn.bias[c].item()
        assert b[c].item() == pytest.approx(want, rel=rel, abs=1e-6)


def test_fold_keeps_train_mode_of_input(device: str) -> None:
    net = randomize_bn(seeded(conv_bn_net)).train()
    fast = moved(net, device)
    folded = fold_batchnorm(fast)
    assert fast.training and not folded.training
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = folded(x.to(torch.device(device))).cpu()
        assert rel_err(got, net.eval()(x)) < tolerance(device, 1e-5)


def test_fold_mcnn_like_on_digits(digits: RunData, device: str) -> None:
    net = randomize_bn(seeded(MCNN, 4)).eval()
    x = digits.x_train[:200]
    xd = x.to(torch.device(device))
    folded = fold_batchnorm(moved(net, device), example=xd[:1])
    with torch.no_grad():
        assert rel_err(folded(xd).cpu(), net(x)) < tolerance(device, 1e-5)
    assert [p for p, _ in weight_layers(folded)] == [
        "features.0.0", "features.1.0", "features.2.0", "features.3.0", "fc"]
    assert is_homogeneous(folded)[0]
    ok, reason = is_homogeneous(net.eval())
    assert not ok and "batch norm 'features.0.1'" in reason


@pytest.mark.parametrize("residual", [False, True])
def test_fold_preact_keeps_unfoldable_bn_as_affine_layer(residual: bool, device: str) -> None:
    net = randomize_bn(seeded(PreActChain, 4, residual=residual)).eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    folded = fold_batchnorm(moved(net, device))
    rtol = tolerance(device, 1e-5)
    with torch.no_grad():
        assert rel_err(folded(x.to(torch.device(device))).cpu(), net(x)) < rtol
    # bn1 follows no layer: a per-channel affine weight layer of its own, rho = ||g / s||
    assert isinstance(folded.get_submodule("bn1"), ChannelAffine)
    bn1 = net.bn1
    want = bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)
    assert torch.allclose(folded.get_submodule("bn1").weight.cpu(), want,
                          rtol=tolerance(device, 1e-6))
    paths = [p for p, _ in weight_layers(folded)]
    ok, reason = is_homogeneous(folded)
    if residual:  # conv1's output also feeds the residual sum: bn2 cannot be folded into it
        assert isinstance(folded.get_submodule("bn2"), ChannelAffine)
        assert paths == ["bn1", "conv1", "bn2", "conv2", "fc"]
        assert not ok and "residual sum" in reason
    else:
        assert paths == ["bn1", "conv1", "conv2", "fc"]
        assert ok, reason
        norms = layer_norms(folded)
        assert float(norms[0]) == pytest.approx(float(want.detach().norm()),
                                                rel=tolerance(device, 1e-6))
        xd = x.to(torch.device(device))
        with torch.no_grad():
            f_tilde = normalized_network(folded, norms)(xd)
            assert rel_err(f_tilde, folded(xd) / norms.prod().float()) < rtol


def test_fold_linear_bn_only_on_2d_outputs(device: str) -> None:
    class Seq3d(nn.Module):  # Linear over the last dim, BatchNorm1d over dim 1 (channels)
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.lin(x)).flatten(1)

    net = randomize_bn(seeded(Seq3d)).eval()
    x = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(5))
    xd = x.to(torch.device(device))
    folded = fold_batchnorm(moved(net, device), example=xd[:1])
    assert isinstance(folded.get_submodule("bn"), ChannelAffine)
    with torch.no_grad():
        assert rel_err(folded(xd).cpu(), net(x)) < tolerance(device, 1e-5)


def test_untraceable_model_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(TypeError, match="cannot trace model Branchy with torch.fx"):
        fold_batchnorm(Branchy())
    with pytest.raises(TypeError, match="torch.fx"):
        layer_norms(Branchy())


# ---------------------------------------------------------------- layers and norms


def test_weight_layers_in_forward_order_not_definition_order() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.middle = nn.Linear(6, 8)
            self.stem = nn.Conv2d(1, 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.adaptive_max_pool2d(F.relu(self.stem(x)), 1).flatten(1)
            return self.head(F.relu(self.middle(h)))

    net = Reversed()
    assert [n for n, m in net.named_modules() if n] == ["head", "middle", "stem"]
    layers = weight_layers(net)
    assert [p for p, _ in layers] == ["stem", "middle", "head"]
    assert layers[0][1] is net.stem  # the model's own modules
    assert is_homogeneous(net)[0]


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf])
def test_layer_norms_against_explicit_loop(p: float, device: str) -> None:
    net = seeded(SmallCNN, 3)
    # float64 sums on every device: the CPU tolerance holds
    got = layer_norms(moved(net, device), p=p).cpu()
    modules = [net.conv1, net.conv2, net.fc1, net.fc2]
    assert got.shape == (4,) and got.dtype == torch.float64
    for value, module in zip(got.tolist(), modules):
        ws = [float(w) for w in module.weight.detach().reshape(-1)]
        if p == math.inf:
            want = max(abs(w) for w in ws)
        else:
            want = sum(abs(w) ** p for w in ws) ** (1.0 / p)
        assert value == pytest.approx(want, rel=1e-6)


def test_layer_norms_rejects_bad_order() -> None:
    with pytest.raises(ValueError, match="p must be > 0"):
        layer_norms(seeded(SmallCNN), p=0.0)


def test_log_norm_product_is_sum_of_logs_without_overflow() -> None:
    norms = torch.tensor([1e200, 3e250, 0.5, 7e180], dtype=torch.float64)
    assert not math.isfinite(float(norms.prod()))  # the product itself overflows
    want = math.fsum(math.log(v) for v in norms.tolist())
    assert float(log_norm_product(norms)) == pytest.approx(want, rel=1e-12)
    small = torch.tensor([1.5, 2.0, 0.25], dtype=torch.float32)
    assert float(log_norm_product(small)) == pytest.approx(math.log(1.5 * 2.0 * 0.25), rel=1e-9)


# ---------------------------------------------------------------- the normalized network


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_normalized_network_equals_f_over_product_of_norms(p: float, device: str) -> None:
    net = seeded(SmallCNN, 4).eval()
    with torch.no_grad():  # make the product of norms far from 1 and biases non-negligible
        for m in (net.conv1, net.conv2, net.fc1, net.fc2):
            m.weight.mul_(3.0)
            m.bias.copy_(torch.linspace(-1, 1, len(m.bias)))
    assert is_homogeneous(net)[0]
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    fast = moved(net, device)
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    norms = layer_norms(fast, p=p)
    tilde = normalized_network(fast, norms)
    rtol = tolerance(device, 1e-5)
    with torch.no_grad():
        want = net(x).double() / torch.exp(log_norm_product(layer_norms(net, p=p)))
        assert rel_err(tilde(x.to(torch.device(device))).double().cpu(), want) < rtol
    unit = layer_norms(tilde, p=p)
    assert torch.allclose(unit, torch.ones_like(unit), rtol=rtol)
    for k, v in fast.state_dict().items():  # the input network is not modified
        assert torch.equal(v, before[k])


def test_normalized_network_against_explicit_mlp(device: str) -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(10, 5)
    w1, b1, w2, b2 = (t.detach() for t in (net[0].weight, net[0].bias, net[2].weight,
                                           net[2].bias))
    r1, r2 = float(w1.norm()), float(w2.norm())
    want = torch.relu(x @ (w1 / r1).T + b1 / r1) @ (w2 / r2).T + b2 / (r1 * r2)
    # norms given on the CPU for a model on the device: normalized_network moves them
    tilde = normalized_network(moved(net, device), torch.tensor([r1, r2]))
    with torch.no_grad():
        got = tilde(x.to(torch.device(device))).cpu()
        assert torch.allclose(got, want, atol=tolerance(device, 1e-6, 1e-5))


def test_normalized_network_is_not_f_over_rho_for_residual_nets(device: str) -> None:
    dev = torch.device(device)
    net = seeded(Residual).eval().to(dev)
    with torch.no_grad():
        net.conv2.weight.mul_(5.0)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(8)).to(dev)
    norms = layer_norms(net)
    with torch.no_grad():
        got = normalized_network(net, norms)(x)
        assert rel_err(got, net(x) / norms.prod().float()) > 1e-2
    assert not is_homogeneous(net)[0]


def test_normalized_network_rejects_zero_norm_and_wrong_length() -> None:
    net = seeded(SmallCNN)
    with pytest.raises(ValueError, match="layer 'conv2' has norm 0"):
        normalized_network(net, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="3 layer norms for 4 weight layers"):
        normalized_network(net, torch.ones(3))


# ---------------------------------------------------------------- homogeneity


class _Net(nn.Module):
    def __init__(self, body) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)
        self.tanh = nn.Tanh()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x)


def _head(m: _Net, h: torch.Tensor) -> torch.Tensor:
    return m.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


HOMOGENEITY_CASES = {
    "conv_relu_maxpool_linear": (True, "", lambda m, x: _head(m, F.max_pool2d(
        F.relu(m.conv2(nn.functional.relu(m.conv(x)))), 2, 1))),
    "scalar_multiple_and_view": (True, "", lambda m, x: m.fc(
        (2.0 * m.conv2(m.conv(x)) / 3).mean((2, 3)).view(x.size(0), -1))),
    "dropout_eval": (True, "", lambda m, x: _head(m, F.dropout(m.conv2(m.conv(x)), 0.3, False))),
    "dropout_train": (False, "training mode", lambda m, x: _head(
        m, F.dropout(m.conv2(m.conv(x)), 0.3))),
    "reciprocal": (False, "divides a constant", lambda m, x: _head(m, 2.0 / m.conv2(m.conv(x)))),
    "residual_sum": (False, "residual sum", lambda m, x: _head(
        m, m.conv2(F.relu(h := m.conv(x))) + h)),
    "tanh_module": (False, "Tanh", lambda m, x: _head(m, m.tanh(m.conv2(m.conv(x))))),
    "tanh_function": (False, "tanh", lambda m, x: _head(m, torch.tanh(m.conv2(m.conv(x))))),
    "sigmoid": (False, "sigmoid", lambda m, x: _head(m, torch.sigmoid(m.conv2(m.conv(x))))),
    "constant_offset": (False, "adds a constant", lambda m, x: _head(m, m.conv2(m.conv(x)) + 1)),
    "concatenation": (False, "cat", lambda m, x: m.fc(torch.cat(
        [h := m.conv2(m.conv(x)), h], 1)[:, :3].mean((2, 3)))),
    "product_of_tensors": (False, "mul of tensors", lambda m, x: _head(
        m, (h := m.conv2(m.conv(x))) * h)),
    "sum_of_a_tensor_with_itself": (False, "residual sum", lambda m, x: _head(
        m, (h := m.conv2(m.conv(x))) + h)),
    "layer_used_twice": (False, "more than once", lambda m, x: _head(
        m, m.conv2(F.relu(m.conv2(m.conv(x)))))),
    "skips_a_layer": (False, "previous weight layer", lambda m, x: (
        m.conv2(h := m.conv(x)), _head(m, F.relu(h)))[1]),
}


@pytest.mark.parametrize("case", sorted(HOMOGENEITY_CASES))
def test_is_homogeneous(case: str) -> None:
    expected, fragment, body = HOMOGENEITY_CASES[case]
    net = _Net(body).eval()
    net(torch.randn(2, 1, 6, 6))  # the model runs
    ok, reason = is_homogeneous(net)
    assert ok is expected, reason
    assert fragment in reason


# ---------------------------------------------------------------- output normalization


def test_output_normalized_logits_against_explicit_norm(device: str) -> None:
    g = torch.Generator().manual_seed(9)
    logits, ref = torch.randn(6, 4, generator=g), torch.randn(1, 4, generator=g)
    norm = math.sqrt(sum(float(v) ** 2 for v in ref.reshape(-1)))
    dev = torch.device(device)
    got = output_normalized_logits(logits.to(dev), ref.to(dev))
    rel = tolerance(device, 1e-6)
    for i in range(6):
        for j in range(4):
            assert float(got[i, j]) == pytest.approx(float(logits[i, j]) / norm, rel=rel)
    # invariant under a positive rescaling of the network's outputs (c f)
    scaled = output_normalized_logits(7.5 * logits.to(dev), 7.5 * ref[0].to(dev))
    assert torch.allclose(scaled, got, rtol=rel)
    with pytest.raises(ValueError, match="one example"):
        output_normalized_logits(logits, logits)


# ---------------------------------------------------------------- the probe


def explicit_ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    total = 0.0
    for row, label in zip(logits.double().tolist(), y.tolist()):
        top = max(row)
        total += -(row[label] - top - math.log(sum(math.exp(v - top) for v in row)))
    return total / len(y)


def test_probe_scaling_one_layer(digits: RunData, device: str) -> None:
    ctx = make_ctx(digits, lambda w: SmallCNN(w, bias=False), device=device)
    probe = NormalizationProbe()
    inputs = probe.prepare(ctx)
    assert len(inputs["index"]) == len(digits.y_train)
    net = seeded(SmallCNN, 4, bias=False).to(torch.device(device))
    base = run_probe(probe, net, ctx)
    assert base["mode_layerwise"] == 1.0
    c = 3.7
    with torch.no_grad():
        net.conv2.weight.mul_(c)
    scaled = run_probe(probe, net, ctx)
    rtol = tolerance(device, 1e-6)
    np.testing.assert_allclose(scaled["normalized_loss"], base["normalized_loss"], rtol=rtol)
    assert scaled["log_norm_product"] == pytest.approx(base["log_norm_product"] + math.log(c),
                                                       abs=1e-6)
    np.testing.assert_allclose(scaled["layer_norm"], base["layer_norm"] * [1, c, 1, 1],
                               rtol=rtol)
    np.testing.assert_array_equal(scaled["error"], base["error"])
    assert np.all(np.abs(scaled["loss"] - base["loss"]) > 1e-4)  # the raw loss does change


def test_probe_scaling_one_layer_with_biases(digits: RunData, device: str) -> None:
    ctx = make_ctx(digits, lambda w: SmallCNN(w), device=device)
    probe = NormalizationProbe(NormalizationProbe.Config(p=1.0))
    probe.prepare(ctx)
    net = seeded(SmallCNN, 4).to(torch.device(device))
    base = run_probe(probe, net, ctx)
    c = 0.3  # scale W_2 and every bias from layer 2 on: f -> c f, same f~
    with torch.no_grad():
        net.conv2.weight.mul_(c)
        for m in (net.conv2, net.fc1, net.fc2):
            m.bias.mul_(c)
    scaled = run_probe(probe, net, ctx)
    np.testing.assert_allclose(scaled["normalized_loss"], base["normalized_loss"],
                               rtol=tolerance(device, 1e-6))
    assert scaled["log_norm_product"] == pytest.approx(base["log_norm_product"] + math.log(c),
                                                       abs=1e-6)


def test_probe_against_explicit_computation(digits: RunData, device: str) -> None:
    cfg = build_config(NormalizationProbe.Config, {"samples": "25"}, "normalization")
    ctx = make_ctx(digits, lambda w: SmallCNN(w), device=device)
    probe = NormalizationProbe(cfg)
    inputs = probe.prepare(ctx)
    again = NormalizationProbe(cfg).prepare(ctx)
    for key in ("index", "test_index"):
        idx = inputs[key]
        assert idx.dtype == np.int64 and len(idx) == 25 and len(set(idx.tolist())) == 25
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, again[key])
    assert set(inputs) == {"index", "test_index"}
    net = seeded(SmallCNN, 4, seed=11).eval()  # the reference's, on the CPU
    out = run_probe(probe, moved(net, device), ctx)
    rho = [math.sqrt(sum(float(w) ** 2 for w in m.weight.detach().reshape(-1)))
           for m in (net.conv1, net.conv2, net.fc1, net.fc2)]
    rel = tolerance(device, 1e-6)
    np.testing.assert_allclose(out["layer_norm"], rho, rtol=rel)
    # float64 norms and logs on every device
    assert out["log_norm_product"] == pytest.approx(sum(math.log(r) for r in rho), rel=1e-9)
    splits = [(digits.x_train, digits.y_train, inputs["index"]),
              (digits.x_test, digits.y_test, inputs["test_index"])]
    for row, (x_all, y_all, idx) in enumerate(splits):
        x, y = x_all[torch.as_tensor(idx)], y_all[torch.as_tensor(idx)]
        with torch.no_grad():
            logits = net(x)
        assert out["loss"][row] == pytest.approx(explicit_ce(logits, y), rel=rel)
        assert out["normalized_loss"][row] == pytest.approx(
            explicit_ce(logits.double() / math.prod(rho), y), rel=rel)
        wrong = sum(int(torch.argmax(logits[i]) != y[i]) for i in range(len(y)))
        assert out["error"][row] == pytest.approx(wrong / len(y))


def test_probe_bn_network_layers_are_folded_paths(digits: RunData, device: str) -> None:
    ctx = make_ctx(digits, lambda w: MCNN(w), widths=(2, 4), device=device)
    probe = NormalizationProbe(NormalizationProbe.Config(subsets=("test",)))
    inputs = probe.prepare(ctx)
    assert set(inputs) == {"test_index"}
    outputs = probe.outputs()
    assert outputs.coords["layer"] == ["features.0.0", "features.1.0", "features.2.0",
                                       "features.3.0", "fc"]
    assert outputs.coords["subset"] == ["test"]
    net = randomize_bn(seeded(MCNN, 4)).eval()  # the reference's, on the CPU
    out = run_probe(probe, moved(net, device), ctx)
    assert out["mode_layerwise"] == 1.0
    conv, bn = net.features[2][0], net.features[2][1]  # explicit fold of the third conv
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    want = math.sqrt(sum(float(w) ** 2 for w in (conv.weight.detach()
                                                 * scale.view(-1, 1, 1, 1)).reshape(-1)))
    assert out["layer_norm"][2] == pytest.approx(want, rel=tolerance(device, 1e-5))
    assert out["layer_norm"][4] == pytest.approx(float(net.fc.weight.detach().norm()),
                                                 rel=tolerance(device, 1e-6))
    with pytest.raises(CkptError, match="weight layers"):
        probe(seeded(SmallCNN, 4).eval().to(torch.device(device)), ctx)


def test_probe_residual_network_uses_output_mode(digits: RunData, device: str) -> None:
    ctx = make_ctx(digits, lambda w: Residual(w), device=device)
    probe = NormalizationProbe(NormalizationProbe.Config(samples=40, reference=5))
    inputs = probe.prepare(ctx)
    np.testing.assert_array_equal(inputs["reference"], [5])
    net = seeded(Residual, 4).eval()  # the reference's, on the CPU
    out = run_probe(probe, moved(net, device), ctx)
    assert out["mode_layerwise"] == 0.0
    with torch.no_grad():
        ref = net(digits.x_train[5:6])[0]
        x = digits.x_train[torch.as_tensor(inputs["index"])]
        logits = net(x)
    norm = math.sqrt(sum(float(v) ** 2 for v in ref))
    want = explicit_ce(logits.double() / norm, digits.y_train[torch.as_tensor(inputs["index"])])
    assert out["normalized_loss"][0] == pytest.approx(want, rel=tolerance(device, 1e-6))
    with pytest.raises(ConfigError, match="mode=layer needs a positively homogeneous"):
        NormalizationProbe(NormalizationProbe.Config(mode="layer")).prepare(ctx)


def test_probe_output_mode_on_homogeneous_net_is_scale_invariant(digits: RunData,
                                                                  device: str) -> None:
    ctx = make_ctx(digits, lambda w: SmallCNN(w, bias=False), device=device)
    probe = NormalizationProbe(NormalizationProbe.Config(mode="output", samples=50))
    probe.prepare(ctx)
    net = seeded(SmallCNN, 4, bias=False).to(torch.device(device))
    base = run_probe(probe, net, ctx)
    with torch.no_grad():
        net.fc1.weight.mul_(4.0)
    scaled = run_probe(probe, net, ctx)
    assert base["mode_layerwise"] == 0.0
    np.testing.assert_allclose(scaled["normalized_loss"], base["normalized_loss"],
                               rtol=tolerance(device, 1e-6))


@pytest.mark.parametrize("values, fragment", [
    ({"p": "0"}, "p must be > 0"),
    ({"samples": "0"}, "samples must be >= 1"),
    ({"subsets": "noisy"}, "unknown subset 'noisy'"),
    ({"subsets": "train,train"}, "duplicates"),
    ({"reference": "-1"}, "reference must be >= 0"),
    ({"mode": "both"}, "not one of auto, layer, output"),
])
def test_probe_config_errors(values: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build_config(NormalizationProbe.Config, values, "normalization")


def test_probe_prepare_errors(digits: RunData) -> None:
    with pytest.raises(ConfigError, match="not a training position"):
        NormalizationProbe(NormalizationProbe.Config(reference=5000)).prepare(
            make_ctx(digits, lambda w: SmallCNN(w)))
    with pytest.raises(CkptError, match="model factory"):
        NormalizationProbe().prepare(make_ctx(digits, None))
    with pytest.raises(CkptError, match="prepare"):
        NormalizationProbe().outputs()


# ---------------------------------------------------------------- bias conventions


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_first_bias_convention_counts_b1_in_rho1_and_stays_exact(p: float, device: str) -> None:
    net = seeded(SmallCNN, 4).eval()
    with torch.no_grad():  # a first-layer bias of a norm comparable to its weight's
        net.conv1.bias.copy_(torch.linspace(-2, 2, len(net.conv1.bias)))
    fast = moved(net, device)
    plain = layer_norms(fast, p=p)
    paper = layer_norms(fast, p=p, first_bias=True)
    w1 = torch.cat([net.conv1.weight.detach().reshape(-1), net.conv1.bias.detach()]).double()
    # float64 norms: another device's reduction order moves the last bits only
    assert paper[0].item() == pytest.approx(torch.linalg.vector_norm(w1, ord=p).item(),
                                            rel=tolerance(device, 1e-12, 1e-10))
    assert paper[0] > plain[0]
    torch.testing.assert_close(paper[1:], plain[1:])  # later biases are in no rho_l
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for norms in (plain, paper):  # f~ = f / prod rho_l under both conventions
            want = net(x).double() / torch.exp(log_norm_product(norms.cpu()))
            got = normalized_network(fast, norms)(x.to(torch.device(device))).double().cpu()
            assert rel_err(got, want) < tolerance(device, 1e-5)
    nobias = seeded(SmallCNN, 4, bias=False).to(torch.device(device))
    torch.testing.assert_close(layer_norms(nobias, first_bias=True), layer_norms(nobias))


def test_probe_rho_bias_parameter(digits: RunData, device: str) -> None:
    ctx = make_ctx(digits, lambda w: SmallCNN(w), device=device)
    net = seeded(SmallCNN, 4).to(torch.device(device))
    out = {}
    for conv in ("none", "first"):
        probe = NormalizationProbe(build_config(NormalizationProbe.Config, {"rho_bias": conv},
                                                "normalization"))
        probe.prepare(ctx)
        out[conv] = run_probe(probe, net, ctx)
    assert NormalizationProbe.Config().rho_bias == "none"
    np.testing.assert_allclose(out["first"]["layer_norm"][0],
                               layer_norms(net, first_bias=True)[0].item(), rtol=1e-6)
    np.testing.assert_allclose(out["first"]["layer_norm"][1:], out["none"]["layer_norm"][1:])
    assert out["first"]["log_norm_product"] > out["none"]["log_norm_product"]
    assert_same(device, out["first"]["loss"], out["none"]["loss"])
    with pytest.raises(ConfigError, match="rho_bias"):
        build_config(NormalizationProbe.Config, {"rho_bias": "all"}, "normalization")
