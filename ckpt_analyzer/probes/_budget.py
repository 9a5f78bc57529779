"""A probe's batches lowered to fit ``Context.max_memory`` (the per-run memory budget).

:func:`within_budget` returns the context a probe measures one checkpoint with: without a
budget the context itself (every number as before); with one, ``batch_size`` (gradient
evaluations) and ``forward_batch_size`` (forward-only ones) lowered to the largest batches
whose measured footprint fits (:func:`~ckpt_analyzer.functional.memory.fit_batch`). A lowered
batch gives exactly the numbers of a run with that ``--batch-size`` / ``--forward-batch-size``:
the budget only chooses the batch. The footprint is measured once per architecture and
device (two tiny batches) and cached on the probe.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .base import Context, Probe

if TYPE_CHECKING:
    from torch import nn

    from ..functional.memory import Footprint

__all__ = ["footprint", "within_budget"]


def footprint(probe: Probe, model: nn.Module, ctx: Context, order: int) -> Footprint:
    """The model's :class:`~ckpt_analyzer.functional.memory.Footprint` at ``order`` (0:
    forward, 1: input gradients, 2: Hessian-vector products) on one training input, cached
    on the probe per architecture (parameter shapes) and device."""
    from ..functional.memory import per_sample_bytes

    shapes = tuple(tuple(p.shape) for p in model.parameters())
    key = f"_budget/{order}/{hash(shapes)}"

    def make() -> Footprint:
        was = model.training
        model.eval()
        try:
            return per_sample_bytes(model, ctx.data.x_train[:1].to(ctx.device), order)
        finally:
            model.train(was)

    return probe.on_device(key, ctx, make)


def within_budget(probe: Probe, model: nn.Module, ctx: Context, order: int = 0) -> Context:
    """``ctx`` with its batches fitted to ``ctx.max_memory``; ``ctx`` itself without one.

    ``order`` is the derivative the probe's gradient batches take (1: input gradients, 2:
    Hessian-vector products; 0: the probe evaluates forward only and ``batch_size`` is left
    as is). ``forward_batch_size`` is always fitted to the forward footprint."""
    from ..functional.memory import fit_batch

    if ctx.max_memory is None:
        return ctx
    budget = int(ctx.max_memory)
    fwd = fit_batch(ctx.forward_batch, footprint(probe, model, ctx, 0), budget)
    bs = ctx.batch_size
    if order:
        bs = fit_batch(bs, footprint(probe, model, ctx, order), budget)
    if fwd == ctx.forward_batch and bs == ctx.batch_size:
        return ctx
    return dataclasses.replace(ctx, batch_size=bs, forward_batch_size=fwd)
