"""Radial / directional wave label smoothing (Fridovich-Keil et al. §3.1, authors' code)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckpt_analyzer.functional.smoothing import (
    LabelSmoothing,
    check_smoothing,
    fourier_direction,
    mean_norm,
    smooth_targets,
    smoothing_wave,
    soft_cross_entropy,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x = (x - x.mean()) / x.std()
    return torch.from_numpy(x[:300]), torch.from_numpy(y[:300]).long()


# --------------------------------------------------------------------------- slow references


def authors_smoothing(images: np.ndarray, labels: np.ndarray, frequency: float,
                      amplitude: float, num_classes: int, phase: float | None = None,
                      direction: np.ndarray | None = None, normalize: bool = True) -> np.ndarray:
    """``add_radial_noise`` / ``add_sinusoidal_noise`` of the authors' code, one sample at a time."""
    onehot = np.eye(num_classes)[labels]
    waves = []
    for img in images.astype(np.float64):
        if direction is None:
            waves.append(1.0 + math.sin(2 * math.pi * frequency
                                        * (np.linalg.norm(img.ravel()) - phase)))
        else:
            v = direction.ravel() / np.linalg.norm(direction.ravel())
            waves.append(1.0 + math.sin(2 * math.pi * frequency * float(img.ravel() @ v)))
    a = amplitude
    if normalize:
        mean = sum(waves) / len(waves)
        a = 0.0 if mean == 0 else amplitude / mean
    out = np.zeros_like(onehot)
    for b, w in enumerate(waves):
        r = a * w
        out[b] = onehot[b] * (1 - r) + r / num_classes
    return out


def authors_fourier_basis(i: int, j: int, height: int, width: int) -> np.ndarray:
    """``get_fourier_basis_image`` of the authors' code (one channel), index in fftshift order."""
    freq = np.zeros((height, width), dtype=np.complex128)
    dims = np.array([height, width])
    sym = np.where(dims % 2 == 0, np.mod(dims - np.array([i, j]), dims), dims - 1 - np.array([i, j]))
    if (sym[0], sym[1]) == (i, j):
        freq[i, j] = 1.0
    else:
        freq[i, j] = 0.5 + 0.5j
        freq[sym[0], sym[1]] = 0.5 - 0.5j
    return np.sqrt(height * width) * np.real(np.fft.ifft2(np.fft.ifftshift(freq)))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("frequency,amplitude", [(0.3, 0.2), (1.7, 0.9)])
def test_radial_matches_authors_code(digits: tuple[torch.Tensor, torch.Tensor], normalize: bool,
                                     frequency: float, amplitude: float) -> None:
    x, y = digits
    x, y = x[:64], y[:64]
    center = mean_norm(x)
    got = smooth_targets(x, y, 10, "radial", frequency, amplitude, center=center,
                         normalize=normalize)
    want = authors_smoothing(x.numpy(), y.numpy(), frequency, amplitude, 10, phase=center,
                             normalize=normalize)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_direction_matches_authors_code(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    x, y = x[:50], y[:50]
    v = fourier_direction((1, 2), (1, 8, 8)) * 3.0  # not unit: normalized inside, as theirs
    got = smooth_targets(x, y, 10, "direction", 0.8, 0.5, direction=v)
    want = authors_smoothing(x.numpy(), y.numpy(), 0.8, 0.5, 10, direction=v.numpy())
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_targets_sum_to_one_and_carry_the_asked_mass(
        digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    x = x.double()  # float64 targets: the checks below subtract nearly equal numbers
    targets = smooth_targets(x, y, 10, "radial", 0.5, 0.3, center=mean_norm(x))
    assert targets.dtype == torch.float64
    np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, rtol=1e-12)
    # r = (1 - y'_true) * C / (C - 1); normalized, its batch mean is the amplitude.
    r = (1 - targets[torch.arange(len(y)), y]) * 10 / 9
    assert r.mean().item() == pytest.approx(0.3, rel=1e-5)
    # Off-class entries are all r / C.
    off = targets.clone()
    off[torch.arange(len(y)), y] = float("nan")
    np.testing.assert_allclose(off.nan_to_num(0).sum(1).numpy(), (r * 9 / 10).numpy(), rtol=1e-9)
    assert torch.equal(smooth_targets(x.float(), y, 10, "radial", 0.5, 0.0, center=1.0),
                       F.one_hot(y, 10).float())


def test_wave_known_values() -> None:
    # ||x|| - c = 1 / (4 f) puts the sample on a crest: S = 1, w = 2.
    f, c = 0.25, 3.0
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0] = c + 1 / (4 * f)  # crest
    x[1, 0, 0, 0] = c  # node: S = 0
    s = smoothing_wave(x, "radial", f, center=c)
    np.testing.assert_allclose(s.numpy(), [1.0, 0.0], atol=1e-6)
    t = smooth_targets(x, torch.tensor([0, 1]), 4, "radial", f, 0.6, center=c, normalize=False)
    np.testing.assert_allclose(t[0].numpy(), [1 - 1.2 + 0.3, 0.3, 0.3, 0.3], atol=1e-6)
    np.testing.assert_allclose(t[1].numpy(), [0.15, 1 - 0.6 + 0.15, 0.15, 0.15], atol=1e-6)


