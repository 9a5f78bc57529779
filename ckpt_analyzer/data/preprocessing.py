"""A foreign run's preprocessing: ``--normalize mean,std | none | dataset``, and the quick check
that it fits the checkpoints.

The model input is ``(x - mean) / std`` per channel of pixels ``x`` in [0, 1]
(:func:`~ckpt_analyzer.data.normalize`). A run folder with run.json states its ``mean``/``std``
(its trainer's); a foreign folder has none, so it gets the dataset's own statistics
(``dataset``, the default) unless the person states another: ``none`` (mean 0, std 1: the
pixels as they are) or numbers ``M,S`` (every channel) or ``M1,...,MC,S1,...,SC`` (per channel).
What was used is recorded in the cube's root attribute ``normalize``.

:func:`check_fit` measures the test error of one checkpoint on the test images with the chosen
preprocessing and the other two (``dataset``, ``none``) and says, in one line, when the chosen
one does not fit the test error the checkpoint's own metadata records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

MODES = ("dataset", "none")
#: metadata keys holding a recorded test error (or accuracy: error = 1 - accuracy)
ERROR_KEYS = ("test_error", "test_err", "eval_error", "val_error")
ACCURACY_KEYS = ("test_accuracy", "test_acc", "eval_accuracy", "val_accuracy", "val_acc",
                 "accuracy", "acc")
CHECK_POINTS = 1000  # test images of the quick check (all of a smaller test set)


@dataclass(frozen=True)
class Normalize:
    """A stated preprocessing: ``mode`` "dataset", "none" or "values" (``mean``/``std`` given,
    one value for every channel or one per channel)."""

    mode: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def resolve(self, data_mean: Sequence[float], data_std: Sequence[float]
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel for a dataset whose own statistics are given."""
        c = len(data_mean)
        if self.mode == "dataset":
            return tuple(data_mean), tuple(data_std)
        if self.mode == "none":
            return (0.0,) * c, (1.0,) * c
        if len(self.mean) not in (1, c):
            raise UsageError(f"--normalize: {len(self.mean)} mean(s) and std(s) for a dataset "
                             f"of {c} channel(s): give 1 or {c} of each")
        mean = self.mean * c if len(self.mean) == 1 else self.mean
        std = self.std * c if len(self.std) == 1 else self.std
        return tuple(mean), tuple(std)

    def spec(self) -> str:
        if self.mode != "values":
            return self.mode
        return ",".join(f"{v:g}" for v in (*self.mean, *self.std))


def parse_normalize(spec: str | None) -> Normalize | None:
    """``--normalize``: None (not given), ``dataset``, ``none``, ``M,S`` or
    ``M1,...,MC,S1,...,SC`` (UsageError otherwise)."""
    if spec is None:
        return None
    s = spec.strip().lower()
    if s in MODES:
        return Normalize(s)
    try:
        vals = [float(v) for v in s.split(",")]
    except ValueError:
        raise UsageError(f"--normalize: '{spec}' is not dataset, none or MEAN,STD numbers "
                         "(e.g. 0.5,0.25, or per channel 0.49,0.48,0.45,0.25,0.24,0.26)") from None
    if len(vals) < 2 or len(vals) % 2 or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"--normalize: '{spec}' must be an even number of finite values: "
                         "the mean(s), then as many std(s)")
    half = len(vals) // 2
    if min(vals[half:]) <= 0:
        raise UsageError(f"--normalize: the std(s) of '{spec}' must be positive")
    return Normalize("values", tuple(vals[:half]), tuple(vals[half:]))


def record(norm: Normalize | None, mean: Sequence[float], std: Sequence[float]) -> str:
    """The cube's ``normalize`` root attribute: JSON of the mode stated (``dataset`` when none
    was) and the mean/std used."""
    return json.dumps({"normalize": norm.spec() if norm else "dataset",
                       "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
                      sort_keys=True)


def changed(old: str | None, new: str) -> str | None:
    """A line saying how the recorded preprocessing ``old`` (a cube's attribute; None for a cube
    without one, i.e. the dataset's) differs from ``new``, None when it does not."""
    if old is None:
        return None if json.loads(new)["normalize"] == "dataset" else \
            f"preprocessing dataset -> {json.loads(new)['normalize']}"
    try:
        a = json.loads(old)
    except ValueError:
        a = {}
    b = json.loads(new)
    if a.get("mean") == b["mean"] and a.get("std") == b["std"]:
        return None
    return f"preprocessing {a.get('normalize', '?')} -> {b['normalize']}"


def recorded_error(meta: Mapping[str, Any]) -> tuple[str, float] | None:
    """(key, test error) a checkpoint's metadata records, None when it records none. An
    accuracy over 1 is taken as a percentage."""
    for keys, is_acc in ((ERROR_KEYS, False), (ACCURACY_KEYS, True)):
        for k in keys:
            if k in meta:
                try:
                    v = float(meta[k])
                except (TypeError, ValueError):
                    continue
                if not math.isfinite(v):
                    continue
                if v > 1 and v <= 100:
                    v /= 100
                if 0 <= v <= 1:
                    return k, (1 - v) if is_acc else v
    return None


def check_fit(model: Callable[[torch.Tensor], torch.Tensor], x_pixels: torch.Tensor,
              y: torch.Tensor, used: tuple[Sequence[float], Sequence[float]], used_name: str,
              others: Mapping[str, tuple[Sequence[float], Sequence[float]]],
              recorded: float, where: str, batch: int = 512) -> str | None:
    """One warning line when the test error with the preprocessing ``used`` (on the first
    :data:`CHECK_POINTS` test images ``x_pixels``, in [0, 1]) is far from the ``recorded`` one:
    more than 3 binomial standard errors plus 0.02 away, or another preprocessing of
    ``others`` comes closer to it by more than one standard error. None when it fits."""
    import torch

    from . import normalize

    n = min(CHECK_POINTS, int(x_pixels.shape[0]))
    if n == 0:
        return None
    x, yy = x_pixels[:n], y[:n]

    def error(stats: tuple[Sequence[float], Sequence[float]]) -> float:
        wrong = 0
        with torch.inference_mode():
            for i in range(0, n, batch):
                out = model(normalize(x[i:i + batch], *stats))
                wrong += int((out.argmax(1) != yy[i:i + batch]).sum())
        return wrong / n

    mine = error(used)
    se = math.sqrt(max(recorded * (1 - recorded), 1.0 / n) / n)
    alt = {name: error(stats) for name, stats in others.items()}
    closer = [k for k, e in alt.items() if abs(e - recorded) + se < abs(mine - recorded)]
    if abs(mine - recorded) <= 3 * se + 0.02 and not closer:
        return None
    with_alt = ", ".join(f"{e:.3f} with --normalize {k}" for k, e in alt.items())
    return (f"{where}: test error {mine:.3f} with --normalize {used_name} on {n} test images, "
            f"its metadata records {recorded:.3f} ({with_alt}): the preprocessing may not be "
            "the checkpoint's; state it with --normalize mean,std | none | dataset")
