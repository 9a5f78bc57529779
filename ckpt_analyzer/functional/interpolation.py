"""Smoothness of a classifier along straight paths between images.

Fridovich-Keil, Gontijo-Lopes & Roelofs, "Spectral Bias in Practice" (NeurIPS 2022), §3.2
and App. A.3, with the conventions of the authors' ``evaluate_interpolation.py``:

* path between x0 and x1 (normalized model inputs), ``d = ||x1 - x0||_2``:
  ``x(t) = (1 - t/d) x0 + (t/d) x1`` sampled at ``t = 0, step, 2 step, ... < d``
  (``np.arange(0, d, step)``: ``ceil(d / step)`` points; x1 itself is not sampled);
* ``y_t = softmax(f(x(t)))`` per row (the authors' script applies softmax over the whole path
  array; we use the per-row softmax the paper describes);
* cumulative difference norm ``d_t = ||y_t - y_0||_2`` (§3.2);
* aggregation over paths by the interpolation amount ``lambda = t / d`` in ``bins`` equal bins
  of [0, 1): each path is weighted equally in each bin, i.e. per bin the mean over paths of that
  path's mean ``d_t`` inside the bin; a path with no sample in a bin does not enter that bin;
* total variation of a path: ``sum_t ||y_{t+1} - y_t||_2`` over consecutive samples;
* pairs whose end points the model mispredicts are excluded (§3.2) — see :func:`correct_pairs`.

A path of length ``d = 0`` (identical images) has the single sample ``t = 0`` at ``lambda = 0``.

Paths have different lengths; all their samples are evaluated as ONE flattened stream (path by
path, in order) cut into chunks of ``batch_size`` samples, each chunk built on the fly by index
arithmetic (``searchsorted`` over the cumulative path lengths); per-path reductions are segment
sums (``index_add``). Memory: one chunk of images plus ``16 * n_paths * (bins + 1)`` bytes.

Usage on explicit image pairs::

    res = interpolate_pairs(model, x0, x1, step=1.0, bins=20)
    res.cdn, res.tv, res.paths
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .batching import add_at, batched, chunks, evaluation

__all__ = [
    "InterpolationResult",
    "PathCurves",
    "aggregate_paths",
    "correct_pairs",
    "interpolate",
    "interpolate_pairs",
    "lambda_centres",
    "path_curves",
    "path_lengths",
    "predict",
]


class PathCurves(NamedTuple):
    """Per-path results of :func:`path_curves` (n = number of paths)."""

    bin_mean: torch.Tensor  # (n, bins) float64: mean d_t of the path's samples in each bin; NaN if none
    tv: torch.Tensor  # (n,) float64: sum_t ||y_{t+1} - y_t||_2
    length: torch.Tensor  # (n,) d = ||x1 - x0||_2
    points: torch.Tensor  # (n,) int64: samples on the path, ceil(d / step) (1 when d = 0)


class InterpolationResult(NamedTuple):
    """Aggregate over the included paths (see :func:`aggregate_paths`)."""

    cdn: torch.Tensor  # (bins,) float64, NaN for a bin no path reaches
    tv: torch.Tensor  # () float64, NaN without paths
    paths: int  # number of paths included


def lambda_centres(bins: int) -> list[float]:
    """Centres of the ``bins`` equal bins of lambda in [0, 1)."""
    return [(b + 0.5) / bins for b in range(bins)]


def _check_pairs(images: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    pairs = torch.as_tensor(pairs, dtype=torch.long, device=images.device)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (n, 2) (got {tuple(pairs.shape)})")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= len(images)):
        raise ValueError(f"pairs index outside the {len(images)} images")
    return pairs


def path_lengths(images: torch.Tensor, pairs: torch.Tensor, step: float,
                 batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``d = ||x1 - x0||_2`` of each pair and its number of samples ``ceil(d / step)``.

    Args:
        images: pool of images ``(M, ...)``.
        pairs: ``(n, 2)`` positions in ``images`` of ``(x0, x1)``.
        step: spacing Δ of the samples along the path (§3.2; Δ = 1 in the paper).
        batch_size: pairs per chunk when computing the norms.

    Returns:
        ``(d, points)``: ``d`` in the images' dtype, ``points`` int64 (at least 1).
    """
    if not step > 0:
        raise ValueError(f"step must be > 0 (got {step})")
    pairs = _check_pairs(images, pairs)
    d = torch.empty(len(pairs), dtype=images.dtype, device=images.device)
    for start, stop in chunks(len(pairs), max(1, batch_size)):
        p = pairs[start:stop]
        d[start:stop] = torch.linalg.vector_norm(
            (images[p[:, 1]] - images[p[:, 0]]).flatten(1), dim=1)
    points = torch.ceil(d.to(torch.float64) / step).to(torch.long).clamp_(min=1)
    return d, points


