"""Label smoothing by a hidden wave over input space (used by the trainer and the metrics probe).

Fridovich-Keil, Gontijo-Lopes & Roelofs, "Spectral Bias in Practice" (NeurIPS 2022), §3.1 and
§4.2, as implemented in the authors' code (``add_radial_noise`` / ``add_sinusoidal_noise`` of
``spectral_bias/label_smoothing/augmentation_transforms.py``):

* radial wave: ``S(X) = sin(2 pi f (||X|| - c))`` with ``c = E_D ||X||`` (the authors hard-code
  the expected norm of a normalized CIFAR-10 image; we measure it once on the training set with
  :func:`mean_norm`);
* directional wave: ``S(X) = sin(2 pi f <X, V>)`` with V a unit-norm image-shaped direction,
  e.g. a Fourier basis image (:func:`fourier_direction`); no centring, as the authors' code;
* the paper writes ``y' = y (1 - S(X)) + 1/k`` with S in [0, 1]. What the code does, and what
  "as the authors' code" means here: the wave is shifted to ``w = 1 + S`` in [0, 2]; with
  amplitude normalization (their default ``normalize_amplitude=True``) the amplitude becomes
  ``a_eff = a / mean_batch(w)`` (0 if that mean is 0), so the batch-average smoothing mass is
  exactly ``a``; then ``r = a_eff * w`` per sample and ``y' = y (1 - r) + r / C``. The batch is
  whatever batch the caller passes (the training mini-batch; the authors also smooth test labels
  per evaluation batch of 256). Targets always sum to 1; like the authors' code we do not clip,
  so when ``r > C / (C - 1)`` the true-class target is negative (``r <= 2 a / mean_batch(w)``,
  so this needs a large amplitude and a batch sitting in the troughs of the wave).

X is the model input (normalized, after augmentation) flattened per sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .batching import chunks

__all__ = [
    "KINDS",
    "LabelSmoother",
    "LabelSmoothing",
    "check_smoothing",
    "fourier_direction",
    "mean_norm",
    "smooth_targets",
    "smoothed_test_loss",
    "smoothing_wave",
    "soft_cross_entropy",
]

KINDS = ("radial", "direction")


def check_smoothing(kind: str, frequency: float, amplitude: float) -> None:
    """Raise ValueError (one line) for an unknown kind, ``frequency <= 0`` or an
    amplitude outside [0, 1]."""
    if kind not in KINDS:
        raise ValueError(f"label smoothing: unknown kind '{kind}' (choose from {', '.join(KINDS)})")
    if not (isinstance(frequency, (int, float)) and math.isfinite(frequency) and frequency > 0):
        raise ValueError(f"label smoothing: frequency must be a finite number > 0 (got {frequency})")
    if not (isinstance(amplitude, (int, float)) and 0.0 <= amplitude <= 1.0):
        raise ValueError(f"label smoothing: amplitude must be in [0, 1] (got {amplitude})")


def mean_norm(x: torch.Tensor, batch_size: int = 4096) -> float:
    """``E ||X||_2``: mean over samples of the per-sample L2 norm (the centre c of §3.1)."""
    if len(x) == 0:
        raise ValueError("mean_norm of an empty set")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo, hi in chunks(len(x), batch_size):
        total = total + torch.linalg.vector_norm(x[lo:hi].flatten(1).to(torch.float64),
                                                 dim=1).sum()
    return float(total) / len(x)


def fourier_direction(k: int | tuple[int, int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Unit-norm Fourier basis image of spatial frequency ``k`` (§4.2), shape ``(C, H, W)``.

    ``k = (ky, kx)`` are signed frequency offsets from DC (cycles per image side); an int k means
    the diagonal ``(k, k)``, as the paper's "diagonal Fourier basis image with frequency k".
    Values follow the authors' ``get_fourier_basis_image``: the real inverse FFT of
    ``(1 + 1j) / 2`` at frequency k and its conjugate at -k, i.e.
    ``cos(theta) - sin(theta)`` with ``theta = 2 pi (ky y / H + kx x / W)`` (a constant for k = 0,
    ``(-1)^y`` at Nyquist), the same in every channel, scaled to unit L2 norm.
    """
    if len(shape) != 3:
        raise ValueError(f"fourier_direction: shape must be (C, H, W) (got {tuple(shape)})")
    ky, kx = (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))
    channels, height, width = (int(s) for s in shape)
    if abs(ky) > height // 2 or abs(kx) > width // 2:
        raise ValueError(f"fourier_direction: frequency {(ky, kx)} is beyond Nyquist for an "
                          f"image of {height}x{width}")
    yy = torch.arange(height, dtype=torch.float64).view(-1, 1)
    xx = torch.arange(width, dtype=torch.float64).view(1, -1)
    theta = 2 * math.pi * (ky * yy / height + kx * xx / width)
    plane = torch.cos(theta) - torch.sin(theta)
    image = plane.expand(channels, height, width)
    return (image / torch.linalg.vector_norm(image)).to(torch.float32).contiguous()


