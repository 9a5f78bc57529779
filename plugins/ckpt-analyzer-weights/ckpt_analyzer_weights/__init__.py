"""``weights``: per-layer Frobenius norms and the distance of each layer from its initialization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ckpt_analyzer.probes.base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:  # torch is imported where a checkpoint is measured: listing stays instant
    import torch
    from torch import nn


@dataclass(frozen=True)
class WeightsConfig:
    """No parameters: every weight tensor with two or more dimensions is a layer."""


class WeightsProbe(Probe):
    name = "weights"
    version = "1"
    description = "per-layer weight norms and distance from the epoch-0 initialization"
    Config = WeightsConfig

    def prepare(self, ctx: Context) -> Mapping[str, np.ndarray]:
        assert ctx.build_model is not None
        model = ctx.build_model(ctx.widths[0])
        self.layers = [k for k, v in model.state_dict().items() if v.ndim >= 2]
        self._init: dict[int, dict[str, torch.Tensor] | None] = {}
        return {}

    def outputs(self) -> Outputs:
        return Outputs(coords={"layer": self.layers},
                       metrics={"norm": Metric(("layer",)), "distance": Metric(("layer",)),
                                "relative_distance": Metric(("layer",))})

    def _initial(self, ctx: Context, width: int) -> dict[str, torch.Tensor] | None:
        if width not in self._init:
            state = ctx.initial_state(width) if ctx.initial_state else None
            self._init = {width: None if state is None else dict(state)}  # one width at a time
        return self._init[width]

    def __call__(self, model: nn.Module, ctx: Context) -> Mapping[str, np.ndarray]:
        assert ctx.checkpoint is not None
        state = model.state_dict()
        init = self._initial(ctx, ctx.checkpoint.width)
        norm, dist, rel = [], [], []
        for key in self.layers:
            w = state[key].double()
            norm.append(w.norm().item())
            if init is None:
                dist.append(float("nan"))
                rel.append(float("nan"))
            else:
                w0 = init[key].to(w.device).double()
                dist.append((w - w0).norm().item())
                rel.append(dist[-1] / w0.norm().item())
        return {"norm": np.array(norm), "distance": np.array(dist),
                "relative_distance": np.array(rel)}