def path_curves(model: nn.Module, images: torch.Tensor, pairs: torch.Tensor,
                step: float = 1.0, bins: int = 20, batch_size: int = 1024) -> PathCurves:
    """Per-path binned cumulative difference norm and total variation (§3.2).

    For every pair ``(x0, x1) = (images[pairs[i, 0]], images[pairs[i, 1]])`` the model is
    evaluated at ``x(t) = (1 - t/d) x0 + (t/d) x1``, ``t = 0, step, ... < d``; with
    ``y_t = softmax(f(x(t)))`` the path's ``d_t = ||y_t - y_0||_2`` is averaged within each of
    ``bins`` equal bins of ``lambda = t / d`` in [0, 1).

    Args:
        model: maps ``(B, ...)`` to logits ``(B, C)``; called under ``torch.inference_mode``.
        images: pool of normalized model inputs ``(M, ...)``.
        pairs: ``(n, 2)`` positions in ``images``.
        step: Δ, spacing of the samples in input space.
        bins: number of lambda bins.
        batch_size: samples per forward pass over the flattened stream of all paths.

    Returns:
        :class:`PathCurves` (all on ``images.device``).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1 (got {bins})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    pairs = _check_pairs(images, pairs)
    device = images.device
    n = len(pairs)
    d, points = path_lengths(images, pairs, step, batch_size)
    ends = torch.cumsum(points, 0)
    starts = ends - points
    total = int(ends[-1]) if n else 0
    d64 = d.to(torch.float64)
    sums = torch.zeros(n * bins, dtype=torch.float64, device=device)
    counts = torch.zeros(n * bins, dtype=torch.float64, device=device)
    tv = torch.zeros(n, dtype=torch.float64, device=device)
    tail = (1,) * (images.dim() - 1)
    carry_y0: torch.Tensor | None = None  # y_0 of the path open at the end of the last chunk
    carry_last: torch.Tensor | None = None  # y of the last sample of the last chunk
    with evaluation():
        for s, e in chunks(total, batch_size):
            ids = torch.arange(s, e, device=device)
            p = torch.searchsorted(ends, ids, right=True)
            j = ids - starts[p]
            dp = d64[p]
            lam = torch.where(dp > 0, j.to(torch.float64) * step / dp.clamp(min=1e-300),
                              torch.zeros_like(dp))
            lam_x = lam.to(images.dtype).view(-1, *tail)
            pp = pairs[p]
            x = (1 - lam_x) * images[pp[:, 0]] + lam_x * images[pp[:, 1]]
            y = torch.softmax(model(x).to(torch.float64), dim=1)
            # y_0 of each sample's path: in this chunk, or carried from the previous one.
            first = starts[p] - s
            y0 = y[first.clamp(min=0)]
            if carry_y0 is not None:
                y0 = torch.where((first < 0).view(-1, 1), carry_y0.view(1, -1), y0)
            dt = torch.linalg.vector_norm(y - y0, dim=1)
            prev = torch.cat([carry_last if carry_last is not None else y[:1], y[:-1]])
            seg = torch.linalg.vector_norm(y - prev, dim=1)
            seg = torch.where(j == 0, torch.zeros_like(seg), seg)
            b = torch.floor(lam * bins).to(torch.long).clamp_(0, bins - 1)
            key = p * bins + b
            add_at(sums, key, dt)
            counts.index_add_(0, key, torch.ones_like(dt))  # whole numbers: exact in any order
            add_at(tv, p, seg)
            carry_y0, carry_last = y0[-1], y[-1:]
    bin_mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return PathCurves(bin_mean.view(n, bins), tv, d, points)


def aggregate_paths(bin_mean: torch.Tensor, tv: torch.Tensor) -> InterpolationResult:
    """Average per-path results with every path weighted equally in each bin (§3.2).

    ``cdn[b]`` = mean over the paths having a sample in bin b of their mean ``d_t`` in b
    (NaN when no path has one); ``tv`` = mean over paths of their total variation.
    """
    n, bins = bin_mean.shape
    if n == 0:
        nan = torch.full((bins,), float("nan"), dtype=torch.float64, device=bin_mean.device)
        return InterpolationResult(nan, nan[0].clone(), 0)
    cdn = torch.nanmean(bin_mean.to(torch.float64), dim=0)
    return InterpolationResult(cdn, tv.to(torch.float64).mean(), n)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes ``argmax f(x)`` of ``images``, in batches, under inference mode."""
    out = batched(lambda x: model(x).argmax(dim=1), images, batch_size=max(1, batch_size))
    return out if out is not None else torch.empty(0, dtype=torch.long, device=images.device)


def correct_pairs(pred: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mask ``(n,)`` of pairs whose two end points are predicted as their true labels (§3.2)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long, device=pred.device)
    labels = labels.to(pred.device)
    return (pred[pairs[:, 0]] == labels[pairs[:, 0]]) & (pred[pairs[:, 1]] == labels[pairs[:, 1]])


def interpolate(model: nn.Module, images: torch.Tensor, pairs: torch.Tensor,
                labels: torch.Tensor | None = None, step: float = 1.0, bins: int = 20,
                batch_size: int = 1024) -> InterpolationResult:
    """Cumulative difference norm curve, path count and mean total variation (§3.2).

    With ``labels`` (true labels of ``images``), pairs with a mispredicted end point are
    excluded before any path is evaluated; an excluded pair contributes nothing.
    """
    pairs = _check_pairs(images, pairs)
    if labels is not None and len(pairs):
        used = torch.unique(pairs)
        pred = torch.full((len(images),), -1, dtype=torch.long, device=images.device)
        pred[used] = predict(model, images[used], batch_size)
        pairs = pairs[correct_pairs(pred, labels, pairs)]
    curves = path_curves(model, images, pairs, step=step, bins=bins, batch_size=batch_size)
    return aggregate_paths(curves.bin_mean, curves.tv)


def interpolate_pairs(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor,
                      labels0: torch.Tensor | None = None,
                      labels1: torch.Tensor | None = None, step: float = 1.0, bins: int = 20,
                      batch_size: int = 1024) -> InterpolationResult:
    """:func:`interpolate` on explicit pairs ``(x0[i], x1[i])`` (labels optional, both or none)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape (got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)})")
    if (labels0 is None) != (labels1 is None):
        raise ValueError("give both labels0 and labels1, or neither")
    n = len(x0)
    images = torch.cat([x0, x1])
    idx = torch.arange(n, device=x0.device)
    pairs = torch.stack([idx, idx + n], dim=1)
    labels = None if labels0 is None else torch.cat([labels0, labels1])  # type: ignore[list-item]
    return interpolate(model, images, pairs, labels, step=step, bins=bins, batch_size=batch_size)
