"""How many samples of a model's evaluation fit a memory budget.

A probe's working memory is dominated by the activations of one batch: what autograd keeps
for the backward pass (gradient probes), or the intermediate tensors of a forward pass. Both
grow linearly with the batch, ``bytes(b) = fixed + b · per_sample``, so two tiny measured
batches give the line exactly for a model whose samples do not interact (eval-mode batch
norm): :func:`graph_bytes` counts, with saved-tensor hooks, every tensor the autograd graph of
one evaluation saves (plus the gradients it returns), and :func:`per_sample_bytes` fits the line
from batches of 1 and 2. :func:`fit_batch` is the largest batch within a budget.

The count is of tensors saved for backward; a forward-only pass under inference mode keeps
fewer (each intermediate is freed once used), so the same count bounds it from above. The
allocator's fragmentation and the probe's own buffers come on top: :data:`HEADROOM` is the
factor applied to the per-sample bytes (measured on ``preact_resnet18`` width 64, 32×32
inputs, benchmarks/README.md "Big models").

Pure: no state; the model is evaluated through :func:`torch.func.functional_call` on detached
copies of its parameters' storage (never written, no ``.grad`` set).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEADROOM", "Footprint", "fit_batch", "graph_bytes", "per_sample_bytes"]

#: factor on the counted per-sample bytes for what the count misses (transient gradients of
#: the backward pass, allocator slack); see the module docstring
HEADROOM = 1.5


class Footprint(NamedTuple):
    """``bytes(b) = fixed + b · per_sample`` of one evaluation of a batch of ``b``."""

    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        """Bytes of a batch of ``batch`` samples."""
        return self.fixed + batch * self.per_sample


def graph_bytes(model: nn.Module, x: torch.Tensor, order: int) -> int:
    """Bytes autograd saves to evaluate ``model`` on ``x`` to derivative ``order``.

    ``order`` 0: the forward pass (activations; an upper bound of a forward-only pass);
    1: forward and the backward of the summed cross-entropy to the inputs (input gradients);
    2: forward and the ``create_graph`` backward to the parameters (the first-order graph of
    a Hessian-vector product, which the double backward traverses), plus the gradients.
    Labels are class 0 (the size does not depend on them).
    """
    from torch.func import functional_call

    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2 (got {order})")
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    params = {n: p.detach().requires_grad_(order == 2) for n, p in model.named_parameters()}
    state = {**params, **{n: b for n, b in model.named_buffers()}}
    xi = x.detach().requires_grad_(order < 2)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = functional_call(model, state, (xi,))
        saved += out.numel() * out.element_size()
        if order == 0:
            return saved
        y = torch.zeros(len(x), dtype=torch.long, device=out.device)
        loss = F.cross_entropy(out, y, reduction="sum")
        wrt = [xi] if order == 1 else [p for p in params.values()]
        grads = torch.autograd.grad(loss, wrt, create_graph=order == 2)
    return saved + sum(g.numel() * g.element_size() for g in grads)


def per_sample_bytes(model: nn.Module, sample: torch.Tensor, order: int) -> Footprint:
    """The line ``fixed + b · per_sample`` of :func:`graph_bytes` from batches of 1 and 2
    copies of ``sample`` (one input, without batch axis, or a batch whose first row is used).
    Put the model in eval mode first (train-mode batch norm couples the samples)."""
    one = sample[:1] if sample.dim() > 1 and len(sample) >= 1 else sample[None]
    b1 = graph_bytes(model, one, order)
    b2 = graph_bytes(model, one.expand(2, *one.shape[1:]).contiguous(), order)
    per = max(0, b2 - b1)
    return Footprint(max(0, b1 - per), per)


def fit_batch(batch_size: int, footprint: Footprint, budget: int | None,
              headroom: float = HEADROOM) -> int:
    """The largest batch ``<= batch_size`` whose ``fixed + b · per_sample · headroom`` fits in
    ``budget`` bytes; ``batch_size`` itself without a budget; at least 1 (a budget below one
    sample's bytes still evaluates one sample at a time)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if budget is None:
        return batch_size
    per = footprint.per_sample * headroom
    if per <= 0:
        return batch_size
    return max(1, min(batch_size, int((budget - footprint.fixed) // per)))
