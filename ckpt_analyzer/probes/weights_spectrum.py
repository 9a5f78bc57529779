"""The ``weights_spectrum`` probe: per-layer eigenvalue spectra of WᵀW and their power-law tails.

Martin & Mahoney (JMLR 2021; Nat. Commun. 2021) / WeightWatcher 0.7.7, with the power-law fit of
Clauset, Shalizi & Newman (2009); the maths is in
:mod:`ckpt_analyzer.functional.weights_spectrum`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import check, check_count
from ..errors import CkptError
from .base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    from torch import nn

#: ``fit_status`` codes (a float metric, NaN where a checkpoint was not measured).
FIT_OK, FIT_TOO_FEW_EVALS, FIT_FAILED = 0, 1, 2
FIT_STATUS = {FIT_OK: "ok", FIT_TOO_FEW_EVALS: "too_few_evals", FIT_FAILED: "failed"}
#: ``min_evals`` when not set: WeightWatcher's ``DEFAULT_MIN_EVALS`` (8) for its fit, 50 for
#: the strict one; ``min_tail`` of the strict fit when not set.
DEFAULT_MIN_EVALS = {"weightwatcher": 8, "strict": 50}
DEFAULT_MIN_TAIL = 10


def _layers(model: nn.Module) -> list[tuple[str, Any]]:
    """(name, weight) of every conv and linear layer, in module order."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