def smoothing_wave(x: torch.Tensor, kind: str, frequency: float, center: float | None = None,
                   direction: torch.Tensor | None = None) -> torch.Tensor:
    """``S(X)`` of §3.1 per sample, shape ``(B,)``, computed in float64 (the phase
    ``2 pi f ||X||`` is large enough for float32 rounding to show).

    ``kind="radial"``: ``sin(2 pi f (||X|| - center))`` (``center`` = :func:`mean_norm` of the
    training set). ``kind="direction"``: ``sin(2 pi f <X, V>)`` with ``V = direction /
    ||direction||`` (shape of one sample).
    """
    flat = x.flatten(1).to(torch.float64)
    if kind == "radial":
        if center is None:
            raise ValueError("radial label smoothing needs center = E||X|| of the training set")
        arg = torch.linalg.vector_norm(flat, dim=1) - center
    elif kind == "direction":
        if direction is None:
            raise ValueError("direction label smoothing needs a direction V")
        v = direction.to(device=x.device, dtype=torch.float64).flatten()
        if v.numel() != flat.shape[1]:
            raise ValueError(f"label smoothing direction has {v.numel()} values, the inputs "
                              f"{flat.shape[1]}")
        arg = flat @ (v / torch.linalg.vector_norm(v))
    else:
        raise ValueError(f"label smoothing: unknown kind '{kind}' (choose from {', '.join(KINDS)})")
    return torch.sin(2 * math.pi * frequency * arg)


def smooth_targets(x: torch.Tensor, y: torch.Tensor, num_classes: int, kind: str,
                   frequency: float, amplitude: float, center: float | None = None,
                   direction: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Soft targets ``y' = y (1 - r) + r / C`` with ``r = a_eff (1 + S(X))`` (§3.1, authors' code).

    Args:
        x: the batch of model inputs ``(B, ...)`` (normalized, augmented).
        y: integer labels ``(B,)``.
        num_classes: C.
        kind, frequency, center, direction: the wave, see :func:`smoothing_wave`.
        amplitude: a in [0, 1], the batch-average smoothing mass when ``normalize``.
        normalize: ``a_eff = a / mean_batch(1 + S)`` (the authors' default); else ``a_eff = a``.

    Returns:
        ``(B, C)`` targets, each row summing to 1, computed in float64 and returned in the
        dtype of ``x`` (float32 for integer inputs).
    """
    check_smoothing(kind, frequency, amplitude)
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    w = 1.0 + smoothing_wave(x, kind, frequency, center, direction)
    a = torch.as_tensor(amplitude, dtype=w.dtype, device=w.device)
    if normalize:
        mean = w.mean()
        a = torch.where(mean > 0, a / mean.clamp(min=torch.finfo(w.dtype).tiny),
                        torch.zeros_like(a))
    r = (a * w).unsqueeze(1)
    onehot = F.one_hot(y.to(torch.long), num_classes).to(w.dtype)
    return (onehot * (1 - r) + r / num_classes).to(dtype)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_c y'_c log softmax(z)_c`` against soft targets, ``(B,)``."""
    return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)


