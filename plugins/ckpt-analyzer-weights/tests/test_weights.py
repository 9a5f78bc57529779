"""The example plugin meets the probe contract, checked as any plugin author would."""

from __future__ import annotations

import numpy as np
from ckpt_analyzer_weights import WeightsProbe

from ckpt_analyzer.testing import check_probe, contract_context


def test_weights_probe_meets_the_contract() -> None:
    check_probe(WeightsProbe)


def test_norms_and_distances_against_a_loop() -> None:
    import torch

    ctx, models = contract_context()
    probe = WeightsProbe()
    model, ref = models[2]
    out = probe.measure(model, ctx.with_checkpoint(ref))
    init = ctx.initial_state(2) if ctx.initial_state else None
    assert init is not None
    with torch.no_grad():
        for i, key in enumerate(probe.layers):
            w = model.state_dict()[key].double()
            assert np.isclose(out["norm"][i], float(torch.sqrt((w ** 2).sum())))
            assert np.isclose(out["distance"][i], float((w - init[key].double()).norm()))
