"""The interpolation maths (Fridovich-Keil et al. §3.2) and the ``interpolation`` probe."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from conftest import assert_same, tolerance
from torch import nn

from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.functional.interpolation import (
    aggregate_paths,
    correct_pairs,
    interpolate,
    interpolate_pairs,
    lambda_centres,
    path_curves,
    path_lengths,
    predict,
)
from ckpt_analyzer.probes.base import Context, RunData
from ckpt_analyzer.probes.interpolation import InterpolationProbe

torch.set_num_threads(1)


# --------------------------------------------------------------------------- fixtures


def make_data(seed: int = 0, drop_class: int | None = None) -> RunData:
    """Digits, stratified 75/25 split, normalized with the training mean/std.

    ``drop_class`` keeps a single test image of that class.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    if drop_class is not None:
        keep = (yte != drop_class) | (np.cumsum(yte == drop_class) == 1)
        xte, yte = xte[keep], yte[keep]
    mean, std = float(xtr.mean()), float(xtr.std())
    return RunData(
        x_train=torch.from_numpy((xtr - mean) / std),
        y_train=torch.from_numpy(ytr).long(),
        clean_labels=torch.from_numpy(ytr).long(),
        noisy_mask=torch.zeros(len(ytr), dtype=torch.bool),
        x_test=torch.from_numpy((xte - mean) / std),
        y_test=torch.from_numpy(yte).long(),
        mean=torch.tensor([mean]),
        std=torch.tensor([std]),
        num_classes=10,
    )


@pytest.fixture(scope="module")
def data() -> RunData:
    return make_data()


@pytest.fixture(scope="module")
def trained(data: RunData) -> nn.Module:
    """A tiny MLP fitted for a few hundred steps: most, not all, test images right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    return model.eval()


def context(data: RunData, seed: int = 0, batch_size: int = 256, device: str = "cpu") -> Context:
    dev = torch.device(device)
    return Context(data=data.to(dev), device=dev, batch_size=batch_size, seed=seed)


def moved(model: nn.Module, device: str) -> nn.Module:
    """A copy of ``model`` on ``device`` (the CPU original stays for the slow reference)."""
    return copy.deepcopy(model).to(torch.device(device))


def random_pairs(n_images: int, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([rng.choice(n_images, 2, replace=False) for _ in range(n)]))


# --------------------------------------------------------------------------- slow reference


def slow_paths(model: nn.Module, images: torch.Tensor, pairs: torch.Tensor, step: float,
               bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop over pairs and steps, one image per forward pass; per-path bin means and TV."""
    bin_mean = np.full((len(pairs), bins), np.nan)
    tv = np.zeros(len(pairs))
    for k, (i0, i1) in enumerate(pairs.tolist()):
        x0, x1 = images[i0].double().numpy(), images[i1].double().numpy()
        d = float(np.linalg.norm((x1 - x0).ravel()))
        ys, lams = [], []
        t = 0.0
        while t < d or not ys:
            lam = t / d if d > 0 else 0.0
            x = torch.from_numpy((1 - lam) * x0 + lam * x1).float()
            with torch.no_grad():
                z = model(x.unsqueeze(0))[0].double().numpy()
            e = np.exp(z - z.max())
            ys.append(e / e.sum())
            lams.append(lam)
            t += step
        dts = [np.linalg.norm(y - ys[0]) for y in ys]
        tv[k] = sum(np.linalg.norm(ys[m + 1] - ys[m]) for m in range(len(ys) - 1))
        for b in range(bins):
            inside = [dt for dt, lam in zip(dts, lams) if b <= lam * bins < b + 1]
            if inside:
                bin_mean[k, b] = np.mean(inside)
    return bin_mean, tv


