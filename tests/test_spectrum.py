"""The spectrum maths (Zhang & Wu eq. 1-3) and the ``spectrum`` probe."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_same, tolerance
from torch import nn

from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.functional.spectrum import (
    line_logits,
    line_offsets,
    line_spectrum,
    log_ratio,
    spectrum,
)
from ckpt_analyzer.probes.base import Context, RunData
from ckpt_analyzer.probes.spectrum import SpectrumProbe

torch.set_num_threads(1)


# --------------------------------------------------------------------------- fixtures


def make_data(noise: float = 0.1, seed: int = 0) -> RunData:
    """Digits, stratified 75/25 split, normalized with the training mean/std, some label noise."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    mean, std = float(xtr.mean()), float(xtr.std())
    rng = np.random.default_rng(seed)
    noisy = np.zeros(len(ytr), dtype=bool)
    noisy[rng.choice(len(ytr), int(noise * len(ytr)), replace=False)] = True
    trained = ytr.copy()
    trained[noisy] = (ytr[noisy] + rng.integers(1, 10, noisy.sum())) % 10
    return RunData(
        x_train=torch.from_numpy((xtr - mean) / std),
        y_train=torch.from_numpy(trained).long(),
        clean_labels=torch.from_numpy(ytr).long(),
        noisy_mask=torch.from_numpy(noisy),
        x_test=torch.from_numpy((xte - mean) / std),
        y_test=torch.from_numpy(yte).long(),
        mean=torch.tensor([mean]),
        std=torch.tensor([std]),
        num_classes=10,
    )


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)).eval()


@pytest.fixture(scope="module")
def data() -> RunData:
    return make_data()


def context(data: RunData, seed: int = 0, batch_size: int = 256, device: str = "cpu") -> Context:
    dev = torch.device(device)
    return Context(data=data.to(dev), device=dev, batch_size=batch_size, seed=seed)


def moved(model: nn.Module, device: str) -> nn.Module:
    """A copy of ``model`` on ``device`` (the CPU original stays for the slow reference)."""
    return copy.deepcopy(model).to(torch.device(device))


def unit_directions(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return v / v.flatten(1).norm(dim=1).view(-1, *([1] * (len(shape) - 1)))


# --------------------------------------------------------------------------- slow references


def slow_logits(model: nn.Module, x: torch.Tensor, v: torch.Tensor, n: int, h: float,
                scale: torch.Tensor | None = None) -> np.ndarray:
    """Loop over points and offsets, one image per forward pass (eq. 1)."""
    out = np.zeros((len(x), n, 10))
    for p in range(len(x)):
        for i in range(n):
            t = -h + 2 * h * i / n
            step = v[p] if scale is None else v[p] * scale.view(-1, 1, 1)
            with torch.no_grad():
                out[p, i] = model((x[p] + t * step).unsqueeze(0))[0].double().numpy()
    return out


def slow_spectrum(logits: np.ndarray) -> np.ndarray:
    """eq. (2) with numpy's unnormalized rfft, one point at a time."""
    mags = [np.abs(np.fft.rfft(logits[p], axis=0)) for p in range(len(logits))]
    return np.mean(mags, axis=(0, 2))


# --------------------------------------------------------------------------- functional


def test_line_offsets_exclude_the_end() -> None:
    t = line_offsets(8, 0.5, dtype=torch.float64).numpy()
    np.testing.assert_allclose(t, [-0.5 + i / 8 for i in range(8)])
    assert t[0] == -0.5 and t[-1] < 0.5


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_line_logits_match_a_loop(data: RunData, batch_size: int, device: str) -> None:
    model = tiny_model()
    x = data.x_train[:5]
    v = unit_directions(tuple(x.shape), 1)
    scale = torch.tensor([2.5])
    dev = torch.device(device)
    got = line_logits(moved(model, device), x.to(dev), v.to(dev), n=12, h=0.7,
                      batch_size=batch_size, scale=scale.to(dev))
    assert got.shape == (5, 12, 10) and got.device.type == dev.type
    np.testing.assert_allclose(got.cpu().double().numpy(), slow_logits(model, x, v, 12, 0.7, scale),
                               rtol=tolerance(device, 1e-5), atol=tolerance(device, 1e-6, 1e-5))


def test_line_spectrum_matches_numpy_reference(data: RunData, device: str) -> None:
    model = tiny_model(1)
    x = data.x_train[10:16]
    v = unit_directions(tuple(x.shape), 2)
    n, h = 32, 0.5
    want = slow_spectrum(slow_logits(model, x, v, n, h))
    dev = torch.device(device)
    a = line_spectrum(moved(model, device), x.to(dev), v.to(dev), n=n, h=h, batch_size=50)
    got = a.cpu().numpy()
    assert got.shape == (n // 2 + 1,)
    np.testing.assert_allclose(got, want, rtol=tolerance(device, 1e-5))
    np.testing.assert_allclose(log_ratio(a).cpu().numpy(), np.log(want / want[0]),
                               rtol=tolerance(device, 1e-5), atol=tolerance(device, 1e-7))


def test_spectrum_of_logits_is_numpy_rfft(device: str) -> None:
    logits = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0))
    want = np.abs(np.fft.rfft(logits.numpy().astype(np.float64), axis=1))
    got = spectrum(logits.to(torch.device(device)))
    assert got.shape == (3, 6, 4)
    # float64 FFT: another library's (cuFFT) rounding is ~1e-15, not float32's 1e-4
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=tolerance(device, 1e-10, 1e-9))


