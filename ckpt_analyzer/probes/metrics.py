"""``metrics``: cross-entropy and error per subset — the double-descent curves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import check_choices
from ..errors import ProbeError
from .base import SUBSETS, Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class MetricsConfig:
    subsets: tuple[str, ...] = field(default=SUBSETS, metadata={"help": "train, clean, noisy, test"})

    def __post_init__(self) -> None:
        check_choices(self.subsets, SUBSETS, "metrics.subsets")


class MetricsProbe(Probe):
    """Loss and error on train (labels as trained), clean, noisy (corrupted labels) and test.

    On a label-smoothed run (Fridovich-Keil et al. §3.1) it also reports the test loss against
    the smoothed test labels and the effective noise fitting = clean test loss − smoothed test
    loss, whose dip over epochs shows when the network fits the hidden frequency."""

    name = "metrics"
    version = "1"
    description = "cross-entropy and error on train / clean / noisy / test"
    Config = MetricsConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._smoothing: Mapping[str, Any] | None = None

    def prepare(self, ctx: Context) -> Mapping[str, np.ndarray]:
        self._smoothing = ctx.data.smoothing
        return {}

    def outputs(self) -> Outputs:
        metrics = {
            "loss": Metric(("subset",), description="mean cross-entropy"),
            "error": Metric(("subset",), description="fraction misclassified"),
        }
        if self._smoothing:
            metrics["smoothed_test_loss"] = Metric((), description="test CE vs smoothed labels")
            metrics["effective_noise_fitting"] = Metric(
                (), description="clean test loss - smoothed test loss")
        return Outputs(coords={"subset": list(self.config.subsets)}, metrics=metrics)

    def __call__(self, model: nn.Module, ctx: Context) -> Mapping[str, np.ndarray]:
        import torch.nn.functional as F

        from ._budget import within_budget

        ctx = within_budget(self, model, ctx)
        d = ctx.data
        logits: dict[str, torch.Tensor] = {}
        if any(s != "test" for s in self.config.subsets):
            logits["train"] = ctx.forward(model, d.x_train)
        if "test" in self.config.subsets or self._smoothing:
            logits["test"] = ctx.forward(model, d.x_test)
        loss, err = [], []
        for s in self.config.subsets:
            idx = d.index(s)
            split = "test" if s == "test" else "train"
            y = d.y_test if s == "test" else d.y_train
            if len(idx) == 0:
                loss.append(float("nan"))
                err.append(float("nan"))
                continue
            lg = logits[split][idx].double()
            loss.append(F.cross_entropy(lg, y[idx]).item())
            err.append((lg.argmax(1) != y[idx]).double().mean().item())
        out = {"loss": np.array(loss), "error": np.array(err)}
        if self._smoothing:
            from ..functional.smoothing import smoothed_test_loss

            lg = logits["test"].double()
            try:
                smooth = smoothed_test_loss(lg, d.x_test, d.y_test, d.num_classes,
                                            self._smoothing)
            except ValueError as exc:  # a label_smoothing manifest that does not fit the data
                raise ProbeError(str(exc)) from None
            clean = F.cross_entropy(lg, d.y_test).item()
            out["smoothed_test_loss"] = np.array(smooth)
            out["effective_noise_fitting"] = np.array(clean - smooth)
        return out