def slow_aggregate(bin_mean: np.ndarray, tv: np.ndarray) -> tuple[np.ndarray, float]:
    cdn = np.full(bin_mean.shape[1], np.nan)
    for b in range(bin_mean.shape[1]):
        vals = [v for v in bin_mean[:, b] if not np.isnan(v)]
        if vals:
            cdn[b] = sum(vals) / len(vals)
    return cdn, float(np.mean(tv)) if len(tv) else math.nan


# --------------------------------------------------------------------------- functional


def test_path_lengths_match_numpy(data: RunData, device: str) -> None:
    pairs = random_pairs(len(data.x_test), 30, 0)
    dev = torch.device(device)
    d, points = path_lengths(data.x_test.to(dev), pairs.to(dev), step=0.7, batch_size=4)
    d, points = d.cpu(), points.cpu()
    for k, (i, j) in enumerate(pairs.tolist()):
        want = np.linalg.norm((data.x_test[j] - data.x_test[i]).double().numpy())
        assert d[k].item() == pytest.approx(want, rel=tolerance(device, 1e-6))
        assert points[k].item() == len(np.arange(0, want, 0.7))


@pytest.mark.parametrize("step,bins", [(1.0, 20), (2.5, 7)])
def test_path_curves_match_a_loop(data: RunData, trained: nn.Module, step: float,
                                  bins: int, device: str) -> None:
    pairs = random_pairs(len(data.x_test), 12, 1)
    dev = torch.device(device)
    curves = path_curves(moved(trained, device), data.x_test.to(dev), pairs.to(dev), step=step,
                         bins=bins, batch_size=16)
    want_bins, want_tv = slow_paths(trained, data.x_test, pairs, step, bins)
    got = curves.bin_mean.cpu().numpy()
    rtol, atol = tolerance(device, 1e-5), tolerance(device, 1e-7, 1e-6)  # softmax differences
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want_bins))
    np.testing.assert_allclose(got, want_bins, rtol=rtol, atol=atol)
    np.testing.assert_allclose(curves.tv.cpu().numpy(), want_tv, rtol=rtol, atol=atol)
    res = aggregate_paths(curves.bin_mean, curves.tv)
    want_cdn, want_mean_tv = slow_aggregate(want_bins, want_tv)
    np.testing.assert_allclose(res.cdn.cpu().numpy(), want_cdn, rtol=rtol, atol=atol)
    assert res.tv.item() == pytest.approx(want_mean_tv, rel=rtol)
    assert res.paths == 12