def test_mean_norm_matches_numpy(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = digits
    want = np.mean([np.linalg.norm(img.ravel()) for img in x.double().numpy()])
    assert mean_norm(x, batch_size=7) == pytest.approx(want, rel=1e-10)


def test_fourier_direction_matches_authors_basis() -> None:
    h = w = 8
    for ky, kx in itertools.product(range(-4, 4), repeat=2):
        want = authors_fourier_basis(h // 2 + ky, w // 2 + kx, h, w)
        want = want / np.linalg.norm(want)
        got = fourier_direction((ky, kx), (1, h, w))[0].double().numpy()
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"k={(ky, kx)}")


def test_fourier_directions_form_an_orthonormal_basis() -> None:
    basis = torch.stack([fourier_direction((ky, kx), (3, 8, 8)).flatten().double()
                         for ky, kx in itertools.product(range(-4, 4), repeat=2)])
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(64), atol=1e-6)
    v = fourier_direction(2, (3, 8, 8))
    assert v.shape == (3, 8, 8) and torch.equal(v[0], v[2])
    assert fourier_direction(0, (1, 4, 4)).unique().numel() == 1


def test_soft_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    np.testing.assert_allclose(soft_cross_entropy(logits, F.one_hot(y, 5).float()).numpy(),
                               F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-6)
    targets = torch.softmax(torch.randn(6, 5, generator=g), 1)
    want = [-sum(targets[b, c].item() * math.log(torch.softmax(logits[b], 0)[c].item())
                 for c in range(5)) for b in range(6)]
    np.testing.assert_allclose(soft_cross_entropy(logits, targets).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("kind,frequency,amplitude", [
    ("radial", 0.0, 0.1), ("radial", -1.0, 0.1), ("radial", float("nan"), 0.1),
    ("radial", 0.1, -0.1), ("radial", 0.1, 1.1), ("wavy", 0.1, 0.1),
])
def test_bad_values_are_value_errors(kind: str, frequency: float, amplitude: float) -> None:
    with pytest.raises(ValueError):
        check_smoothing(kind, frequency, amplitude)
    with pytest.raises(ValueError):
        smooth_targets(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 3, kind, frequency,
                       amplitude, center=0.0)
    with pytest.raises(ValueError):
        LabelSmoothing(kind, frequency, amplitude, center=0.0)  # type: ignore[arg-type]


def test_label_smoothing_object(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    with pytest.raises(ValueError, match="center"):
        LabelSmoothing("radial", 0.1, 0.2)
    with pytest.raises(ValueError, match="direction"):
        LabelSmoothing("direction", 0.1, 0.2)
    ls = LabelSmoothing("radial", 0.4, 0.2, center=mean_norm(x))
    assert torch.equal(ls.targets(x, y, 10),
                       smooth_targets(x, y, 10, "radial", 0.4, 0.2, center=ls.center))
    with pytest.raises(ValueError, match="values"):
        smooth_targets(x, y, 10, "direction", 0.4, 0.2, direction=torch.ones(3))


def test_trainer_side_and_manifest_round_trip(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    import json
    from types import SimpleNamespace

    from ckpt_analyzer.functional.smoothing import LabelSmoother

    x, y = digits
    cfg = SimpleNamespace(label_smoothing="radial", ls_frequency=0.4, ls_amplitude=0.3, ls_index=2)
    radial = LabelSmoother.for_training(cfg, x, 10)
    assert radial.center == pytest.approx(mean_norm(x), rel=1e-9)
    cfg.label_smoothing = "direction"
    direction = LabelSmoother.for_training(cfg, x, 10)
    assert torch.equal(direction.direction, fourier_direction(2, (1, 8, 8)))
    logits = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(1))
    for ls in (radial, direction):
        manifest = json.loads(json.dumps(ls.manifest))  # as stored in run.json
        back = LabelSmoothing.from_manifest(manifest, (1, 8, 8))
        assert torch.equal(back.targets(x, y, 10), ls.targets(x, y, 10))
        want = soft_cross_entropy(logits, ls.targets(x, y, 10)).mean()
        assert ls.loss(logits, x, y).item() == pytest.approx(want.item(), rel=1e-6)


def test_smoothed_test_loss_matches_per_batch_reference(
        digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    from ckpt_analyzer.functional.smoothing import smoothed_test_loss

    x, y = digits
    logits = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(2)).double()
    center = mean_norm(x)
    manifest = {"kind": "radial", "frequency": 0.6, "amplitude": 0.4, "center": center}
    losses = []
    for s in range(0, len(x), 256):  # the authors normalize per evaluation batch of 256
        t = authors_smoothing(x[s:s + 256].numpy(), y[s:s + 256].numpy(), 0.6, 0.4, 10,
                              phase=center)
        logp = torch.log_softmax(logits[s:s + 256], 1).numpy()
        losses.extend(-(t * logp).sum(1))
    assert smoothed_test_loss(logits, x, y, 10, manifest) == pytest.approx(np.mean(losses),
                                                                          rel=1e-6)
    # Amplitude 0: the smoothed loss is the clean loss (no effective noise fitting).
    clean = F.cross_entropy(logits, y).item()
    zero = dict(manifest, amplitude=0.0)
    assert smoothed_test_loss(logits, x, y, 10, zero) == pytest.approx(clean, rel=1e-9)
