"""Fourier spectrum of a network's logits along short lines through data points.

Zhang & Wu, "Rethink the Connections among Generalization, Memorization and the Spectral
Bias of DNNs" (IJCAI 2021), §2.1-2.2:

* eq. (1): for a point x and a unit direction v, the DFT of the c-th logit sampled at N evenly
  spaced points of the segment [x - h v, x + h v]:
  ``F_{c,x}(k) = sum_n f_c(x + (2n - N)/N * h * v) * exp(-2 pi i n k / N)``.
  As in the authors' code the sum runs over n = 0..N-1 (the +h end is excluded) and the
  transform is numpy's unnormalized ``rfft``, so k = 0..N/2.
* eq. (2): ``A_k = 1/C * sum_c E_x |F_{c,x}(k)|`` (mean over points and classes).
* eq. (3): ``R_k = log(A_k / A_0)``.

Raw logits are used, never probabilities (the paper's argument: the spectrum then does not
depend non-linearly on a rescaling of the last layer).

Usage from a notebook, on explicit points and directions::

    v = torch.randn_like(x); v /= v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    A = line_spectrum(model, x, v, n=128, h=0.5)
    R = log_ratio(A)
"""

from __future__ import annotations

import torch
from torch import nn

from .batching import chunks, evaluation

__all__ = ["line_logits", "line_offsets", "line_spectrum", "log_ratio", "spectrum"]


def line_offsets(n: int, h: float, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Offsets ``t_i = -h + 2h i / n`` for i = 0..n-1 (eq. 1; the endpoint +h is excluded).

    Returns a tensor of shape ``(n,)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    i = torch.arange(n, dtype=torch.float64)
    return (-h + 2.0 * h * i / n).to(device=device, dtype=dtype)


def _channel_view(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(1, -1, *([1] * (ndim - 2)))


def line_logits(model: nn.Module, x: torch.Tensor, v: torch.Tensor, n: int = 128,
                h: float = 0.5, batch_size: int = 1024,
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``model`` at ``x_p + t_i * v_p`` for every point p and offset t_i (eq. 1).

    Args:
        model: maps a batch ``(B, *x.shape[1:])`` to logits ``(B, C)``; called under
            ``torch.inference_mode`` (put it in eval mode yourself).
        x: points ``(P, C_in, H, W)`` (any trailing shape) in the model's input space.
        v: directions, same shape as ``x``.
        n: number of samples per line (N of eq. 1).
        h: half-width of the segment.
        batch_size: samples per forward pass. The P*n samples form ONE flattened stream
            (point-major) cut into chunks of ``batch_size``; each chunk's inputs are built on
            the fly, so memory is bounded by one chunk.
        scale: optional per-channel factor ``(C_in,)`` multiplying ``v``. With directions drawn
            in [0, 1] pixel space and a model that sees normalized inputs,
            ``normalize(denormalize(x) + t v) = x + t v / std``: pass ``scale = 1 / std``.

    Returns:
        Logits ``(P, n, C)`` on ``x.device``.
    """
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape (got {tuple(x.shape)} and {tuple(v.shape)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    num_points = x.shape[0]
    t = line_offsets(n, h, device=x.device, dtype=x.dtype)
    direction = v.to(device=x.device, dtype=x.dtype)
    if scale is not None:
        direction = direction * _channel_view(scale.to(device=x.device, dtype=x.dtype), x.dim())
    total = num_points * n
    tail = (1,) * (x.dim() - 1)
    out: torch.Tensor | None = None
    with evaluation():
        for start, stop in chunks(total, batch_size):
            ids = torch.arange(start, stop, device=x.device)
            p = torch.div(ids, n, rounding_mode="floor")
            i = ids - p * n
            inputs = torch.addcmul(x[p], t[i].view(-1, *tail), direction[p])
            logits = model(inputs)
            if out is None:
                out = logits.new_empty((total, logits.shape[1]))
            out[start:stop] = logits
    if out is None:
        return x.new_empty((0, n, 0))
    return out.view(num_points, n, -1)


def spectrum(logits: torch.Tensor) -> torch.Tensor:
    """``|F_{c,x}(k)|`` of eq. (1): magnitudes of the unnormalized rfft along the line.

    Args:
        logits: ``(P, n, C)`` samples along each line (see :func:`line_logits`).

    Returns:
        ``(P, n // 2 + 1, C)`` float64 magnitudes (computed in float64, like numpy's rfft).
    """
    return torch.fft.rfft(logits.to(torch.float64), dim=-2).abs()


def line_spectrum(model: nn.Module, x: torch.Tensor, v: torch.Tensor, n: int = 128,
                  h: float = 0.5, batch_size: int = 1024,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """``A_k`` of eq. (2): mean over points and classes of ``|F_{c,x}(k)|``.

    Arguments as :func:`line_logits`. Returns a float64 tensor ``(n // 2 + 1,)``; NaN when
    there are no points.
    """
    mags = spectrum(line_logits(model, x, v, n=n, h=h, batch_size=batch_size, scale=scale))
    if mags.numel() == 0:
        return torch.full((n // 2 + 1,), float("nan"), dtype=torch.float64, device=x.device)
    return mags.mean(dim=(0, 2))


def log_ratio(a: torch.Tensor) -> torch.Tensor:
    """``R_k = log(A_k / A_0)`` of eq. (3), along the last dimension of ``a``."""
    return torch.log(a / a[..., :1])