def test_chunking_does_not_change_paths(data: RunData, trained: nn.Module, device: str) -> None:
    # In float64 so that only the stream's index arithmetic could make chunks differ (on a GPU,
    # float64 kernels chosen by batch size and atomic adds differ in the last bits only).
    dev = torch.device(device)
    model, images = moved(trained, device).double(), data.x_test.double().to(dev)
    pairs = random_pairs(len(data.x_test), 25, 2).to(dev)
    runs = [path_curves(model, images, pairs, step=1.0, bins=10, batch_size=b)
            for b in (1, 7, 1000)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.bin_mean.cpu().numpy(), runs[0].bin_mean.cpu().numpy(),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(other.tv.cpu().numpy(), runs[0].tv.cpu().numpy(), rtol=1e-10,
                                   atol=1e-12)


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = torch.tensor([[0.3, -1.0, 2.0]], device=x.device)
        return value.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_constant_model_is_flat(data: RunData, device: str) -> None:
    pairs = random_pairs(len(data.x_test), 40, 3)
    dev = torch.device(device)
    res = interpolate(Constant(), data.x_test.to(dev), pairs.to(dev), step=0.5, bins=10,
                      batch_size=33)
    assert res.paths == 40
    assert torch.all(res.cdn == 0) and res.tv.item() == 0


def test_linear_two_class_toy_closed_form(device: str) -> None:
    """Logits (0, s(x)) with s linear: y_1 = sigmoid(s), d_t = sqrt(2) |sigmoid(s_t) - sigmoid(s_0)|."""
    dev = torch.device(device)
    w = torch.linspace(-1, 1, 64).view(1, 64)
    model = nn.Linear(64, 1)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.fill_(0.2)
    model.to(dev)

    def toy(x: torch.Tensor) -> torch.Tensor:
        s = model(x.flatten(1))
        return torch.cat([torch.zeros_like(s), s], dim=1)

    x0 = torch.zeros(1, 1, 8, 8)
    direction = w.view(1, 1, 8, 8) / w.norm()
    d = 10.3
    x1 = x0 + d * direction  # s(lambda) = 0.2 + lambda * d * ||w||
    res = interpolate_pairs(toy, x0.to(dev), x1.to(dev), step=1.0, bins=3, batch_size=4)
    t = np.arange(11.0)  # 0, 1, ..., 10 < 10.3
    lam = t / d
    s = 0.2 + lam * d * float(w.norm())
    sig = 1 / (1 + np.exp(-s))
    dt = np.sqrt(2) * np.abs(sig - sig[0])
    want = [dt[(lam >= b / 3) & (lam < (b + 1) / 3)].mean() for b in range(3)]
    np.testing.assert_allclose(res.cdn.cpu().numpy(), want, rtol=tolerance(device, 1e-5))
    # Monotone path: the total variation telescopes.
    assert res.tv.item() == pytest.approx(np.sqrt(2) * (sig[-1] - sig[0]),
                                          rel=tolerance(device, 1e-5))


def test_linear_softmax_toy_closed_form(data: RunData, device: str) -> None:
    """Logits W x: along the path they mix linearly, z(lambda) = (1 - lambda) z0 + lambda z1."""
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(10, 64, generator=g) * 0.3
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    dev = torch.device(device)
    pairs = random_pairs(len(data.x_test), 6, 4)
    curves = path_curves(model.to(dev), data.x_test.to(dev), pairs.to(dev), step=1.0, bins=1,
                         batch_size=9)
    rtol = tolerance(device, 1e-5)
    for k, (i, j) in enumerate(pairs.tolist()):
        x0 = data.x_test[i].double().flatten().numpy()
        x1 = data.x_test[j].double().flatten().numpy()
        z0, z1 = weight.double().numpy() @ x0, weight.double().numpy() @ x1
        d = np.linalg.norm(x1 - x0)
        lam = np.arange(0, d, 1.0) / d
        z = (1 - lam[:, None]) * z0 + lam[:, None] * z1
        y = np.exp(z - z.max(1, keepdims=True))
        y /= y.sum(1, keepdims=True)
        assert curves.bin_mean[k, 0].item() == pytest.approx(
            np.linalg.norm(y - y[0], axis=1).mean(), rel=rtol)
        assert curves.tv[k].item() == pytest.approx(
            np.linalg.norm(np.diff(y, axis=0), axis=1).sum(), rel=rtol)


def test_mispredicted_end_points_are_excluded(data: RunData, trained: nn.Module,
                                             device: str) -> None:
    dev = torch.device(device)
    model, images = moved(trained, device), data.x_test.to(dev)
    pairs = random_pairs(len(data.x_test), 60, 5).to(dev)
    pred = predict(model, images, batch_size=50)
    labels = pred.clone()
    labels[pairs[:5, 1]] = (labels[pairs[:5, 1]] + 1) % 10  # make 5+ pairs wrong
    keep = correct_pairs(pred, labels, pairs)
    assert keep.sum() < 60 - 4
    res = interpolate(model, images, pairs, labels=labels, step=1.0, bins=5)
    kept = path_curves(model, images, pairs[keep], step=1.0, bins=5)
    want = aggregate_paths(kept.bin_mean, kept.tv)
    assert res.paths == int(keep.sum())
    np.testing.assert_allclose(res.cdn.cpu().numpy(), want.cdn.cpu().numpy(),
                               rtol=tolerance(device, 1e-6))
    none = interpolate(model, images, pairs, labels=(pred + 1) % 10, bins=5)
    assert none.paths == 0 and torch.all(torch.isnan(none.cdn)) and math.isnan(none.tv.item())


def test_identical_images_give_one_sample(data: RunData, device: str) -> None:
    dev = torch.device(device)
    x = data.x_test[:2].to(dev)
    curves = path_curves(Constant(), torch.cat([x, x]), torch.tensor([[0, 2], [1, 3]], device=dev),
                         bins=4)
    assert curves.points.tolist() == [1, 1]
    assert curves.bin_mean[:, 0].tolist() == [0.0, 0.0]
    assert torch.all(torch.isnan(curves.bin_mean[:, 1:]))


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize("values", [
    {"pairs": 0}, {"step": 0.0}, {"step": -1.0}, {"step": float("nan")}, {"bins": 0},
    {"kinds": ()}, {"kinds": ("within", "across")}, {"kinds": ("within", "within")},
])
def test_config_rejects_bad_values(values: dict) -> None:
    with pytest.raises(ConfigError):
        InterpolationProbe.Config(**values)


def test_config_from_strings() -> None:
    cfg = build_config(InterpolationProbe.Config, {"pairs": "10", "kinds": "between"},
                       "interpolation")
    assert cfg.pairs == 10 and cfg.kinds == ("between",)


def test_prepare_draws_distinct_pairs(data: RunData) -> None:
    cfg = InterpolationProbe.Config(pairs=30)
    inputs = InterpolationProbe(cfg).prepare(context(data, seed=1))
    y = data.y_test.numpy()
    within, between = inputs["within/pairs"], inputs["between/pairs"]
    assert within.dtype == np.int64 and within.shape == (10 * 30, 2)
    assert between.shape == (45 * 30, 2)
    assert np.all(y[within[:, 0]] == y[within[:, 1]]) and np.all(within[:, 0] != within[:, 1])
    assert len({tuple(sorted(p)) for p in within.tolist()}) == len(within)
    assert np.all(y[between[:, 0]] != y[between[:, 1]])
    assert len({tuple(sorted(p)) for p in between.tolist()}) == len(between)
    for c in range(10):
        assert np.sum(y[within[:, 0]] == c) == 30
    lower_first = 0
    for a, b in itertools.combinations(range(10), 2):
        ab = np.sum((y[between[:, 0]] == a) & (y[between[:, 1]] == b))
        ba = np.sum((y[between[:, 0]] == b) & (y[between[:, 1]] == a))
        assert ab + ba == 30
        lower_first += ab
    # the start class is random (version 1 always started from the lower class): about half
    assert 0.4 < lower_first / len(between) < 0.6


def test_prepare_is_deterministic(data: RunData) -> None:
    cfg = InterpolationProbe.Config(pairs=20)
    a = InterpolationProbe(cfg).prepare(context(data, seed=1))
    b = InterpolationProbe(cfg).prepare(context(data, seed=1))
    c = InterpolationProbe(cfg).prepare(context(data, seed=2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])
    only = InterpolationProbe(InterpolationProbe.Config(pairs=20, kinds=("between",)))
    np.testing.assert_array_equal(only.prepare(context(data, seed=1))["between/pairs"],
                                  a["between/pairs"])


def test_small_class_pools() -> None:
    small = make_data(drop_class=9)
    with pytest.warns(UserWarning, match="class 9 has 1 test image"):
        inputs = InterpolationProbe(InterpolationProbe.Config(pairs=5000)).prepare(context(small))
    y = small.y_test.numpy()
    assert not np.any(y[inputs["within/pairs"]] == 9) and not np.any(y[inputs["between/pairs"]] == 9)
    counts = np.bincount(y, minlength=10)
    # Fewer possible pairs than asked: all of them.
    assert len(inputs["within/pairs"]) == sum(n * (n - 1) // 2 for n in counts[:9])
    assert len(inputs["between/pairs"]) == sum(counts[a] * counts[b]
                                               for a, b in itertools.combinations(range(9), 2))


def test_probe_outputs_and_values(data: RunData, trained: nn.Module, device: str) -> None:
    cfg = InterpolationProbe.Config(pairs=8, bins=6, step=1.5)
    probe = InterpolationProbe(cfg)
    ctx = context(data, seed=4, batch_size=64, device=device)
    inputs = probe.prepare(ctx)
    outputs = probe.outputs()
    assert outputs.coords["lambda"] == pytest.approx(lambda_centres(6))
    fast = moved(trained, device)
    out = outputs.check(probe(fast, ctx), "interpolation")
    assert out["cdn"].shape == (2, 6) and out["paths"].shape == (2,) and out["tv"].shape == (2,)
    for row, kind in enumerate(cfg.kinds):
        pairs = torch.from_numpy(inputs[f"{kind}/pairs"])
        # the functional on the CPU is the reference
        want = interpolate(trained, data.x_test, pairs, labels=data.y_test, step=1.5, bins=6)
        assert 0 < out["paths"][row] <= len(pairs)
        assert out["paths"][row] == want.paths
        np.testing.assert_allclose(out["cdn"][row], want.cdn.numpy(), rtol=tolerance(device, 1e-6))
        assert out["tv"][row] == pytest.approx(want.tv.item(), rel=tolerance(device, 1e-6))
    # Between-class paths cross a decision boundary: they change more than within-class ones.
    assert out["cdn"][1, -1] > out["cdn"][0, -1]
    again = outputs.check(probe(fast, ctx), "interpolation")
    assert_same(device, again["cdn"], out["cdn"])


def test_no_pairs_gives_nan(data: RunData, trained: nn.Module, device: str) -> None:
    dev = torch.device(device)
    res = interpolate(moved(trained, device), data.x_test.to(dev),
                      torch.zeros((0, 2), dtype=torch.long, device=dev), labels=data.y_test.to(dev),
                      bins=4)
    assert res.paths == 0 and res.cdn.shape == (4,) and torch.all(torch.isnan(res.cdn))
    assert math.isnan(res.tv.item())


def test_step_auto_scales_with_the_image_norm(data: RunData) -> None:
    from ckpt_analyzer.probes.scale import CIFAR10_RMS_NORM_INPUT, rms_norm

    probe = InterpolationProbe(InterpolationProbe.Config(pairs=2))
    assert probe.config.step == "auto"
    probe.prepare(context(data))
    step = probe.resolved_config().step
    want = 1.0 * rms_norm(data, "input") / CIFAR10_RMS_NORM_INPUT
    assert step == pytest.approx(want, rel=5e-3) and step == float(f"{want:.3g}")
    assert 0.1 < step < 0.2  # 8x8 digits normalized per channel: sqrt(64 / 3072) = 0.144
    # CIFAR-10-sized normalized images (3x32x32, unit variance): the authors' 1.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 32, 32, generator=g)
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    cifar = dataclasses.replace(data, x_train=x, mean=torch.zeros(3), std=torch.ones(3))
    big = InterpolationProbe(InterpolationProbe.Config(pairs=2))
    big.prepare(context(cifar))
    assert big.resolved_config().step == 1.0
    explicit = InterpolationProbe(InterpolationProbe.Config(pairs=2, step=1.0))
    explicit.prepare(context(data))
    assert explicit.resolved_config().step == 1.0
    cfg = build_config(InterpolationProbe.Config, {"step": "auto"}, "interpolation")
    assert cfg.step == "auto"
    assert build_config(InterpolationProbe.Config, {"step": "0.25"}, "interpolation").step == 0.25
    with pytest.raises(ConfigError, match="step"):
        build_config(InterpolationProbe.Config, {"step": "big"}, "interpolation")
