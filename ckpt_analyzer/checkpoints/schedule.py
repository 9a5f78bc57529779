"""The save schedule of a run: which epochs get a checkpoint (run.json's ``save``)."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

__all__ = ["save_epochs"]


def save_epochs(spec: str, epochs: int) -> list[int]:
    """Epochs to save: ``every``, ``log:N`` (N log-spaced, with 0 and the last) or a list.

    Epoch 0 (the initialization) and the last epoch are always included."""
    spec = spec.strip()
    if spec == "every":
        return list(range(epochs + 1))
    if spec.startswith("log:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise UsageError(f"--save: '{spec}' must be log:N with an integer N") from None
        if n < 2:
            raise UsageError(f"--save: log:N needs N >= 2 (got {n})")
        n = min(n, epochs + 1)
        k = n - 1  # epochs from 1..E
        raw = np.geomspace(1, epochs, k) if k > 1 else np.array([float(epochs)])
        out: list[int] = []
        for i, v in enumerate(raw):
            e = max(round(float(v)), (out[-1] + 1) if out else 1)
            out.append(min(e, epochs - (k - 1 - i)))
        return [0, *out]
    try:
        values = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"--save: '{spec}' is not every, log:N or a list of epochs") from None
    bad = [v for v in values if v < 0 or v > epochs]
    if bad:
        raise UsageError(f"--save: epoch {bad[0]} is outside 0..{epochs}")
    return sorted({0, epochs, *values})
