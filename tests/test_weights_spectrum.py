"""Weight spectra: WeightWatcher's layer matrices, scale metrics, and the Clauset power-law
fit (against a brute-force reference, and recovering α on synthetic power-law spectra)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import on_device
from test_hessian import digits_ctx, snapshot
from torch import nn

from ckpt_analyzer.config import ConfigError, build_config
from ckpt_analyzer.functional.weights_spectrum import (
    esd,
    fit_power_law,
    layer_matrix,
    log_histogram,
    scale_metrics,
)
from ckpt_analyzer.probes.weights_spectrum import WeightsSpectrumProbe

torch.set_num_threads(1)


def power_law_matrix(alpha: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An n×n matrix whose WᵀW has n eigenvalues drawn from p(λ) ∝ λ^-α, λ ≥ 1."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    lam = (1 - u) ** (-1 / (alpha - 1))
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q1 @ torch.diag(lam.sqrt()) @ q2.T, lam


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.0])
def test_alpha_recovered_on_synthetic_power_law_spectra(alpha: float, device: str) -> None:
    w, lam = power_law_matrix(alpha, 800, seed=int(alpha * 10))
    # the SVD on the device (float64: its rounding stays far below 1e-8); the fit on the CPU,
    # as the probe does (fit_power_law mixes CPU index tensors with its input's device)
    ev = esd(w.to(torch.device(device))).cpu()
    assert torch.allclose(ev, torch.sort(lam).values, rtol=1e-8)
    est, xmin, dist, n_tail, reason = fit_power_law(ev)
    assert reason == "" and n_tail >= 10 and 0 < dist < 0.1
    assert abs(est - alpha) < 0.1, (est, alpha)


def brute_force_fit(x: np.ndarray, min_tail: int) -> tuple[float, float, float]:
    """Clauset et al. (2009) §3.3 by the book: every x_min, MLE, KS distance, smallest wins."""
    x = np.sort(x)
    best = (math.inf, math.nan, math.nan)
    for xmin in np.unique(x):
        tail = x[x >= xmin]
        if len(tail) < min_tail:
            continue
        a = 1 + len(tail) / np.sum(np.log(tail / xmin))
        cdf = 1 - (tail / xmin) ** (1 - a)
        emp_hi = np.arange(1, len(tail) + 1) / len(tail)
        emp_lo = np.arange(0, len(tail)) / len(tail)
        d = max(np.max(np.abs(cdf - emp_hi)), np.max(np.abs(cdf - emp_lo)))
        if d < best[0]:
            best = (d, a, xmin)
    return best[1], best[2], best[0]


def test_fit_matches_brute_force_reference(device: str) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.1, 1.0, 60), (1 - rng.random(90)) ** (-1 / 1.8)])
    a, xmin, d = brute_force_fit(x, 5)
    # eigenvalues on any device: the fit itself runs on the CPU
    est, exmin, ed, n_tail, _ = fit_power_law(torch.tensor(x).to(torch.device(device)),
                                              min_tail=5)
    assert est == pytest.approx(a, rel=1e-10) and exmin == xmin and ed == pytest.approx(d)
    assert n_tail == int((x >= xmin).sum())


def test_fit_reports_why_it_cannot_fit() -> None:
    alpha, *_, n_tail, reason = fit_power_law(torch.rand(5), min_tail=10)
    assert math.isnan(alpha) and n_tail == 0 and "fewer than" in reason
    alpha, *_, reason = fit_power_law(torch.ones(30), min_tail=10)
    assert math.isnan(alpha) and "degenerate" in reason


def test_conv_layer_matrix_stacks_kernel_slices_like_weightwatcher(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    dev = torch.device(device)  # pure data movement: exact on every device
    w = torch.randn(4, 6, 3, 3, generator=g).to(dev)  # out < in: each slice turned to 6 × 4
    m = layer_matrix(w)
    assert m.shape == (54, 4)
    assert torch.equal(m[:6], w[:, :, 0, 0].T) and torch.equal(m[6:12], w[:, :, 0, 1].T)
    w2 = torch.randn(8, 3, 3, 3, generator=g).to(dev)  # out > in: slices as they are
    assert torch.equal(layer_matrix(w2)[8:16], w2[:, :, 0, 1])
    lin = torch.randn(5, 7, generator=g).to(dev)
    assert layer_matrix(lin) is lin
    with pytest.raises(ValueError):
        layer_matrix(torch.randn(3))


def test_scale_metrics_and_histogram(device: str) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 12, generator=g, dtype=torch.float64)
    ev = esd(w.to(torch.device(device)))  # on the device, float64
    assert len(ev) == 12
    sn, sr = scale_metrics(ev)
    assert sn == pytest.approx(float(torch.linalg.matrix_norm(w, 2)) ** 2)
    assert sr == pytest.approx(float(torch.linalg.matrix_norm(w) ** 2 / torch.linalg.matrix_norm(w, 2) ** 2))
    assert all(math.isnan(v) for v in scale_metrics(torch.zeros(3)))
    edges = torch.linspace(-1, 1, 5)
    h = log_histogram(torch.tensor([1e-5, 0.2, 1.0, 3.0, 1e6]).to(ev.device), edges)
    # log10: -5 and -0.7 | none | 0 and 0.48 | 6 (clipped); on the eigenvalues' device
    assert h.device == ev.device and h.tolist() == pytest.approx([0.4, 0.0, 0.4, 0.2])
    assert log_histogram(ev[:0], edges).device == ev.device


def test_probe_small_layers_get_nan_alpha_and_model_is_untouched(device: str) -> None:
    ctx = on_device(digits_ctx(), device)
    probe = WeightsSpectrumProbe(WeightsSpectrumProbe.Config(
        conv="stacked", fit="strict", min_evals=8, min_tail=4))
    with pytest.warns(UserWarning, match="too small for a power-law fit"):
        assert probe.prepare(ctx) == {}
    outs = probe.outputs()
    assert outs.coords["layer"] == ["0", "3", "7", "11", "17"]
    model = ctx.build_model(2)  # on the device
    before = snapshot(model)
    res = outs.check(probe(model, ctx), "weights_spectrum")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # width 2: eigenvalue counts 1, 2, 4, 8 (convs) and 10 (linear 10 × 16)
    assert res["num_evals"].tolist() == [1, 2, 4, 8, 10]
    assert np.isnan(res["alpha"][:3]).all() and np.isfinite(res["alpha"][3:]).all()
    assert res["fit_status"].tolist() == [1, 1, 1, 0, 0]  # too_few_evals, ok
    assert np.allclose(res["histogram"].sum(axis=1), 1.0)
    w = model[11].weight.detach().cpu()  # the reference on the CPU (float64 on both sides)
    assert res["spectral_norm"][3] == pytest.approx(
        float(torch.linalg.matrix_norm(layer_matrix(w).double(), 2)) ** 2)


def test_probe_rejects_other_layers_and_bad_config() -> None:
    ctx = digits_ctx()
    probe = WeightsSpectrumProbe()
    probe._layers = ["0"]
    with pytest.raises(Exception, match="differ"):
        probe(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), ctx)
    with pytest.raises(ConfigError, match="min_tail"):
        build_config(WeightsSpectrumProbe.Config,
                     {"fit": "strict", "min_evals": "5", "min_tail": "8"}, "weights_spectrum")
    with pytest.raises(ConfigError, match="fit=strict only"):
        build_config(WeightsSpectrumProbe.Config, {"min_tail": "8"}, "weights_spectrum")
    with pytest.raises(ConfigError, match="conv"):
        build_config(WeightsSpectrumProbe.Config, {"conv": "fft"}, "weights_spectrum")
    with pytest.raises(ConfigError, match="fit"):
        build_config(WeightsSpectrumProbe.Config, {"fit": "powerlaw"}, "weights_spectrum")
    with pytest.raises(ConfigError, match="hist_min"):
        build_config(WeightsSpectrumProbe.Config, {"hist_min": "3", "hist_max": "1"},
                     "weights_spectrum")
