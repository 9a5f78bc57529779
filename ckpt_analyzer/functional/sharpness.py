"""Loss sharpness in input space over data-driven volumes.

Gamba, Englesson, Björkman, Azizpour, "Deep Double Descent via Smooth Interpolation"
(TMLR 2023), §3, with the defaults of the authors' public code (docs/probes.md):

* eq. (1)-(2): the Jacobian of the per-sample loss w.r.t. the input, ``J(x, y) = ∂L(x, y)/∂x``,
  and its norm ``‖J(x, y)‖₂`` (:func:`input_gradients`, :func:`jacobian_norm`).
* eq. (5): the tangent Hessian norm from M weak colour jitters ``x_m`` of x, as defined in
  docs/probes.md: ``H = sqrt(mean_m ‖(J(x) − J(x_m)) / δ‖²)`` (:func:`tangent_hessian_norm`,
  :func:`color_jitter`, :func:`draw_jitters`).
* §3.4: SVD-erasure augmentations; path p at strength s zeroes the singular values with
  (0-based) indices ``[side − s − p, side − p)`` of each channel of a 32-pixel image
  (:func:`svd_erase`, :func:`svd_erasure_path`); on other ranks the whole window is scaled
  (:func:`erasure_windows`, :func:`svd_erasure_windows`, :func:`top_share`).
* eq. (6)-(7): a metric integrated along each path with the trapezoid rule, divided by the path
  length and averaged over paths, cumulatively per anchor (:func:`geodesic_integrate`,
  :func:`segment_lengths`); eq. (7)'s average over points is left to the caller.

Usage from a notebook::

    g, loss, correct = input_gradients(model, x, y, batch_size=512)
    J = jacobian_norm(g)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batching import chunks, evaluation

__all__ = [
    "AUTHORS_TOP_SHARE",
    "BRIGHTNESS",
    "CONTRAST",
    "REFERENCE_SIDE",
    "SATURATION",
    "color_jitter",
    "draw_jitters",
    "erasure_strengths",
    "erasure_windows",
    "geodesic_integrate",
    "gradient_blocker",
    "input_gradients",
    "jacobian_norm",
    "segment_lengths",
    "svd_erase",
    "svd_erasure_path",
    "svd_erasure_windows",
    "tangent_hessian_norm",
    "top_share",
]

#: Op ids of :func:`color_jitter` orders.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
#: Image side for which ``svd_path`` strengths are given (CIFAR's 32 pixels).
REFERENCE_SIDE = 32
#: Share of anchors that erase the top singular value in the authors' setting (32-pixel images,
#: 8 paths, ``svd_path = [5,10,15,20,22,25]``): only path 7 at strength 25, 1 of 48.
AUTHORS_TOP_SHARE = 1 / 48


# --------------------------------------------------------------------------- gradients


def input_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample input gradients of the per-sample cross-entropy, eq. (1).

    For each chunk of ``batch_size`` samples, ONE backward pass of the summed loss w.r.t. the
    input gives every sample's own gradient exactly, because in eval mode samples do not
    interact (``∂(Σ_j L_j)/∂x_i = ∂L_i/∂x_i``). Only the input's gradient is computed
    (``torch.autograd.grad``); parameters' ``.grad`` are left untouched. The model is put in
    eval mode for the call and every module's mode is restored afterwards.

    Args:
        model: maps ``(B, *x.shape[1:])`` to logits ``(B, classes)``.
        x: inputs ``(N, ...)`` in the model's input space.
        y: integer labels ``(N,)``; the loss is ``cross_entropy(model(x), y)`` per sample.
        batch_size: samples per forward/backward pass.

    Returns:
        ``(grads, loss, correct)``: ``grads`` shaped like ``x``, the per-sample loss ``(N,)``
        and whether ``argmax`` of the logits equals ``y`` ``(N,)`` (bool).

    Raises:
        TypeError: the model blocks gradients w.r.t. its input; names the blocking module.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    grads: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    correct: list[torch.Tensor] = []
    try:
        with evaluation(grad=True):
            for lo, hi in chunks(len(x), batch_size):
                xb = x[lo:hi].detach().requires_grad_(True)
                yb = y[lo:hi]
                logits = model(xb)
                if not (
                    isinstance(logits, torch.Tensor)
                    and logits.is_floating_point()
                    and logits.requires_grad
                ):
                    raise _blocked(model, xb)
                loss = F.cross_entropy(logits, yb, reduction="none")
                (g,) = torch.autograd.grad(loss.sum(), xb, allow_unused=True)
                if g is None:
                    raise _blocked(model, xb)
                grads.append(g)
                losses.append(loss.detach())
                correct.append(logits.detach().argmax(dim=1) == yb)
    finally:
        for m, training in modes:
            m.training = training
    if not grads:
        return (torch.empty_like(x), x.new_empty((0,)),
                torch.empty(0, dtype=torch.bool, device=x.device))
    if len(grads) == 1:
        return grads[0], losses[0], correct[0]
    return torch.cat(grads), torch.cat(losses), torch.cat(correct)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def gradient_blocker(model: nn.Module, x: torch.Tensor) -> str | None:
    """Describe where ``model`` cuts the gradient path from its input, or ``None``.

    Runs one forward pass on ``x[:2]`` with the parameters' ``requires_grad`` switched off (so
    ``requires_grad`` of an activation means "depends differentiably on the input") and forward
    hooks on every module. Reports, in order of preference: the first submodule whose inputs
    require grad but whose outputs do not (a ``.detach()``, ``torch.no_grad()`` or integer op
    inside it); else the first submodule fed floating inputs that do not require grad (the cut
    is in its parent's forward between modules); else the model's own forward.
    """
    names = {id(m): n for n, m in model.named_modules()}
    produced: list[tuple[str, nn.Module]] = []
    starved: list[tuple[str, nn.Module]] = []

    def pre_hook(mod: nn.Module, args: Any) -> None:
        ts = [t for t in _tensors(args) if t.is_floating_point()]
        if ts and not any(t.requires_grad for t in ts) and names[id(mod)]:
            starved.append((names[id(mod)], mod))

    def post_hook(mod: nn.Module, args: Any, out: Any) -> None:
        ins = any(t.requires_grad for t in _tensors(args))
        outs = any(t.requires_grad for t in _tensors(out))
        if ins and not outs:
            produced.append((names[id(mod)], mod))

    flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        with torch.enable_grad():
            out = model(x[:2].detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    for name, mod in produced:
        if name:
            return (f"module '{name}' ({type(mod).__name__}) returns outputs that do not require "
                    "grad although its inputs do (.detach(), torch.no_grad() or an integer op)")
    if starved:
        name, mod = starved[0]
        return (f"module '{name}' ({type(mod).__name__}) receives inputs that no longer require "
                "grad (cut in its parent's forward)")
    if produced or not any(t.requires_grad for t in _tensors(out)):
        return f"the forward of the model itself ({type(model).__name__})"
    return None


def _blocked(model: nn.Module, x: torch.Tensor) -> TypeError:
    where = gradient_blocker(model, x) or f"the model ({type(model).__name__})"
    return TypeError(f"the model blocks gradients w.r.t. its input, needed for sharpness: {where}")


def jacobian_norm(grads: torch.Tensor) -> torch.Tensor:
    """L2 (Frobenius) norm of each sample's loss Jacobian, ``‖J(x_n, y_n)‖`` of eq. (2).

    ``grads`` ``(N, ...)`` -> ``(N,)``. The expectation of eq. (2) is left to the caller.
    """
    return grads.flatten(1).norm(dim=1)


def tangent_hessian_norm(g0: torch.Tensor, gm: torch.Tensor, delta: float) -> torch.Tensor:
    """Tangent Hessian norm by finite differences of input gradients, eq. (5) (docs/probes.md).

    ``H_n = sqrt(mean_m ‖(g0_n − gm_{n,m}) / δ‖²)`` where ``g0`` ``(N, D)`` holds the input
    gradients at the points and ``gm`` ``(N, M, D)`` those at their M weak augmentations
    (trailing dims beyond D are flattened). Returns ``(N,)``.

    docs/probes.md records the authors' code: the mean over m inside the square root and a single
    ``1/δ`` (the paper's typeset eq. 5 shows a ``1/(M²δ²)`` prefactor instead).
    """
    if delta <= 0:
        raise ValueError(f"delta must be > 0 (got {delta})")
    a = g0.flatten(1)
    b = gm.flatten(2)
    if b.shape[0] != a.shape[0] or b.shape[2] != a.shape[1]:
        raise ValueError(f"g0 {tuple(g0.shape)} and gm {tuple(gm.shape)} do not match")
    diff = (a.unsqueeze(1) - b) / delta
    return diff.pow(2).sum(dim=-1).mean(dim=-1).sqrt()


# --------------------------------------------------------------------------- colour jitter


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] == 3:
        r, g, b = x.unbind(dim=-3)
        return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)
    return x


def _blend(a: torch.Tensor, b: torch.Tensor | float, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def color_jitter(x01: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Weak colour jitter in [0, 1] pixel space, per sample (§3.2, eq. 5's ``x_n + u_m``).

    Applies brightness, contrast and saturation with per-sample factors in a per-sample order,
    exactly as torchvision's ``adjust_brightness`` (blend with zeros), ``adjust_contrast``
    (blend with the mean of the grayscale image) and ``adjust_saturation`` (blend with the
    grayscale image; a no-op for one channel, without clamping, like torchvision), each blend
    clamped to ``[0, 1]``; hue is off. Vectorized: each of the 3 steps evaluates the 3 ops on
    the whole batch and selects per sample.

    Args:
        x01: images ``(B, C, H, W)`` in [0, 1] pixel space, C = 1 or 3.
        factors: ``(B, 3)`` brightness, contrast, saturation factors (≥ 0).
        order: ``(B, 3)`` a permutation of the op ids (BRIGHTNESS=0, CONTRAST=1,
            SATURATION=2) per sample, applied left to right.
    """
    if x01.ndim != 4 or x01.shape[1] not in (1, 3):
        raise ValueError(f"colour jitter needs (B, 1|3, H, W) images, got {tuple(x01.shape)}")
    n = x01.shape[0]
    if factors.shape != (n, 3) or order.shape != (n, 3):
        raise ValueError(f"factors {tuple(factors.shape)} / order {tuple(order.shape)} must be "
                         f"({n}, 3)")
    f = factors.to(device=x01.device, dtype=x01.dtype).view(n, 3, 1, 1, 1)
    op = order.to(device=x01.device).view(n, 3, 1, 1, 1)
    out = x01
    for step in range(3):
        bright = _blend(out, 0.0, f[:, BRIGHTNESS])
        contrast = _blend(out, _gray(out).mean(dim=(-3, -2, -1), keepdim=True), f[:, CONTRAST])
        sat = out if out.shape[1] == 1 else _blend(out, _gray(out), f[:, SATURATION])
        o = op[:, step]
        out = torch.where(o == BRIGHTNESS, bright, torch.where(o == CONTRAST, contrast, sat))
    return out


def draw_jitters(n: int, m: int, strength: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw M colour jitters for each of n points (as torchvision's ``ColorJitter``).

    Factors are uniform in ``[max(0, 1 − s), 1 + s]`` for brightness, contrast and saturation
    (strength ``s``, 0.01 in the authors' code), and the op order is a uniformly random
    permutation. Returns ``factors`` ``(n, m, 3)`` float64 and ``orders`` ``(n, m, 3)`` int64,
    on the generator's device.
    """
    if strength < 0:
        raise ValueError(f"jitter strength must be >= 0 (got {strength})")
    dev = generator.device
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    u = torch.rand((n, m, 3), generator=generator, dtype=torch.float64, device=dev)
    factors = lo + (hi - lo) * u
    orders = torch.rand((n, m, 3), generator=generator, device=dev).argsort(dim=-1)
    return factors, orders


# --------------------------------------------------------------------------- SVD erasure


def svd_erase(x01: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Zero the singular values ``[start, stop)`` of each channel of each image (§3.4).

    Each channel ``x[n, c]`` (H x W) is factorized ``U Σ Vᵀ`` (singular values sorted
    decreasingly, 0-based indices) and rebuilt with ``Σ[start:stop] = 0``; ``start`` is clipped
    at 0 and ``stop`` at ``min(H, W)``. The result is not clamped. ``x01`` ``(N, C, H, W)``
    (any leading dims), same dtype out.
    """
    if stop < start:
        raise ValueError(f"stop ({stop}) < start ({start})")
    r = min(x01.shape[-2:])
    idx = torch.arange(r, device=x01.device)
    keep = ~((idx >= max(0, start)) & (idx < stop))
    u, s, vh = torch.linalg.svd(x01, full_matrices=False)
    return (u * (s * keep).unsqueeze(-2)) @ vh


def svd_erasure_path(x01: torch.Tensor, strengths: Sequence[int], paths: int) -> torch.Tensor:
    """The anchors of P erasure paths per image (§3.4, docs/probes.md).

    Path p (0..P−1) at strength s (number of singular values erased) zeroes the singular values
    with 0-based indices ``[side − s − p, side − p)`` of each channel, window clipped at 0
    (the paper's 1-based ``i = w − k − p + 1, …, w − p``). One SVD per channel serves all
    windows. ``x01`` ``(N, C, H, W)`` -> ``(N, P, K, C, H, W)``, unclamped.
    """
    if x01.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got {tuple(x01.shape)}")
    side = min(x01.shape[-2:])
    dev = x01.device
    s_k = torch.as_tensor(list(strengths), device=dev).view(1, -1, 1)
    p = torch.arange(paths, device=dev).view(-1, 1, 1)
    idx = torch.arange(side, device=dev).view(1, 1, -1)
    keep = ~((idx >= (side - s_k - p).clamp(min=0)) & (idx < side - p))  # (P, K, side)
    u, s, vh = torch.linalg.svd(x01, full_matrices=False)  # (N,C,H,r) (N,C,r) (N,C,r,W)
    s = s[:, None, None] * keep[None, :, :, None, :].to(s.dtype)  # (N, P, K, C, r)
    return (u[:, None, None] * s.unsqueeze(-2)) @ vh[:, None, None]


def erasure_windows(svd_path: Sequence[int], paths: int, rank: int,
                    reference: int = REFERENCE_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """The erased windows of P paths x K strengths, scaled to images of rank ``rank`` (§3.4).

    The authors' window of path p at strength s on ``reference``-pixel images is
    ``[b, e) = [R − s − p, R − p)`` (0-based singular value indices, ``b`` clipped at 0). On an
    image of rank r both ends are mapped with ``φ(i) = ceil(i · r / R)``, so the window keeps
    the same fraction of the spectrum: ``[φ(b), φ(e))``, and at least one value is erased
    (``start ≤ stop − 1``). Because ``φ(b) = 0`` only when ``b = 0``, an anchor erases the top
    singular value (index 0) on a rank-r image exactly when the authors' window does on
    32-pixel images (for the defaults: path 7 at strength 25 only). ``φ`` is the identity for
    ``r == R``, so 32-pixel images get the authors' windows exactly.

    On small ranks several paths map onto identical windows; a path whose K windows all equal
    those of an earlier path is dropped (it would only repeat anchors). Consecutive strengths
    closer than one singular value at rank r may give the same window within a path (a
    zero-length segment, which the volume integral skips).

    Returns:
        ``windows`` int64 ``(P', K, 2)`` of ``[start, stop)`` per kept path and strength, and
        ``ids`` int64 ``(P',)``: the authors' path index p of each kept path.

    Raises:
        ValueError: strengths not strictly increasing integers in ``[1, R)``, ``paths`` not in
            ``[1, R]``, or ``rank < 1``.
    """
    vals = [int(s) for s in svd_path]
    if not vals or vals[0] < 1 or any(b <= a for a, b in itertools.pairwise(vals)):
        raise ValueError(f"svd_path must be strictly increasing integers >= 1, got {vals}")
    if vals[-1] >= reference:
        raise ValueError(f"svd_path strength {vals[-1]} reaches the {reference}-pixel reference "
                         f"side (strengths are given for {reference}-pixel images; must be "
                         f"< {reference})")
    if not 1 <= paths <= reference:
        raise ValueError(f"paths={paths} must be in [1, {reference}]: path p ends its window at "
                         f"{reference} − p")
    if rank < 1:
        raise ValueError(f"rank must be >= 1 (got {rank})")

    def phi(i: int) -> int:
        return -((-i * rank) // reference)  # exact ceil(i * rank / reference)

    kept: list[tuple[tuple[int, int], ...]] = []
    ids: list[int] = []
    for p in range(paths):
        stop = phi(reference - p)
        row = tuple((min(phi(max(0, reference - s - p)), stop - 1), stop) for s in vals)
        if row not in kept:
            kept.append(row)
            ids.append(p)
    return (torch.tensor(kept, dtype=torch.int64).view(len(kept), len(vals), 2),
            torch.tensor(ids, dtype=torch.int64))


def top_share(windows: torch.Tensor, anchors: int | None = None) -> float:
    """Share of anchors whose window erases the top singular value (``start == 0``).

    ``windows`` ``(P', K, 2)`` as from :func:`erasure_windows`. ``anchors`` is the number of
    anchors the share is taken over, by default ``P' · K``; pass the configured ``P · K`` to
    count a dropped (collapsed) path as the copy it was. The authors' share is
    :data:`AUTHORS_TOP_SHARE` (1 of 48).
    """
    total = windows.shape[0] * windows.shape[1] if anchors is None else anchors
    return int((windows[..., 0] == 0).sum()) / total if total else 0.0


def svd_erasure_windows(x01: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """The anchors of P erasure paths per image for explicit windows (§3.4).

    Anchor (p, k) zeroes the singular values ``[windows[p, k, 0], windows[p, k, 1])`` of each
    channel; one SVD per channel serves all windows. ``x01`` ``(N, C, H, W)``, ``windows``
    ``(P, K, 2)`` -> ``(N, P, K, C, H, W)``, unclamped (same as :func:`svd_erasure_path` for
    the windows ``[side − s − p, side − p)``).
    """
    if x01.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got {tuple(x01.shape)}")
    if windows.ndim != 3 or windows.shape[-1] != 2:
        raise ValueError(f"windows must be (P, K, 2), got {tuple(windows.shape)}")
    side = min(x01.shape[-2:])
    dev = x01.device
    w = windows.to(dev)
    idx = torch.arange(side, device=dev).view(1, 1, -1)
    keep = ~((idx >= w[..., :1]) & (idx < w[..., 1:]))  # (P, K, side)
    u, s, vh = torch.linalg.svd(x01, full_matrices=False)  # (N,C,H,r) (N,C,r) (N,C,r,W)
    s = s[:, None, None] * keep[None, :, :, None, :].to(s.dtype)  # (N, P, K, C, r)
    return (u[:, None, None] * s.unsqueeze(-2)) @ vh[:, None, None]


def erasure_strengths(svd_path: Sequence[int], side: int,
                      reference: int = REFERENCE_SIDE) -> tuple[int, ...]:
    """Scale erasure strengths given for ``reference``-pixel images to a ``side``-pixel image.

    Rule: ``s' = max(1, floor(s · side / reference + 1/2))`` (round half up); a scaled strength
    ``≥ side`` is an error; then ties are broken upwards (``s'_k = max(s'_k, s'_{k−1} + 1)``) to
    keep the path strictly increasing, an error if that reaches the side. Identity for
    ``side == reference``. Default [5,10,15,20,22,25] gives [1,3,4,5,6,7] on 8x8 digits and
    [4,9,13,18,19,22] on 28x28 MNIST.

    This scales the strengths alone, not the path offsets (which then erase the top singular
    value at 26 of 48 digit anchors); the ``sharpness`` probe uses :func:`erasure_windows`.

    Raises:
        ValueError: not strictly increasing positive integers, a strength reaching the side,
            or more strengths than the side allows (``side − 1``).
    """
    vals = [int(s) for s in svd_path]
    if not vals or vals[0] < 1 or any(b <= a for a, b in itertools.pairwise(vals)):
        raise ValueError(f"svd_path must be strictly increasing integers >= 1, got {vals}")
    out: list[int] = []
    for s in vals:
        t = max(1, math.floor(s * side / reference + 0.5))
        if t >= side:
            raise ValueError(f"svd_path strength {s} reaches the {side}-pixel image side "
                             f"(scaled to {t}; must be < {side})")
        out.append(max(t, out[-1] + 1) if out else t)
    if out[-1] >= side:
        raise ValueError(f"svd_path has {len(vals)} strengths but a {side}-pixel image allows at "
                         f"most {side - 1} distinct ones")
    return tuple(out)


# --------------------------------------------------------------------------- integration


def segment_lengths(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """L2 lengths of the Euclidean segments of each path, ``len(π_p)`` of eq. (6) by parts.

    ``x`` ``(N, ...)`` the points, ``anchors`` ``(N, P, K, ...)`` the path anchors (same space)
    -> ``(N, P, K)``: segment k joins anchor k to anchor k+1, anchor 0 being the point itself.
    """
    n, p, k = anchors.shape[:3]
    a = anchors.reshape(n, p, k, -1)
    x0 = x.reshape(n, 1, 1, -1).expand(n, p, 1, a.shape[-1])
    return torch.diff(torch.cat([x0, a], dim=2), dim=2).norm(dim=-1)


def geodesic_integrate(values: torch.Tensor, segment_lengths: torch.Tensor) -> torch.Tensor:
    """Volume integrals of a metric along P paths per point, eq. (6), cumulative per anchor.

    For volume v ≥ 1, each path's metric is integrated from anchor 0 (the point) to anchor v
    with the trapezoid rule over the segment lengths, divided by the path length up to v, and
    averaged over the P paths; volume 0 is the value at the point. A path whose length up to v
    is zero (all its anchors coincide with the point) contributes the point's value.

    Args:
        values: ``(N, P, K+1)`` metric at the anchors, index 0 the point (same for every path).
        segment_lengths: ``(N, P, K)``, segment k from anchor k to anchor k+1.

    Returns:
        ``(N, K+1)``; eq. (7)'s average over points is left to the caller.
    """
    if values.ndim != 3 or segment_lengths.shape != (*values.shape[:2], values.shape[2] - 1):
        raise ValueError(f"values {tuple(values.shape)} must be (N, P, K+1) and segment_lengths "
                         f"{tuple(segment_lengths.shape)} (N, P, K)")
    seg = segment_lengths.to(values.dtype)
    area = torch.cumsum(seg * (values[..., 1:] + values[..., :-1]) / 2, dim=-1)
    length = torch.cumsum(seg, dim=-1)
    pos = length > 0
    point = values[..., :1]
    avg = torch.where(pos, area / torch.where(pos, length, torch.ones_like(length)), point)
    return torch.cat([point, avg], dim=-1).mean(dim=1)
