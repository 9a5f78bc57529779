"""Scale-aware perturbation sizes: ``auto`` = the papers' CIFAR-10 setting, scaled by image norm.

Zhang & Wu chose the spectrum half-width ``h = 0.5`` and Fridovich-Keil et al. the path step
``Δ = 1`` on CIFAR-10 (3×32×32 images). On other data the same number is a different
perturbation: on 8×8 digits a spectrum segment of 2h = 1 covers 26% of an image's norm
(about 3.4% on CIFAR-10) and interpolation paths have 7-9 samples, fewer than the 20 λ bins.
``auto`` keeps the size *relative to the dataset's mean image norm* equal to the papers':

    resolved = paper_value × N(this dataset) / N(CIFAR-10)

with N the root-mean-square image norm ``sqrt(E‖x‖²)`` taken in the space the parameter lives
in ([0, 1] pixel space, or the normalized model input space), rounded to 3 significant digits
(so CIFAR-10 itself resolves to the papers' 0.5 and 1.0, and the stored number is stable across
devices). N(this dataset) is computed over the run's training split.

CIFAR-10's N comes from its published per-channel statistics over all training pixels,
mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616) (the values
:mod:`ckpt_analyzer.data.vision` normalizes with): ``E[x_c²] = std_c² + mean_c²`` exactly for
population statistics over all pixels, so ``E‖x‖² = 1024 · Σ_c (std_c² + mean_c²)`` and
N_pixel = 29.71 (exact up to the 4-digit rounding of the published numbers). In the normalized
input space each channel has zero mean and unit variance, so N_input = sqrt(3072) = 55.43.
The RMS norm is used rather than the mean norm E‖x‖ because the published statistics determine
it exactly; for the datasets here the two differ by a few percent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .base import RunData

Space = Literal["pixel", "input"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_PIXELS = 32 * 32
#: RMS image norm of CIFAR-10 in [0, 1] pixel space (≈ 29.71).
CIFAR10_RMS_NORM_PIXEL = math.sqrt(CIFAR10_PIXELS * sum(
    s * s + m * m for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)))
#: RMS image norm of CIFAR-10 in its normalized input space (sqrt(3072) ≈ 55.43).
CIFAR10_RMS_NORM_INPUT = math.sqrt(3 * CIFAR10_PIXELS)


def rms_norm(data: RunData, space: Space) -> float:
    """``sqrt(mean over the training images of ‖x‖²)`` in ``space``, in float64 on the CPU
    from the start (the stored inputs are the same on every device, so the result is too)."""
    from ..data import denormalize

    x = data.x_train.detach().cpu().double()
    if space == "pixel":
        x = denormalize(x, data.mean.detach().cpu(), data.std.detach().cpu())
    flat = x.flatten(1)
    return float(flat.pow(2).sum(dim=1).mean().sqrt()) if len(flat) else math.nan


def resolve_auto(paper_value: float, data: RunData, space: Space) -> float:
    """``paper_value`` scaled by this dataset's RMS image norm over CIFAR-10's, 3 significant
    digits (module docstring)."""
    ref = CIFAR10_RMS_NORM_PIXEL if space == "pixel" else CIFAR10_RMS_NORM_INPUT
    value = paper_value * rms_norm(data, space) / ref
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"cannot scale {paper_value} to images of RMS norm "
                         f"{rms_norm(data, space)} (empty or all-zero training split)")
    return float(f"{value:.3g}")
