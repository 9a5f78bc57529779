"""The loss and error a checkpoint's metadata records (docs/checkpoints.md): mean cross-entropy
and classification error of a model in eval mode, on the training set, its noisy points and the
test set. Written once for every writer of the contract (``ckpt-train``, ``RunWriter``, the
Lightning callback).

    L = (1/N) Σ_i −log softmax(f(x_i))_{y_i},      E = (1/N) Σ_i [argmax_c f(x_i)_c ≠ y_i]

Sums accumulate in float64 (the logits are cast to float64 before the cross-entropy), batches
of ``batch_size`` rows under :func:`torch.inference_mode`; an empty set gives NaN for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batching import chunks, evaluation

__all__ = ["METADATA_BATCH", "checkpoint_metrics", "loss_and_error"]

METADATA_BATCH = 1024
"""The batch size of the metadata's evaluation (it fixes the numbers bit for bit)."""


def loss_and_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = METADATA_BATCH) -> tuple[float, float]:
    """``(mean cross-entropy, error)`` of ``model`` on ``(x, y)`` in eval mode (the model's
    train/eval mode is restored); ``(nan, nan)`` for an empty set."""
    if len(x) == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    wrong = torch.zeros((), dtype=torch.float64, device=x.device)
    try:
        with evaluation():
            for lo, hi in chunks(len(x), batch_size):
                out = model(x[lo:hi])
                loss += F.cross_entropy(out.double(), y[lo:hi], reduction="sum")
                wrong += (out.argmax(1) != y[lo:hi]).sum()
    finally:
        model.train(was)
    return float(loss / len(x)), float(wrong / len(x))


def checkpoint_metrics(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                       noisy_mask: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                       batch_size: int = METADATA_BATCH) -> dict[str, float]:
    """The metadata's ``train_loss``, ``train_error`` (labels trained on), ``noisy_error``
    (the corrupted points, with their corrupted labels), ``test_loss`` and ``test_error``.
    Every tensor on the model's device; ``noisy_mask`` is a bool mask over the training set."""
    train_loss, train_error = loss_and_error(model, x_train, y_train, batch_size)
    _, noisy_error = loss_and_error(model, x_train[noisy_mask], y_train[noisy_mask], batch_size)
    test_loss, test_error = loss_and_error(model, x_test, y_test, batch_size)
    return {"train_loss": train_loss, "train_error": train_error, "noisy_error": noisy_error,
            "test_loss": test_loss, "test_error": test_error}