class WeightsSpectrumProbe(Probe):
    """Per conv/linear layer (``layer``: its full ``named_modules()`` name, WeightWatcher's
    ``longname``): the eigenvalues λ of the layer (:func:`~ckpt_analyzer.functional.\
weights_spectrum.layer_esd`) summarized by

    * ``spectral_norm`` = λ_max (WeightWatcher's ``lambda_max``: the squared largest singular
      value) and ``stable_rank`` = Σλ / λ_max;
    * ``alpha``: the exponent of a power law ``p(λ) ∝ λ^(−α)`` fitted to the tail by maximum
      likelihood, x_min by a Kolmogorov–Smirnov distance (``fit``: WeightWatcher's rule or the
      strict one); ``xmin``, ``ks_distance`` and ``n_tail`` describe the fit;
    * ``fit_status``: 0 ok, 1 too_few_evals (fewer than ``min_evals`` eigenvalues, not fitted:
      WeightWatcher leaves such a layer out), 2 failed (fitted, no usable tail); alpha, xmin,
      ks_distance and n_tail are NaN unless 0. A warning names the too-small layers once per
      run;
    * ``histogram`` (layer, bin): the fraction of the layer's eigenvalues in each of ``bins``
      bins of ``log10 λ`` over ``[hist_min, hist_max]`` (values outside fall in the end bins).

    Conv weights: ``conv="slices"`` (default) pools the eigenvalues of every kernel position's
    ``W[:, :, i, j]``, each halved, as WeightWatcher 0.7.7's ``analyze()``; ``conv="stacked"``
    stacks the slices into one matrix (this probe's version 1). With the defaults
    (``conv="slices"``, ``fit="weightwatcher"``, ``min_evals`` 8) every number equals
    ``WeightWatcher(model).analyze()`` on the CPU (``lambda_max``, ``num_evals``, ``alpha``,
    ``xmin``, ``D``, ``num_pl_spikes``, ``stable_rank``) on every layer it reports.

    Weights only: no data, no randomness, no fixed inputs. Layers are found by ``prepare`` on
    the first width's model (``ctx.build_model``) and must be the same for every checkpoint.
    """

    name = "weights_spectrum"
    version = "2"
    description = ("eigenvalue spectra of each layer's WᵀW: spectral norm, stable rank and "
                   "power-law tail exponent (Martin & Mahoney, WeightWatcher)")

    @dataclass(frozen=True)
    class Config:
        conv: Literal["slices", "stacked"] = field(default="slices", metadata={
            "help": "slices: pool the eigenvalues of each kernel position's W[:, :, i, j], "
                    "halved (WeightWatcher 0.7.7); stacked: one matrix of the stacked slices"})
        fit: Literal["weightwatcher", "strict"] = field(default="weightwatcher", metadata={
            "help": "weightwatcher: WeightWatcher 0.7.7's fit (evals > 1e-5, every value but "
                    "the largest a candidate x_min, one-sided KS as powerlaw); strict: "
                    "distinct candidates, tails >= min_tail, two-sided KS"})
        min_evals: int | None = field(default=None, metadata={
            "help": "fewest eigenvalues a layer needs for the power-law fit (else "
                    "fit_status too_few_evals); None: 8 (WeightWatcher's) for "
                    "fit=weightwatcher, 50 for fit=strict"})
        min_tail: int | None = field(default=None, metadata={
            "help": "fit=strict only: fewest eigenvalues in the fitted tail; None: 10"})
        bins: int = field(default=40, metadata={"help": "histogram bins of log10(eigenvalue)"})
        hist_min: float = field(default=-4.0, metadata={
            "help": "lower edge of the histogram, log10(eigenvalue)"})
        hist_max: float = field(default=4.0, metadata={
            "help": "upper edge of the histogram, log10(eigenvalue)"})

        def __post_init__(self) -> None:
            check(self.conv in ("slices", "stacked"),
                  f"weights_spectrum.conv: '{self.conv}' is not one of slices, stacked")
            check(self.fit in ("weightwatcher", "strict"),
                  f"weights_spectrum.fit: '{self.fit}' is not one of weightwatcher, strict")
            min_evals = self.resolved_min_evals
            check(min_evals >= 2, f"weights_spectrum.min_evals must be >= 2 (got {min_evals})")
            if self.fit == "weightwatcher":
                check(self.min_tail is None,
                      "weights_spectrum.min_tail applies to fit=strict only (WeightWatcher's "
                      "fit scans tails down to 2 values, 8 below 20)")
            else:
                check(2 <= self.resolved_min_tail <= min_evals,
                      f"weights_spectrum.min_tail must be in [2, min_evals={min_evals}] "
                      f"(got {self.resolved_min_tail})")
            check_count(self.bins, "weights_spectrum.bins")
            check(np.isfinite(self.hist_min) and np.isfinite(self.hist_max)
                  and self.hist_max > self.hist_min,
                  f"weights_spectrum: need hist_min < hist_max (got {self.hist_min}, "
                  f"{self.hist_max})")

        @property
        def resolved_min_evals(self) -> int:
            """``min_evals``, its fit rule's default when None."""
            return DEFAULT_MIN_EVALS[self.fit] if self.min_evals is None else self.min_evals

        @property
        def resolved_min_tail(self) -> int:
            """``min_tail`` of the strict fit, 10 when None."""
            return DEFAULT_MIN_TAIL if self.min_tail is None else self.min_tail

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._layers: list[str] | None = None

    def resolved_config(self) -> Any:
        cfg = self.config
        return dataclasses.replace(
            cfg, min_evals=cfg.resolved_min_evals,
            min_tail=cfg.resolved_min_tail if cfg.fit == "strict" else None)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from ..functional.weights_spectrum import num_evals

        if ctx.build_model is None or not ctx.widths:
            raise CkptError("weights_spectrum: needs the run's model factory and widths to "
                            "find the layers")
        layers = _layers(ctx.build_model(ctx.widths[0]))
        if not layers:
            raise CkptError("weights_spectrum: the model has no conv or linear layers")
        self._layers = [n for n, _ in layers]
        cfg = self.config
        min_evals = cfg.resolved_min_evals
        for width in ctx.widths:
            counts = [(n, num_evals(w, cfg.conv)) for n, w in _layers(ctx.build_model(width))]
            small = [f"{n} ({k})" for n, k in counts if k < min_evals]
            if small:
                warnings.warn(f"weights_spectrum: width {width}: layers with fewer than "
                              f"min_evals={min_evals} eigenvalues get alpha = NaN, fit_status "
                              f"too_few_evals (too small for a power-law fit): "
                              f"{', '.join(small)}", stacklevel=2)
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
                    "lambda_max, the squared largest singular value (WeightWatcher's "
                    "lambda_max; conv=slices: of the slices, halved)")),
                "stable_rank": Metric(dims=layer, description=(
                    "sum(lambda) / lambda_max")),
                "alpha": Metric(dims=layer, description=(
                    "power-law exponent of the ESD tail by maximum likelihood, xmin by KS "
                    "distance (fit=weightwatcher: WeightWatcher 0.7.7's rule; strict: Clauset "
                    "et al. 2009 with tails >= min_tail); NaN unless fit_status is 0")),
                "xmin": Metric(dims=layer, description="x_min of the fitted tail"),
                "ks_distance": Metric(dims=layer, description=(
                    "Kolmogorov-Smirnov distance of the fit (weightwatcher: one-sided, its D; "
                    "strict: two-sided, eq. 3.9)")),
                "n_tail": Metric(dims=layer, description=(
                    "eigenvalues >= xmin (WeightWatcher's num_pl_spikes)")),
                "num_evals": Metric(dims=layer, description="eigenvalues of the layer"),
                "fit_status": Metric(dims=layer, description=(
                    "the power-law fit: 0 ok, 1 too_few_evals (fewer than min_evals "
                    "eigenvalues, not fitted), 2 failed (no usable tail)")),
                "histogram": Metric(dims=("layer", "bin"), description=(
                    "fraction of eigenvalues per bin of log10(lambda) (bin centres); values "
                    "outside the range in the end bins")),
            },
        )

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.weights_spectrum import (
            fit_power_law,
            fit_power_law_ww,
            layer_esd,
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
                                               "ks_distance", "n_tail", "num_evals",
                                               "fit_status")}
        min_evals, min_tail = cfg.resolved_min_evals, cfg.resolved_min_tail
        hist = np.zeros((n, cfg.bins))
        edges = torch.as_tensor(self._edges())
        with torch.no_grad():
            for i, (_, weight) in enumerate(layers):
                ev = layer_esd(weight.detach(), cfg.conv)
                out["num_evals"][i] = len(ev)
                out["spectral_norm"][i], out["stable_rank"][i] = scale_metrics(ev)
                hist[i] = log_histogram(ev.cpu(), edges).numpy()
                if len(ev) < min_evals:
                    out["fit_status"][i] = FIT_TOO_FEW_EVALS
                    continue
                alpha, xmin, dist, n_tail, reason = (
                    fit_power_law_ww(ev.cpu()) if cfg.fit == "weightwatcher"
                    else fit_power_law(ev.cpu(), min_tail))
                out["fit_status"][i] = FIT_FAILED if reason else FIT_OK
                out["alpha"][i], out["xmin"][i], out["ks_distance"][i] = alpha, xmin, dist
                out["n_tail"][i] = n_tail if n_tail else np.nan
        out["histogram"] = hist
        return out