def test_chunking_does_not_change_the_spectrum(data: RunData, device: str) -> None:
    # In float64 so that only the stream's index arithmetic could make chunks differ (on a GPU,
    # float64 kernels chosen by batch size differ in the last bits only: ~1e-15).
    dev = torch.device(device)
    model = tiny_model(2).double().to(dev)
    x = data.x_test[:9].double().to(dev)
    v = unit_directions(tuple(x.shape), 3).double().to(dev)
    runs = [line_logits(model, x, v, n=16, h=0.5, batch_size=b).cpu() for b in (1, 7, 1000)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.numpy(), runs[0].numpy(), rtol=1e-12, atol=1e-12)
    small = line_spectrum(model, x, v, n=16, h=0.5, batch_size=7)
    large = line_spectrum(model, x, v, n=16, h=0.5, batch_size=1000)
    np.testing.assert_allclose(small.cpu().numpy(), large.cpu().numpy(), rtol=1e-10)


class SineAlongU(nn.Module):
    """Logits ``amp_c * sin(2 pi j (<x, u> - <x0, u> + h) / (2h))``: frequency j over the window."""

    def __init__(self, u: torch.Tensor, x0: torch.Tensor, j: int, h: float) -> None:
        super().__init__()
        self.j, self.h = j, h
        self.register_buffer("u", u.flatten())  # buffers: .to(device) moves them
        self.register_buffer("amp", torch.tensor([1.0, 0.5, 2.0]))
        self.offset = float(x0.flatten() @ self.u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).double() @ self.u.double() - self.offset
        wave = torch.sin(2 * torch.pi * self.j * (s + self.h) / (2 * self.h))
        return (wave[:, None] * self.amp.double()).float()


@pytest.mark.parametrize("j", [1, 5, 17])
def test_pure_sine_peaks_at_its_frequency(data: RunData, j: int, device: str) -> None:
    n, h = 64, 0.5
    dev = torch.device(device)
    u = unit_directions((1, 1, 8, 8), 4)[0]
    x = data.x_train[:4]
    model = SineAlongU(u, x[0], j, h).to(dev)
    a = line_spectrum(model, x.to(dev), u.expand_as(x).contiguous().to(dev), n=n, h=h,
                      batch_size=100).cpu()
    assert int(a.argmax()) == j
    # |rfft| of an amplitude-1 sine with j whole periods is n/2; mean amplitude is 3.5/3.
    assert a[j].item() == pytest.approx(n / 2 * 3.5 / 3, rel=tolerance(device, 1e-4))
    others = torch.cat([a[:j], a[j + 1:]])
    assert float(others.max()) < 1e-3 * float(a[j])


class Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_constant_model_has_only_the_zero_frequency(data: RunData, device: str) -> None:
    value = torch.tensor([[1.0, -2.0, 0.5]])
    x = data.x_train[:3]
    dev = torch.device(device)
    a = line_spectrum(Constant(value).to(dev), x.to(dev),
                      unit_directions(tuple(x.shape), 5).to(dev), n=16, h=0.5).cpu()
    assert a[0].item() == pytest.approx(16 * float(value.abs().mean()))
    assert torch.all(a[1:] < 1e-12)
    r = log_ratio(a)
    assert r[0] == 0 and torch.all(r[1:] < -20)


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize("values", [
    {"n": 1}, {"h": 0}, {"h": -1.0}, {"points": 0}, {"subsets": ()}, {"subsets": ("train", "foo")},
    {"subsets": ("train", "train")}, {"space": "latent"},
])
def test_config_rejects_bad_values(values: dict) -> None:
    with pytest.raises(ConfigError):
        SpectrumProbe.Config(**values)


