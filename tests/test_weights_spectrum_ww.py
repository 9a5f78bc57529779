"""weights_spectrum's default convention is WeightWatcher 0.7.7's: the pooled kernel-position
slices of a conv weight (halved) and WWFit's power-law fit. Against a slow numpy reference of
each, known answers (orthogonal slices, exact power-law samples), and weightwatcher itself on
every layer of an mcnn and a preact_resnet18 (skipped when weightwatcher is not installed:
``pip install weightwatcher==0.7.7``, the ``dev`` extra)."""

from __future__ import annotations

import copy
import io
import logging
import math
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from torch import nn

from ckpt_analyzer.functional.weights_spectrum import (
    fit_power_law_ww,
    layer_esd,
    layer_slices,
    num_evals,
    scale_metrics,
)
from ckpt_analyzer.models.mcnn import mcnn
from ckpt_analyzer.models.preact_resnet import preact_resnet18
from ckpt_analyzer.probes.base import Context
from ckpt_analyzer.probes.weights_spectrum import (
    FIT_FAILED,
    FIT_OK,
    FIT_TOO_FEW_EVALS,
    WeightsSpectrumProbe,
)

torch.set_num_threads(1)


def weights_ctx(build: Callable[[int], nn.Module], width: int) -> Context:
    """A context with the model factory only: weights_spectrum reads no data."""
    return Context(data=None, device=torch.device("cpu"), batch_size=1,  # type: ignore[arg-type]
                   widths=(width,), build_model=build)


def slices_reference(w: np.ndarray) -> np.ndarray:
    """The slice convention by the book: for each kernel position, the eigenvalues of SᵀS of
    S = W[:, :, i, j] turned so rows ≥ columns, times 1/2; pooled and sorted."""
    out = []
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            s = w[:, :, i, j].astype(np.float64)
            if s.shape[0] < s.shape[1]:
                s = s.T
            out.extend(0.5 * np.linalg.eigvalsh(s.T @ s))
    return np.sort(np.asarray(out))


def wwfit_reference(evals: np.ndarray) -> tuple[float, float, float, int]:
    """WWFit (weightwatcher 0.7.7, WW_powerlaw.py) as a plain loop: values > 1e-5; every value
    but the largest a candidate; one-sided KS; below 20 values tails >= 8 and the (n-1) MLE;
    the first smallest D wins (NaN alpha where WWFit would fail or return a placeholder)."""
    x = np.sort(evals[evals > 1e-5])
    n_all = len(x)
    if n_all < 2:
        return math.nan, math.nan, math.nan, 0
    small = n_all < 20
    best = (2.0, math.nan, math.nan)  # (D, alpha, xmin); D <= 1 always
    for i in range(n_all - 1):
        tail = x[i:]
        n = len(tail)
        s = float(np.sum(np.log(tail)) - n * np.log(x[i]))
        if small and (n < 8 or s <= 1e-12):
            continue
        a = 1 + (n - 1) / s if small else (1 + n / s if s > 0 else math.inf)
        if not a > 1 or not math.isfinite(a):
            continue
        d = float(np.max(np.abs(1 - (tail / x[i]) ** (1 - a) - np.arange(n) / n)))
        if d < best[0]:
            best = (d, a, float(x[i]))
    if math.isnan(best[1]) and small:  # no candidate: the whole sample (WWFit's fallback)
        s = float(np.sum(np.log(x)) - n_all * np.log(x[0]))
        if s > 1e-12:
            a = 1 + (n_all - 1) / s
            d = float(np.max(np.abs(1 - (x / x[0]) ** (1 - a) - np.arange(n_all) / n_all)))
            best = (d, a, float(x[0]))
    if math.isnan(best[1]):
        return math.nan, math.nan, math.nan, 0
    return best[1], best[2], best[0], int((evals >= best[2]).sum())


