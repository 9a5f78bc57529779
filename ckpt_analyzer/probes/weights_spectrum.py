"""The ``weights_spectrum`` probe: per-layer eigenvalue spectra of WᵀW and their power-law tails.

Martin & Mahoney (JMLR 2021; Nat. Commun. 2021) / WeightWatcher, with the power-law fit of
Clauset, Shalizi & Newman (2009); the maths is in
:mod:`ckpt_analyzer.functional.weights_spectrum`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import check, check_count
from ..errors import CkptError
from .base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    from torch import nn


def _layers(model: nn.Module) -> list[tuple[str, Any]]:
    """(name, weight) of every conv and linear layer, in module order."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


class WeightsSpectrumProbe(Probe):
    """Per conv/linear layer: the eigenvalues λ of ``WᵀW`` (squared singular values of the
    layer matrix; conv weights split into their kernel positions and stacked, as
    WeightWatcher) summarized by

    * ``spectral_norm`` = λ_max (WeightWatcher's convention: the squared largest singular
      value) and ``stable_rank`` = Σλ / λ_max;
    * ``alpha``: the exponent of a power law ``p(λ) ∝ λ^(−α)`` fitted to the tail by maximum
      likelihood, ``α = 1 + n / Σ ln(λ_i / x_min)``, with ``x_min`` minimizing the
      Kolmogorov–Smirnov distance (Clauset et al. 2009); ``xmin``, ``ks_distance`` and
      ``n_tail`` describe the fit. ``alpha`` is NaN for a layer with fewer than ``min_evals``
      eigenvalues (too small for a power-law fit; ``num_evals`` says how many it has) or whose
      tail is degenerate; the cube has no per-cell attribute, so this rule is stated in the
      metric's description and a warning names the affected layers once per run;
    * ``histogram`` (layer, bin): the fraction of the layer's eigenvalues in each of ``bins``
      bins of ``log10 λ`` over ``[hist_min, hist_max]`` (values outside fall in the end bins).

    Weights only: no data, no randomness, no fixed inputs. Layers are found by ``prepare`` on
    the first width's model (``ctx.build_model``) and must be the same for every checkpoint.
    """

    name = "weights_spectrum"
    version = "1"
    description = ("eigenvalue spectra of each layer's WᵀW: spectral norm, stable rank and "
                   "power-law tail exponent (Martin & Mahoney, WeightWatcher)")

    @dataclass(frozen=True)
    class Config:
        min_evals: int = field(default=50, metadata={
            "help": "fewest eigenvalues a layer needs for the power-law fit (else alpha NaN)"})
        min_tail: int = field(default=10, metadata={
            "help": "fewest eigenvalues in the fitted tail (bounds x_min from above)"})
        bins: int = field(default=40, metadata={"help": "histogram bins of log10(eigenvalue)"})
        hist_min: float = field(default=-4.0, metadata={
            "help": "lower edge of the histogram, log10(eigenvalue)"})
        hist_max: float = field(default=4.0, metadata={
            "help": "upper edge of the histogram, log10(eigenvalue)"})

        def __post_init__(self) -> None:
            check(self.min_evals >= 2, f"weights_spectrum.min_evals must be >= 2 "
                                       f"(got {self.min_evals})")
            check(2 <= self.min_tail <= self.min_evals,
                  f"weights_spectrum.min_tail must be in [2, min_evals={self.min_evals}] "
                  f"(got {self.min_tail})")
            check_count(self.bins, "weights_spectrum.bins")
            check(np.isfinite(self.hist_min) and np.isfinite(self.hist_max)
                  and self.hist_max > self.hist_min,
                  f"weights_spectrum: need hist_min < hist_max (got {self.hist_min}, "
                  f"{self.hist_max})")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._layers: list[str] | None = None

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from ..functional.weights_spectrum import layer_matrix

        if ctx.build_model is None or not ctx.widths:
            raise CkptError("weights_spectrum: needs the run's model factory and widths to "
                            "find the layers")
        layers = _layers(ctx.build_model(ctx.widths[0]))
        if not layers:
            raise CkptError("weights_spectrum: the model has no conv or linear layers")
        self._layers = [n for n, _ in layers]
        for width in ctx.widths:
            small = [f"{n} ({min(layer_matrix(w).shape)})"
                     for n, w in _layers(ctx.build_model(width))
                     if min(layer_matrix(w).shape) < self.config.min_evals]
            if small:
                warnings.warn(f"weights_spectrum: width {width}: layers with fewer than "
                              f"min_evals={self.config.min_evals} eigenvalues get alpha = NaN "
                              f"(too small for a power-law fit): {', '.join(small)}",
                              stacklevel=2)
        return {}

    def _edges(self) -> np.ndarray:
        cfg = self.config
        return np.linspace(cfg.hist_min, cfg.hist_max, cfg.bins + 1)

    def outputs(self) -> Outputs:
        if self._layers is None:
            raise CkptError("weights_spectrum: outputs() needs prepare(ctx) first (it finds the "
                            "layers)")
        e = self._edges()
        layer = ("layer",)
        return Outputs(
            coords={"layer": list(self._layers), "bin": ((e[:-1] + e[1:]) / 2).tolist()},
            metrics={
                "spectral_norm": Metric(dims=layer, description=(
                    "lambda_max of W'W, the squared largest singular value (WeightWatcher's "
                    "spectral_norm)")),
                "stable_rank": Metric(dims=layer, description=(
                    "sum(lambda) / lambda_max = ||W||_F^2 / ||W||_2^2")),
                "alpha": Metric(dims=layer, description=(
                    "power-law exponent of the ESD tail, MLE 1 + n / sum ln(lambda/xmin) with "
                    "xmin by KS distance (Clauset et al. 2009); NaN when the layer has fewer "
                    "than min_evals eigenvalues (too small for a power-law fit, see num_evals) "
                    "or a degenerate tail")),
                "xmin": Metric(dims=layer, description="x_min of the fitted tail"),
                "ks_distance": Metric(dims=layer, description=(
                    "Kolmogorov-Smirnov distance of the fit (eq. 3.9)")),
                "n_tail": Metric(dims=layer, description="eigenvalues >= xmin"),
                "num_evals": Metric(dims=layer, description="eigenvalues of the layer"),
                "histogram": Metric(dims=("layer", "bin"), description=(
                    "fraction of eigenvalues per bin of log10(lambda) (bin centres); values "
                    "outside the range in the end bins")),
            },
        )

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.weights_spectrum import (
            esd,
            fit_power_law,
            layer_matrix,
            log_histogram,
            scale_metrics,
        )

        assert self._layers is not None
        cfg = self.config
        layers = _layers(model)
        if [n for n, _ in layers] != self._layers:
            raise CkptError(f"weights_spectrum: the checkpoint's layers "
                            f"{[n for n, _ in layers]} differ from the run's {self._layers}")
        n = len(layers)
        out = {k: np.full(n, np.nan) for k in ("spectral_norm", "stable_rank", "alpha", "xmin",
                                               "ks_distance", "n_tail", "num_evals")}
        hist = np.zeros((n, cfg.bins))
        edges = torch.as_tensor(self._edges())
        with torch.no_grad():
            for i, (_, weight) in enumerate(layers):
                ev = esd(layer_matrix(weight.detach()))
                out["num_evals"][i] = len(ev)
                out["spectral_norm"][i], out["stable_rank"][i] = scale_metrics(ev)
                hist[i] = log_histogram(ev.cpu(), edges).numpy()
                if len(ev) >= cfg.min_evals:
                    alpha, xmin, dist, n_tail, _reason = fit_power_law(ev.cpu(), cfg.min_tail)
                    out["alpha"][i], out["xmin"][i], out["ks_distance"][i] = alpha, xmin, dist
                    out["n_tail"][i] = n_tail if n_tail else np.nan
        out["histogram"] = hist
        return out