def test_config_from_strings() -> None:
    cfg = build_config(SpectrumProbe.Config, {"n": "64", "subsets": "train,test", "h": "0.25"},
                       "spectrum")
    assert cfg.n == 64 and cfg.subsets == ("train", "test") and cfg.h == 0.25
    with pytest.raises(ConfigError):
        build_config(SpectrumProbe.Config, {"n": "1"}, "spectrum")


def test_prepare_is_deterministic_and_well_formed(data: RunData) -> None:
    cfg = SpectrumProbe.Config(points=40, subsets=("train", "noisy", "test"))
    a = SpectrumProbe(cfg).prepare(context(data, seed=1))
    b = SpectrumProbe(cfg).prepare(context(data, seed=1))
    c = SpectrumProbe(cfg).prepare(context(data, seed=2))
    assert set(a) == {f"{s}/{k}" for s in cfg.subsets for k in ("index", "direction")}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train/index"], c["train/index"])
    assert not np.array_equal(a["train/direction"], c["train/direction"])
    noisy_positions = set(data.index("noisy").tolist())
    for s in cfg.subsets:
        idx, direction = a[f"{s}/index"], a[f"{s}/direction"]
        assert idx.dtype == np.int64 and direction.dtype == np.float32
        assert direction.shape == (40, 1, 8, 8)
        assert np.all(np.diff(idx) > 0)  # sorted, without replacement
        np.testing.assert_allclose(np.linalg.norm(direction.reshape(40, -1), axis=1), 1, rtol=1e-6)
    assert set(a["noisy/index"].tolist()) <= noisy_positions
    assert a["test/index"].max() < len(data.y_test)
    # A subset's points do not depend on which other subsets are measured.
    only_train = SpectrumProbe(SpectrumProbe.Config(points=40)).prepare(context(data, seed=1))
    np.testing.assert_array_equal(only_train["train/index"], a["train/index"])


def test_small_subset_uses_all_points(data: RunData) -> None:
    n_noisy = int(data.noisy_mask.sum())
    probe = SpectrumProbe(SpectrumProbe.Config(points=n_noisy + 50, subsets=("noisy",), n=8))
    with pytest.warns(UserWarning, match="fewer than"):
        inputs = probe.prepare(context(data))
    np.testing.assert_array_equal(inputs["noisy/index"], data.index("noisy").numpy())


def test_probe_measures_pixel_space_lines(data: RunData, device: str) -> None:
    cfg = SpectrumProbe.Config(points=5, n=16, h=0.5, subsets=("train", "test"))
    probe = SpectrumProbe(cfg)
    ctx = context(data, seed=3, batch_size=37, device=device)
    inputs = probe.prepare(ctx)
    model = tiny_model(3)  # the slow reference's, on the CPU
    fast = moved(model, device)
    out = probe.outputs().check(probe(fast, ctx), "spectrum")
    assert out["A"].shape == (2, 9)
    for row, s in enumerate(cfg.subsets):
        split = data.x_test if s == "test" else data.x_train
        x = split[torch.from_numpy(inputs[f"{s}/index"])]
        v = torch.from_numpy(inputs[f"{s}/direction"])
        # Explicitly through pixel space: normalize(denormalize(x) + t v).
        logits = np.zeros((len(x), 16, 10))
        for p in range(len(x)):
            for i in range(16):
                t = -0.5 + i / 16
                img = data.to_model(data.to_pixel(x[p:p + 1]) + t * v[p:p + 1])
                with torch.no_grad():
                    logits[p, i] = model(img)[0].double().numpy()
        want = slow_spectrum(logits)
        np.testing.assert_allclose(out["A"][row], want, rtol=tolerance(device, 1e-5))
        np.testing.assert_allclose(out["R"][row], np.log(want / want[0]),
                                   rtol=tolerance(device, 1e-5), atol=tolerance(device, 1e-7))
    again = probe.outputs().check(probe(fast, ctx), "spectrum")
    assert_same(device, again["A"], out["A"])