def test_slices_equal_a_numpy_loop_over_kernel_positions() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(8, 3, 3, 3), (4, 6, 3, 3), (5, 5, 1, 1), (7, 2, 2, 3)]:
        w = torch.randn(*shape, generator=g)
        ev = layer_esd(w)  # conv="slices" is the default
        ref = slices_reference(w.numpy())
        assert len(ev) == len(ref) == num_evals(w) == shape[2] * shape[3] * min(shape[:2])
        np.testing.assert_allclose(ev.numpy(), ref, rtol=1e-10, atol=1e-12)
    # slices turned so rows >= columns, in row-major kernel order
    w = torch.randn(4, 6, 3, 3, generator=g)
    sl = layer_slices(w)
    assert sl.shape == (9, 6, 4) and torch.equal(sl[1], w[:, :, 0, 1].T)
    # a linear weight: its own eigenvalues, unscaled, in both conventions
    lin = torch.randn(12, 5, generator=g, dtype=torch.float64)
    ref = np.sort(np.linalg.eigvalsh(lin.numpy().T @ lin.numpy()))
    for conv in ("slices", "stacked"):
        np.testing.assert_allclose(layer_esd(lin, conv).numpy(), ref, rtol=1e-12)
    assert num_evals(w, "stacked") == 4 and len(layer_esd(w, "stacked")) == 4
    with pytest.raises(ValueError):
        layer_esd(w, "fft")  # type: ignore[arg-type]


def test_orthogonal_slices_give_one_eigenvalue() -> None:
    """Each slice c·Q with orthonormal columns: every eigenvalue is c²/2 (the 1/2 of
    WeightWatcher's conv2d_norm), stable rank = the count."""
    g = torch.Generator().manual_seed(1)
    c, out_c, in_c = 3.0, 10, 4
    q = torch.linalg.qr(torch.randn(9, out_c, in_c, generator=g, dtype=torch.float64)).Q
    w = (c * q).permute(1, 2, 0).reshape(out_c, in_c, 3, 3)
    ev = layer_esd(w)
    assert len(ev) == 36
    np.testing.assert_allclose(ev.numpy(), c * c / 2, rtol=1e-12)
    sn, sr = scale_metrics(ev)
    assert sn == pytest.approx(4.5, rel=1e-12) and sr == pytest.approx(36, rel=1e-12)
    # exactly equal eigenvalues: no tail to fit, and the fit says so
    alpha, *_, n_tail, reason = fit_power_law_ww(torch.full((36,), 4.5, dtype=torch.float64))
    assert math.isnan(alpha) and n_tail == 0 and "degenerate" in reason


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5])
def test_ww_fit_recovers_the_exponent_of_an_exact_power_law(alpha: float) -> None:
    """Conv slices whose eigenvalues are the quantiles of p(λ) ∝ λ^-α, λ ≥ 2: the pooled
    spectrum (halved: λ ≥ 1) is an exact power law and the fit recovers α and x_min."""
    g = torch.Generator().manual_seed(int(10 * alpha))
    n_pos, side = 9, 100
    u = (torch.arange(n_pos * side, dtype=torch.float64) + 0.5) / (n_pos * side)
    lam = 2 * (1 - u) ** (-1 / (alpha - 1))
    lam = lam[torch.randperm(len(lam), generator=g)].view(n_pos, side)
    q1 = torch.linalg.qr(torch.randn(n_pos, side, side, generator=g, dtype=torch.float64)).Q
    q2 = torch.linalg.qr(torch.randn(n_pos, side, side, generator=g, dtype=torch.float64)).Q
    slices = q1 @ torch.diag_embed(lam.sqrt()) @ q2.transpose(1, 2)
    w = slices.permute(1, 2, 0).reshape(side, side, 3, 3)
    ev = layer_esd(w)
    np.testing.assert_allclose(ev.numpy(), np.sort(lam.flatten().numpy()) / 2, rtol=1e-9)
    est, xmin, dist, n_tail, reason = fit_power_law_ww(ev)
    assert reason == "" and 0 < dist < 0.05 and n_tail > 100
    assert abs(est - alpha) < 0.1 * alpha, (est, alpha)
    assert 1.0 <= xmin < 2.0