@dataclass(frozen=True, eq=False)
class LabelSmoothing:
    """A run's label smoothing: validated at construction; :meth:`targets` gives soft labels.

    ``center`` (radial) is ``E||X||`` over the normalized training set; ``direction`` (direction
    kind) the image V, e.g. ``fourier_direction(index, (C, H, W))``; ``index`` records that
    Fourier index for the manifest. The trainer builds one with :meth:`for_training` and stores
    :attr:`manifest` as ``run.json["label_smoothing"]``; the analyzer rebuilds it with
    :meth:`from_manifest`.
    """

    kind: Literal["radial", "direction"]
    frequency: float
    amplitude: float
    center: float | None = None
    direction: torch.Tensor | None = field(default=None, repr=False)
    index: int | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        check_smoothing(self.kind, self.frequency, self.amplitude)
        if self.kind == "radial" and self.center is None:
            raise ValueError("radial label smoothing needs center = E||X|| of the training set")
        if self.kind == "direction" and self.direction is None:
            raise ValueError("direction label smoothing needs a direction V")

    @classmethod
    def for_training(cls, cfg: Any, x_train: torch.Tensor, num_classes: int) -> LabelSmoothing:
        """From a trainer config (``label_smoothing``, ``ls_frequency``, ``ls_amplitude``,
        ``ls_index``) and the normalized training inputs (for ``E||X||`` or the image shape)."""
        del num_classes  # the targets take C from the logits
        kind = cfg.label_smoothing
        check_smoothing(kind, cfg.ls_frequency, cfg.ls_amplitude)
        if kind == "radial":
            return cls("radial", float(cfg.ls_frequency), float(cfg.ls_amplitude),
                       center=_round(mean_norm(x_train)))
        index = int(cfg.ls_index)
        direction = fourier_direction(index, _shape3(x_train.shape[1:])).to(x_train.device)
        return cls("direction", float(cfg.ls_frequency), float(cfg.ls_amplitude),
                   direction=direction, index=index)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], shape: Sequence[int],
                      device: torch.device | str | None = None) -> LabelSmoothing:
        """Rebuild from ``run.json["label_smoothing"]``; ``shape`` is one input's (C, H, W)."""
        kind = manifest.get("kind")
        if kind not in KINDS:
            raise ValueError(f"label smoothing: unknown kind '{kind}' (choose from "
                              f"{', '.join(KINDS)})")
        frequency, amplitude = float(manifest["frequency"]), float(manifest["amplitude"])
        normalize = bool(manifest.get("normalize", True))
        if kind == "radial":
            return cls("radial", frequency, amplitude, center=float(manifest["center"]),
                       normalize=normalize)
        index: int | None = None
        if manifest.get("index") is not None:
            index = int(manifest["index"])
            direction = fourier_direction(index, _shape3(shape))
        else:
            direction = torch.tensor(manifest["direction"], dtype=torch.float32).view(*shape)
        return cls("direction", frequency, amplitude, direction=direction.to(device), index=index,
                   normalize=normalize)

    @property
    def manifest(self) -> dict[str, Any]:
        """JSON-ready description, enough for :meth:`from_manifest`."""
        out: dict[str, Any] = {"kind": self.kind, "frequency": self.frequency,
                               "amplitude": self.amplitude, "normalize": self.normalize}
        if self.kind == "radial":
            out["center"] = self.center
        elif self.index is not None:
            out["index"] = self.index
            out["shape"] = list(self.direction.shape)  # type: ignore[union-attr]
        else:
            out["direction"] = self.direction.flatten().tolist()  # type: ignore[union-attr]
        return out

    def targets(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Soft targets of the batch ``(x, y)``, see :func:`smooth_targets`."""
        return smooth_targets(x, y, num_classes, self.kind, self.frequency, self.amplitude,
                              self.center, self.direction, self.normalize)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean soft cross-entropy of a training batch against its smoothed targets."""
        targets = self.targets(x, y, logits.shape[1]).to(logits.dtype)
        return soft_cross_entropy(logits, targets).mean()


LabelSmoother = LabelSmoothing  # the name the trainer uses


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"direction label smoothing needs (C, H, W) images (got {tuple(shape)})")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _round(value: float) -> float:
    """10 significant digits: the manifest then compares equal across devices on resume."""
    return float(f"{value:.10g}")


def smoothed_test_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                       smoothing: LabelSmoothing | Mapping[str, Any],
                       batch_size: int = 256) -> float:
    """Cross-entropy of ``logits`` against the smoothed labels of ``(x, y)`` (§3.1, eq. 1).

    As the authors' evaluation (``noisy_test``), the amplitude is normalized per consecutive
    batch of ``batch_size`` = 256 images in split order; the result is the mean over all images
    (the authors drop a last partial batch; we keep it). ``smoothing`` is a
    :class:`LabelSmoothing` or its manifest (``run.json["label_smoothing"]``). Effective noise
    fitting = clean test loss - this.
    """
    if not isinstance(smoothing, LabelSmoothing):
        smoothing = LabelSmoothing.from_manifest(smoothing, tuple(x.shape[1:]), x.device)
    if len(x) == 0:
        return math.nan
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for lo, hi in chunks(len(x), batch_size):
        targets = smoothing.targets(x[lo:hi], y[lo:hi], num_classes)
        lg = logits[lo:hi]
        total = total + soft_cross_entropy(lg, targets.to(lg.dtype)).sum().to(torch.float64)
    return float(total) / len(x)