def test_probe_input_space_and_empty_subset(device: str) -> None:
    clean = make_data(noise=0.0)
    cfg = SpectrumProbe.Config(points=4, n=8, h=0.5, subsets=("noisy", "clean"), space="input")
    probe = SpectrumProbe(cfg)
    ctx = context(clean, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = probe.prepare(ctx)
    assert inputs["noisy/index"].shape == (0,) and inputs["noisy/direction"].shape == (0, 1, 8, 8)
    model = tiny_model(4)
    out = probe.outputs().check(probe(moved(model, device), ctx), "spectrum")
    assert np.all(np.isnan(out["A"][0])) and np.all(np.isnan(out["R"][0]))
    x = clean.x_train[torch.from_numpy(inputs["clean/index"])]
    v = torch.from_numpy(inputs["clean/direction"])
    want = slow_spectrum(slow_logits(model, x, v, 8, 0.5))  # no pixel scaling
    np.testing.assert_allclose(out["A"][1], want, rtol=tolerance(device, 1e-5))


def test_probe_is_picklable_after_prepare(data: RunData, device: str) -> None:
    import pickle

    probe = SpectrumProbe(SpectrumProbe.Config(points=3, n=8))
    ctx = context(data, device=device)
    probe.prepare(ctx)
    clone = pickle.loads(pickle.dumps(probe))
    model = moved(tiny_model(5), device)
    assert_same(device, clone(model, ctx)["A"], probe(model, ctx)["A"])
    assert dataclasses.asdict(clone.config) == dataclasses.asdict(probe.config)


def cifar_like(n: int = 64, seed: int = 0) -> RunData:
    """3x32x32 pixels with exactly CIFAR-10's published per-channel mean and std."""
    from ckpt_analyzer.probes.scale import CIFAR10_MEAN, CIFAR10_STD

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    z = (z - z.mean(dim=(0, 2, 3), keepdim=True)) / z.std(dim=(0, 2, 3), keepdim=True,
                                                          correction=0)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    y = torch.arange(n) % 10
    return RunData(x_train=z.float(), y_train=y, clean_labels=y,
                   noisy_mask=torch.zeros(n, dtype=torch.bool), x_test=z[:4].float(),
                   y_test=y[:4], mean=mean, std=std, num_classes=10)


def test_image_norm_is_the_same_on_every_device(data: RunData, device: str) -> None:
    """The norm behind ``auto`` (stored in the cube's config, compared on resume) is computed
    in float64 on the CPU: data on any device gives the same bits; checked against a loop."""
    from ckpt_analyzer.probes import scale

    for space in ("pixel", "input"):
        here = scale.rms_norm(data, space)
        assert scale.rms_norm(data.to(torch.device(device)), space) == here
        total = 0.0
        for x in data.x_train.double():  # one image at a time, the obvious way
            if space == "pixel":
                x = x * data.std.double().view(-1, 1, 1) + data.mean.double().view(-1, 1, 1)
            total += float((x ** 2).sum())
        assert here == pytest.approx(math.sqrt(total / len(data.x_train)), rel=1e-12)


def test_h_auto_scales_with_the_image_norm(data: RunData) -> None:
    from ckpt_analyzer.data.vision import CIFAR10_MEAN, CIFAR10_STD
    from ckpt_analyzer.probes import scale

    # the constants equal the statistics the cifar10 dataset normalizes with
    assert (scale.CIFAR10_MEAN, scale.CIFAR10_STD) == (CIFAR10_MEAN, CIFAR10_STD)
    assert scale.CIFAR10_RMS_NORM_PIXEL == pytest.approx(29.7116, abs=1e-4)
    assert SpectrumProbe.Config().h == "auto"
    resolved = {}
    for space in ("pixel", "input"):
        probe = SpectrumProbe(SpectrumProbe.Config(points=3, n=8, space=space))
        with pytest.raises(RuntimeError, match="prepare"):
            probe.resolved_config()
        probe.prepare(context(data))
        h = probe.resolved_config().h
        ref = (scale.CIFAR10_RMS_NORM_PIXEL if space == "pixel"
               else scale.CIFAR10_RMS_NORM_INPUT)
        assert h == float(f"{0.5 * scale.rms_norm(data, space) / ref:.3g}")
        resolved[space] = h
        cifar = SpectrumProbe(SpectrumProbe.Config(points=3, n=8, space=space))
        cifar.prepare(context(cifar_like()))
        assert cifar.resolved_config().h == 0.5  # the authors' value on CIFAR-10
    # digits: ||x|| ~ 3.9 in pixels (vs 29.7), 8 in normalized inputs (vs 55.4)
    assert 0.06 < resolved["pixel"] < 0.07 and 0.065 < resolved["input"] < 0.08
    explicit = SpectrumProbe(SpectrumProbe.Config(points=3, n=8, h=0.5))
    explicit.prepare(context(data))
    assert explicit.resolved_config().h == 0.5
    assert build_config(SpectrumProbe.Config, {"h": "auto"}, "spectrum").h == "auto"
    with pytest.raises(ConfigError, match="spectrum.h"):
        build_config(SpectrumProbe.Config, {"h": "wide"}, "spectrum")


def test_h_auto_measures_with_the_resolved_value(data: RunData, device: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(torch.device(device))
    ctx = context(data, device=device)
    auto = SpectrumProbe(SpectrumProbe.Config(points=5, n=8))
    auto.prepare(ctx)
    same = SpectrumProbe(auto.resolved_config())
    same.prepare(ctx)
    assert_same(device, auto(model, ctx)["A"], same(model, ctx)["A"])