def test_ww_fit_equals_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    cases = [rng.pareto(1.5, 200) + 1, rng.chisquare(3, 150) * 0.01,
             np.round(rng.uniform(0, 1, 120), 1) + 1e-3,  # duplicates: separate candidates
             np.concatenate([rng.uniform(1e-7, 1e-4, 30), rng.lognormal(0, 1, 60)]),
             rng.lognormal(0, 1, 17), rng.lognormal(0, 1, 9), rng.lognormal(0, 1, 5)]
    for x in cases:
        a, xmin, d, n_tail = wwfit_reference(x)
        est, exmin, ed, en, reason = fit_power_law_ww(torch.tensor(x))
        assert reason == "" and en == n_tail
        assert est == pytest.approx(a, rel=1e-12) and exmin == xmin
        assert ed == pytest.approx(d, rel=1e-12)
    est, *_, reason = fit_power_law_ww(torch.tensor([3.0, 1e-6]))
    assert math.isnan(est) and "fewer than the 2" in reason


def test_probe_defaults_store_fit_status_and_full_module_names() -> None:
    ctx = weights_ctx(lambda w: preact_resnet18(w, 10, 1), 2)
    probe = WeightsSpectrumProbe()
    with pytest.warns(UserWarning, match="too_few_evals"):
        probe.prepare(ctx)
    assert probe.resolved_config().min_evals == 8
    outs = probe.outputs()
    names = outs.coords["layer"]
    assert "layer3.0.shortcut.0" in names and names[0] == "conv1" and names[-1] == "linear"
    res = outs.check(probe(preact_resnet18(2, 10, 1), ctx), "weights_spectrum")
    status = res["fit_status"]
    few = res["num_evals"] < 8
    assert few.any() and (status[few] == FIT_TOO_FEW_EVALS).all()
    assert np.isin(status[~few], [FIT_OK, FIT_FAILED]).all()
    assert np.isnan(res["alpha"][status != FIT_OK]).all()
    assert np.isfinite(res["alpha"][status == FIT_OK]).all()


# -- against weightwatcher itself


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Heavy-tailed weights: each conv/linear weight plus Student-t (1.5 dof) noise and a
    rank-one spike, so the spectra have real tails (random init alone is Marchenko-Pastur)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                t = torch.distributions.StudentT(1.5).sample(w.shape)
                flat = w.view(w.shape[0], -1)
                spike = torch.outer(torch.randn(w.shape[0], generator=g),
                                    torch.randn(flat.shape[1], generator=g))
                w.add_(0.05 * w.std() * t + 0.3 * w.std() * spike.view_as(w))
    return model


MODELS = {
    "mcnn16-init": lambda: mcnn(16, 10, 1),
    "mcnn16-heavy": lambda: perturbed(mcnn(16, 10, 1), 1),
    "preact4-init": lambda: preact_resnet18(4, 10, 3),
    "preact8-heavy": lambda: perturbed(preact_resnet18(8, 10, 3), 2),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_every_layer_equals_weightwatcher(name: str) -> None:
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = MODELS[name]()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with redirect_stdout(io.StringIO()):  # WWFit prints "SMALL N PL FIT"
        details = ww.WeightWatcher(model=copy.deepcopy(model)).analyze()
    ctx = weights_ctx(lambda _w: model, 1)
    probe = WeightsSpectrumProbe()
    with warnings.catch_warnings():  # layers under min_evals: tested above
        warnings.simplefilter("ignore")
        probe.prepare(ctx)
    layers = probe.outputs().coords["layer"]
    res = probe(model, ctx)
    # the layers WeightWatcher analyses are ours with enough eigenvalues (min_evals = 8)
    fitted = [n for i, n in enumerate(layers) if res["fit_status"][i] != FIT_TOO_FEW_EVALS]
    assert list(details["longname"]) == fitted
    for _, row in details.iterrows():
        i = layers.index(row["longname"])
        assert res["num_evals"][i] == row["num_evals"]
        assert res["spectral_norm"][i] == pytest.approx(row["lambda_max"], rel=1e-9)
        assert res["stable_rank"][i] == pytest.approx(row["stable_rank"], rel=1e-9)
        assert row["status"] == "success" and res["fit_status"][i] == FIT_OK
        assert res["alpha"][i] == pytest.approx(row["alpha"], rel=1e-9)
        assert res["xmin"][i] == pytest.approx(row["xmin"], rel=1e-9)
        assert res["ks_distance"][i] == pytest.approx(row["D"], rel=1e-9, abs=1e-12)
        assert res["n_tail"][i] == row["num_pl_spikes"]

