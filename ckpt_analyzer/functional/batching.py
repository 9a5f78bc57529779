"""The one batching primitive of the hot path: every flattened stream of model evaluations
(points × offsets, paths × samples, points × anchors × jitters...) is cut into chunks here.

* :func:`chunks` yields the ``(lo, hi)`` bounds of ``n`` items in chunks of ``batch_size``;
* :func:`evaluation` is the autograd context of a chunk loop: :func:`torch.inference_mode`
  for forward-only evaluations, :func:`torch.enable_grad` for gradient ones;
* :func:`batched` applies ``fn`` to aligned chunks of tensors under that context and
  concatenates the outputs.

This is the single place for what a faster device path needs (inference mode now; pinned
transfers and autocast later). Pure: no I/O, and no host synchronization of its own, so the
number of ``.item()``-style syncs of a caller does not grow with the number of chunks.

Inference mode computes the same numbers as ``torch.no_grad`` (the same kernels, without
version counters or autograd metadata); its outputs are *inference tensors*, which cannot be
saved for a later backward pass: use ``grad=True`` or ``torch.no_grad`` for anything that
feeds autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["add_at", "batched", "chunks", "evaluation"]


def chunks(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Bounds ``(lo, hi)`` of consecutive chunks of ``batch_size`` items covering ``0..n``
    (the last one shorter); nothing when ``n == 0``. ValueError if ``batch_size < 1``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    for lo in range(0, n, batch_size):
        yield lo, min(lo + batch_size, n)


def evaluation(grad: bool = False) -> contextlib.AbstractContextManager[Any]:
    """The autograd context of a chunk loop: ``enable_grad`` with ``grad``, else
    ``inference_mode``."""
    return torch.enable_grad() if grad else torch.inference_mode()


def batched(fn: Callable[..., Any], *tensors: torch.Tensor, batch_size: int,
            grad: bool = False) -> Any:
    """``fn`` on aligned chunks of ``tensors`` (the same rows of each), outputs concatenated.

    ``fn(*chunk)`` returns a tensor or a tuple of tensors (concatenated along dim 0 each).
    Forward-only by default (:func:`torch.inference_mode`); ``grad=True`` runs the chunks
    with autograd enabled. With no rows, ``fn`` is not called and ``None`` is returned. A
    single chunk is returned as ``fn`` produced it (no copy).
    """
    if not tensors:
        raise TypeError("batched() needs at least one tensor")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors[1:]):
        raise ValueError(f"batched(): tensors of different lengths {[len(t) for t in tensors]}")
    outs: list[Any] = []
    with evaluation(grad):
        for lo, hi in chunks(n, batch_size):
            outs.append(fn(*(t[lo:hi] for t in tensors)))
    if not outs:
        return None
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def add_at(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor,
           sorted_sums: bool | None = None) -> torch.Tensor:
    """``out[index[i]] += values[i]`` for every ``i`` (1-D), in place, with the same bits on
    every run of the same inputs.

    On the CPU this is ``index_add_``, which adds in the order of ``i``. On CUDA ``index_add_``
    adds with atomics in an order that changes from run to run, so a float sum would change in
    its last bits and a probe would not repeat itself. There (or with ``sorted_sums=True``) the
    values are stably sorted by index and ``torch.segment_reduce`` sums each index's run in
    order (one thread per entry of ``out``; the run lengths are integer counts, exact in any
    order), then the sums are added to ``out``. Every size is ``len(out)`` or ``len(index)``,
    so nothing waits for the device (no host synchronization).
    """
    if sorted_sums is None:
        sorted_sums = out.device.type != "cpu"
    if not sorted_sums:
        return out.index_add_(0, index, values)
    order = torch.argsort(index, stable=True)
    lengths = torch.zeros(len(out), dtype=torch.long, device=out.device)
    lengths.index_add_(0, index, torch.ones_like(index))
    sums = torch.segment_reduce(values[order], "sum", lengths=lengths, unsafe=True, initial=0)
    out += sums.to(out.dtype)
    return out
