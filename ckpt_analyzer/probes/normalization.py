"""The ``normalization`` probe: layerwise-normalized cross-entropy and the product of norms.

Liao, Miranda, Banburski, Hidary, Poggio, "Generalization puzzles in deep networks" (§1-2,
App. A-D, H); the maths is in :mod:`ckpt_analyzer.functional.normalization`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import ConfigError, check, check_choices
from ..errors import CkptError, ProbeError
from .base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..functional.normalization import FoldedNetwork

log = logging.getLogger(__name__)

_SPLITS = ("train", "test")


class NormalizationProbe(Probe):
    """Cross-entropy of the layerwise-normalized network and the product of layer norms.

    Per checkpoint: eval-mode batch norm is folded into the preceding conv/linear layer (the
    paper's App. C; a batch norm that follows no such layer becomes a per-channel affine
    weight layer of its own), ``rho_l = ||W_l||_p`` is taken over the folded network's weight
    layers in forward order, and on each subset the probe reports the raw cross-entropy
    ``loss`` and ``error`` of the network and the cross-entropy ``normalized_loss`` of the
    normalized network:

    * ``mode="layer"``: ``f~`` = the network with ``W_l / rho_l`` and biases divided by
      ``rho_1 ... rho_l``; for a positively homogeneous network ``f~ = f / prod rho_l``
      (eq. 1). Needs a homogeneous architecture (ReLU, pooling, no residual sums, no other
      activations); otherwise the run stops with a clear error.
    * ``mode="output"``: ``f(x) / ||f(x_ref)||_2`` with ``x_ref`` the training point at
      position ``reference`` (the paper's ResNet procedure, App. H).
    * ``mode="auto"`` (default): ``layer`` when the architecture is homogeneous, else
      ``output``. The mode used is the metric ``mode_layerwise`` (1 = layer, 0 = output).

    ``layer_norm`` and ``log_norm_product = sum_l log rho_l`` are reported in both modes.

    Biases (``rho_bias``). After folding, a layer's bias norm is often comparable to its weight
    norm. ``rho_bias="none"`` (default, unchanged): ``rho_l`` counts weights only and the bias
    of layer l is divided by ``rho_1 ... rho_l``, so ``f~ = f / prod rho_l`` exactly.
    ``rho_bias="first"``: the paper's convention, the first layer's bias counted in
    ``rho_1 = ||[W_1, b_1]||_p`` (the authors treat it as a weight on a constant input); still
    exact, ``f~ = f / prod rho_l`` with the larger ``rho_1``. Later layers' biases are in no
    ``rho_l`` under either convention.
    Labels: ``train`` uses the labels trained on (noisy where corrupted), ``test`` the test
    labels. Fixed inputs (``normalization/inputs/``): ``index`` (training positions used),
    ``test_index`` (test positions used), and in output mode ``reference`` (the reference
    example's training position). A checkpoint whose normalized network is undefined (a layer
    or the reference logits with norm 0) gets NaN ``normalized_loss``.
    """

    name = "normalization"
    version = "1"
    description = ("cross-entropy of the layerwise-normalized network and the product of layer "
                   "norms (Liao, Poggio et al.)")

    @dataclass(frozen=True)
    class Config:
        p: float = field(default=2.0, metadata={
            "help": "order of the layer norm ||W_l||_p of the flattened weight (2 = Frobenius)"})
        mode: Literal["auto", "layer", "output"] = field(default="auto", metadata={
            "help": "layer: f/prod(rho_l); output: f/||f(x_ref)||; auto: layer if the "
                    "network is positively homogeneous, else output"})
        subsets: tuple[str, ...] = field(default=_SPLITS, metadata={
            "help": "subsets: train, test"})
        samples: int | None = field(default=None, metadata={
            "help": "points per subset (a fixed random subset); None = the whole split"})
        reference: int = field(default=0, metadata={
            "help": "training position of the fixed reference example of mode=output"})
        rho_bias: Literal["none", "first"] = field(default="none", metadata={
            "help": "none: rho_l counts weights only; first: rho_1 = ||[W_1, b_1]||_p, the "
                    "paper's convention (f~ = f / prod rho_l is exact either way)"})

        def __post_init__(self) -> None:
            check(self.p > 0, f"normalization.p must be > 0 (got {self.p})")
            check(self.mode in ("auto", "layer", "output"),
                  f"normalization.mode: '{self.mode}' is not one of auto, layer, output")
            check_choices(self.subsets, _SPLITS, "normalization.subsets")
            check(self.samples is None or self.samples >= 1,
                  f"normalization.samples must be >= 1 or None (got {self.samples})")
            check(self.reference >= 0,
                  f"normalization.reference must be >= 0 (got {self.reference})")
            check(self.rho_bias in ("none", "first"),
                  f"normalization.rho_bias: '{self.rho_bias}' is not one of none, first")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._layers: list[str] | None = None
        self._layerwise: bool | None = None
        self._reason = ""

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        from ..functional.normalization import fold_batchnorm, is_homogeneous, weight_layers

        cfg = self.config
        if ctx.build_model is None or not ctx.widths:
            raise CkptError("normalization: needs the run's model factory and widths to find "
                            "the network's layers")
        n_train = len(ctx.data.y_train)
        if cfg.reference >= n_train:
            raise ConfigError(f"normalization.reference={cfg.reference} is not a training "
                              f"position (the training split has {n_train} points)")
        model = ctx.build_model(ctx.widths[0]).to(ctx.device).eval()
        try:
            folded = fold_batchnorm(model, example=ctx.data.x_train[:1].to(ctx.device))
        except (TypeError, ValueError) as exc:  # e.g. a model torch.fx cannot trace
            raise ProbeError(str(exc)) from None
        self._layers = [path for path, _ in weight_layers(folded)]
        if not self._layers:
            raise CkptError(f"normalization: model {type(model).__name__} has no Conv/Linear "
                            "weight layers")
        homogeneous, reason = is_homogeneous(folded)
        self._reason = reason
        if cfg.mode == "layer" and not homogeneous:
            raise ConfigError(f"normalization.mode=layer needs a positively homogeneous network, "
                              f"but {reason}; use mode=output or auto")
        self._layerwise = cfg.mode == "layer" or (cfg.mode == "auto" and homogeneous)
        if cfg.mode == "auto" and not homogeneous:
            log.info("normalization: network is not positively homogeneous (%s); using "
                     "mode=output", reason)

        rng = self.rng(ctx)
        inputs: dict[str, np.ndarray] = {}
        for subset in _SPLITS:  # fixed order: the train draw does not depend on subsets
            n = n_train if subset == "train" else len(ctx.data.y_test)
            if cfg.samples is None or cfg.samples >= n:
                index = np.arange(n, dtype=np.int64)
            else:
                index = np.sort(rng.choice(n, size=cfg.samples, replace=False)).astype(np.int64)
            if subset in cfg.subsets:
                inputs["index" if subset == "train" else "test_index"] = index
        if not self._layerwise:
            inputs["reference"] = np.array([cfg.reference], dtype=np.int64)
        return inputs

    def outputs(self) -> Outputs:
        if self._layers is None:
            raise CkptError("normalization: outputs() needs prepare(ctx) first (it finds the "
                            "layers)")
        subsets = list(self.config.subsets)
        return Outputs(
            coords={"layer": list(self._layers), "subset": subsets},
            metrics={
                "layer_norm": Metric(dims=("layer",), description=(
                    "rho_l = ||W_l||_p of the BN-folded weight layers, forward order (eq. 1)")),
                "log_norm_product": Metric(description="sum_l log rho_l (log of rho, eq. 1)"),
                "loss": Metric(dims=("subset",), description="cross-entropy of f"),
                "normalized_loss": Metric(dims=("subset",), description=(
                    "cross-entropy of the normalized network (eq. 2/10; see mode_layerwise)")),
                "error": Metric(dims=("subset",), description="classification error of f"),
                "mode_layerwise": Metric(description=(
                    "1: f~ = f / prod rho_l (layerwise); 0: f / ||f(x_ref)|| (App. H)")),
            },
        )

    def _subset(self, subset: str, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        assert self.inputs is not None
        key = "index" if subset == "train" else "test_index"
        x_all, y_all = ((ctx.data.x_train, ctx.data.y_train) if subset == "train"
                        else (ctx.data.x_test, ctx.data.y_test))
        assert self.inputs is not None
        index = torch.as_tensor(self.inputs[key], dtype=torch.long, device=x_all.device)
        return x_all[index].to(ctx.device), y_all[index].to(ctx.device)

    def _folded(self, model: nn.Module, ctx: Context) -> FoldedNetwork:
        """The BN-folded graph of this width, traced and fused once per width and device
        (cached on the probe, dropped when it is pickled); refilled per checkpoint. Only the
        last width's is kept, so a sweep of many widths holds one folded copy, not one per
        width (a width measured again later is folded again: the same numbers)."""
        from ..functional.normalization import FoldedNetwork

        width = ctx.checkpoint.width if ctx.checkpoint is not None else None
        key = f"folded/{width}"

        def make() -> FoldedNetwork:
            for old in [k for k in self._cache if k.startswith("folded/") and k != key]:
                del self._cache[old]
            return FoldedNetwork(model, example=ctx.data.x_train[:1].to(ctx.device))

        network = self.on_device(key, ctx, make)
        if not network.fits(model):  # another architecture under the same key: fold afresh
            network = self._cache[f"folded/{width}"] = make()
        return network

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        from ..functional.normalization import (
            layer_norms,
            log_norm_product,
            output_normalized_logits,
        )
        from ._budget import within_budget

        ctx = within_budget(self, model, ctx)
        cfg = self.config
        try:
            network = self._folded(model, ctx)
        except (TypeError, ValueError) as exc:
            raise ProbeError(str(exc)) from None
        folded = network.refill(model)
        paths = network.paths
        if paths != self._layers:
            raise CkptError(f"normalization: the checkpoint's weight layers {paths} differ from "
                            f"the run's {self._layers}")
        norms = layer_norms(folded, p=cfg.p, first_bias=cfg.rho_bias == "first")
        lnp = log_norm_product(norms)

        normalized: nn.Module | None = None
        ref_logits: torch.Tensor | None = None
        if self._layerwise:
            if bool(torch.all((norms > 0) & torch.isfinite(norms))):
                # in place of the folded network (refilled at the next checkpoint): no copy
                normalized = network.normalized(norms, in_place=True).eval()
        else:
            x_ref = ctx.data.x_train[cfg.reference : cfg.reference + 1].to(ctx.device)
            ref_logits = ctx.forward(model, x_ref)
            if not float(torch.linalg.vector_norm(ref_logits.double())) > 0:
                ref_logits = None

        k = len(cfg.subsets)
        loss, nloss, error = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
        for row, subset in enumerate(cfg.subsets):
            x, y = self._subset(subset, ctx)
            if len(y) == 0:
                continue
            logits = ctx.forward(model, x)
            loss[row] = F.cross_entropy(logits.double(), y).item()
            error[row] = (logits.argmax(dim=1) != y).double().mean().item()
            if normalized is not None:
                tilde = ctx.forward(normalized, x)
            elif ref_logits is not None:
                tilde = output_normalized_logits(logits, ref_logits)
            else:
                continue
            nloss[row] = F.cross_entropy(tilde.double(), y).item()
        return {
            "layer_norm": norms.cpu().numpy(),
            "log_norm_product": np.array(lnp.item()),
            "loss": loss,
            "normalized_loss": nloss,
            "error": error,
            "mode_layerwise": np.array(1.0 if self._layerwise else 0.0),
        }
