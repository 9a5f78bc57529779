"""Loss-landscape slices along filter-normalized random directions, and linear paths between
checkpoints.

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS 2018):

* §3, eq. (1)-(2): the loss along one direction, ``f(α) = L(θ + α δ)``, or two,
  ``f(α, β) = L(θ + α δ + β η)`` (:func:`slice_grid`, :func:`grid_losses`).
* §4, filter normalization: a Gaussian direction d (same shapes as the parameters) is scaled
  filter by filter, ``d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖`` for the j-th filter (slice
  along the first axis: conv output channel, linear output neuron) of the i-th layer; entries of
  1-D parameters (batch norm, biases) are zeroed (their code's ``ignore='biasbn'`` default) or
  copied from θ (:func:`filter_normalize`).
* §3 (1-D linear interpolation, Goodfellow et al. 2015): the loss along
  ``θ(t) = (1 − t) θ_a + t θ_b``; the barrier height of that path
  ``max_t [L(θ(t)) − ((1 − t) L(θ_a) + t L(θ_b))]`` (Frankle et al., "Linear mode connectivity
  and the lottery ticket hypothesis", ICML 2020, Def. 1) (:func:`interpolate_states`,
  :func:`barrier_height`).
* Batch-norm statistics at a moved point: the running statistics of a checkpoint belong to
  its weights, not to ``θ + α δ`` or ``θ(t)``; interpolating them along a path inflates the
  barrier, so the linear-mode-connectivity literature re-estimates them at each point
  (Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair",
  ICLR 2023, whose ``reset_bn_stats`` resets them, sets ``momentum=None`` and forwards training
  data in train mode). :func:`reset_batch_norm` does that on a fixed set of training inputs.

Functions work on dicts ``name -> tensor`` (``model.named_parameters()`` order); the model is
evaluated with :func:`torch.func.functional_call`, so a single module serves every grid point
and its tensors are never written (re-estimated statistics go to fresh buffers passed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batching import add_at, chunks, evaluation

__all__ = [
    "BN_MODES",
    "barrier_height",
    "batch_norm_buffers",
    "draw_direction",
    "filter_normalize",
    "grid_losses",
    "interpolate_states",
    "model_loss_error",
    "reset_batch_norm",
    "slice_grid",
]

Tensors = Mapping[str, torch.Tensor]

#: how batch-norm running statistics are set at a moved point: re-estimated there, or taken
#: from the checkpoint (slices) / interpolated between the ends (paths)
BN_MODES = ("reset", "interpolate")


def draw_direction(shapes: Mapping[str, Sequence[int]], rng: np.random.Generator,
                   dtype: type[np.floating] = np.float32) -> dict[str, np.ndarray]:
    """A standard Gaussian direction with the given parameter shapes, drawn in order."""
    return {k: rng.standard_normal(tuple(s)).astype(dtype) for k, s in shapes.items()}


def filter_normalize(direction: Tensors, weights: Tensors, ignore_bn_bias: bool = True,
                     eps: float = 1e-10) -> dict[str, torch.Tensor]:
    """Li et al. (2018) §4 filter normalization of ``direction`` to ``weights``.

    For each parameter with ``dim > 1``, each filter ``d[j]`` (slice along axis 0) is scaled
    to ``‖w[j]‖ / (‖d[j]‖ + eps)`` times itself (as their ``normalize_direction``). For 1-D
    parameters (batch-norm weights and biases, layer biases): zero with ``ignore_bn_bias``
    (their default ``biasbn``), else a copy of the weights (their code's alternative).
    """
    out = {}
    for name, d in direction.items():
        w = weights[name].to(d.dtype)
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d) if ignore_bn_bias else w.clone()
            continue
        dn = torch.linalg.vector_norm(d.flatten(1), dim=1)
        wn = torch.linalg.vector_norm(w.flatten(1), dim=1)
        scale = (wn / (dn + eps)).view(-1, *([1] * (d.dim() - 1)))
        out[name] = d * scale
    return out


def slice_grid(alphas: torch.Tensor, ndirections: int) -> torch.Tensor:
    """Grid coordinates ``(G, ndirections)``: the alphas (1-D), or the product grid of alphas ×
    alphas in row-major (alpha, beta) order (2-D)."""
    if ndirections == 1:
        return alphas.view(-1, 1)
    if ndirections == 2:
        a, b = torch.meshgrid(alphas, alphas, indexing="ij")
        return torch.stack([a.flatten(), b.flatten()], dim=1)
    raise ValueError(f"ndirections must be 1 or 2 (got {ndirections})")


def _tracking_bn(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def batch_norm_buffers(model: nn.Module) -> list[str]:
    """Names of the running-statistics buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of the model's batch-norm layers that track them; empty for a net
    without batch norm, where :func:`reset_batch_norm` has nothing to do."""
    out = []
    for name, m in _tracking_bn(model):
        prefix = f"{name}." if name else ""
        out += [prefix + b for b, t in m.named_buffers(recurse=False) if t is not None]
    return out


def reset_batch_norm(model: nn.Module, state: Tensors, x: torch.Tensor, batch_size: int
                     ) -> dict[str, torch.Tensor]:
    """Running statistics of ``model``'s batch-norm layers re-estimated with the tensors
    ``state`` (parameters; the rest taken from the model) on the inputs ``x``.

    Fresh buffers (mean 0, variance 1, count 0) are passed with ``state`` through
    :func:`~torch.func.functional_call`; the batch-norm layers are put in train mode with
    PyTorch's cumulative average (``momentum=None``, here spelled as momentum ``1/j`` on the
    j-th chunk, the same factor without a host read of the count) and ``x`` is forwarded under
    :func:`torch.no_grad` in ``ceil(len(x) / batch_size)`` chunks of equal size (±1), so the
    statistics are the average over chunks of each chunk's batch mean and unbiased variance
    (one chunk: exactly those of ``x``). The layers' mode and momentum are restored afterwards
    and the model's own tensors are never written. Returns ``{buffer name: tensor}``
    (:func:`batch_norm_buffers`); empty for a net without batch norm."""
    from torch.func import functional_call

    layers = _tracking_bn(model)
    if not layers:
        return {}
    fresh: dict[str, torch.Tensor] = {}
    for name, m in layers:
        prefix = f"{name}." if name else ""
        assert m.running_mean is not None and m.running_var is not None
        fresh[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
        fresh[prefix + "running_var"] = torch.ones_like(m.running_var)
        if m.num_batches_tracked is not None:
            fresh[prefix + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
    saved = [(m, m.training, m.momentum) for _, m in layers]
    merged = {**dict(state), **fresh}
    try:
        for m, _, _ in saved:
            m.train()
        with torch.no_grad():
            n = len(x)
            parts = torch.tensor_split(x, max(1, math.ceil(n / batch_size))) if n else ()
            for j, part in enumerate(parts, start=1):
                for m, _, _ in saved:  # momentum=None's factor, without reading the count back
                    m.momentum = 1.0 / j
                functional_call(model, merged, (part,))
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum
    return fresh


def model_loss_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     groups: torch.Tensor | None = None, ngroups: int = 1,
                     bn_inputs: torch.Tensor | None = None
                     ) -> Callable[[Tensors], tuple[torch.Tensor, torch.Tensor]]:
    """``state -> (loss, error)`` of ``model`` with ``state`` (parameters and/or buffers,
    the rest taken from the model) on ``(x, y)``: mean cross-entropy and error per group of
    points (``groups[i]`` in ``0..ngroups-1``; all in group 0 by default), float64 of shape
    ``(ngroups,)``; NaN for an empty group. Batches of ``batch_size``, inference mode.

    With ``bn_inputs``, the batch-norm running statistics at each ``state`` are first
    re-estimated on those inputs (:func:`reset_batch_norm`), replacing any in ``state``; the
    model itself stays in eval mode for the loss."""
    from torch.func import functional_call

    if groups is None:
        groups = torch.zeros(len(x), dtype=torch.long, device=x.device)
    count = torch.bincount(groups, minlength=ngroups).double()

    def evaluate(state: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        if bn_inputs is not None:
            state = {**dict(state), **reset_batch_norm(model, state, bn_inputs, batch_size)}
        loss = torch.zeros(ngroups, dtype=torch.float64, device=x.device)
        wrong = torch.zeros_like(loss)
        with evaluation():
            for lo, hi in chunks(len(x), batch_size):
                xb, yb, gb = x[lo:hi], y[lo:hi], groups[lo:hi]
                out = functional_call(model, dict(state), (xb,))
                ce = F.cross_entropy(out.double(), yb, reduction="none")
                add_at(loss, gb, ce)
                wrong.index_add_(0, gb, (out.argmax(dim=1) != yb).double())  # exact counts
        return (loss / count).cpu(), (wrong / count).cpu()

    return evaluate


def grid_losses(evaluate: Callable[[Tensors], tuple[torch.Tensor, torch.Tensor]],
                base: Tensors, directions: Sequence[Tensors], coords: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Li et al. eq. (1)-(2): ``evaluate(θ + Σ_i c_i d_i)`` at every row ``c`` of ``coords``
    (``(G, len(directions))``). Only the keys of the directions move; ``evaluate`` returns
    ``(loss, error)`` tensors of one shape S. Returns ``(G, *S)`` tensors."""
    losses, errors = [], []
    for c in coords.tolist():
        state = {}
        for name, t in base.items():
            moved = t
            for ci, d in zip(c, directions):
                if ci != 0.0 and name in d:
                    moved = moved + ci * d[name].to(t.dtype)
            state[name] = moved
        loss, err = evaluate(state)
        losses.append(torch.as_tensor(loss, dtype=torch.float64))
        errors.append(torch.as_tensor(err, dtype=torch.float64))
    return torch.stack(losses), torch.stack(errors)


def interpolate_states(a: Tensors, b: Tensors, t: float) -> dict[str, torch.Tensor]:
    """``(1 − t) a + t b`` for floating tensors (parameters and batch-norm running statistics);
    integer tensors (``num_batches_tracked``) are taken from ``a``."""
    out = {}
    for name, ta in a.items():
        tb = b[name]
        out[name] = torch.lerp(ta, tb.to(ta.dtype), t) if ta.is_floating_point() else ta
    return out


def barrier_height(t: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Frankle et al. (2020) Def. 1: ``max_t [L(t) − ((1 − t) L(0) + t L(1))]`` along the last
    axis of ``loss`` sampled at ``t`` (first and last samples at t = 0 and 1). NaN rows stay
    NaN."""
    t = t.to(loss.dtype)
    line = loss[..., :1] * (1 - t) + loss[..., -1:] * t
    gap = loss - line
    out = gap.max(dim=-1).values
    return torch.where(torch.isnan(loss).any(dim=-1), torch.full_like(out, math.nan), out)
