"""Synthetic label noise (docs/checkpoints.md), deterministic given its seed.

``label_noise`` corrupts exactly ``round(fraction * n_eligible)`` points (Python's ``round``,
half to even), chosen with ``numpy.random.default_rng(seed)``, and returns the labels to train
on together with the mask of the chosen points. ``n_eligible`` is the number of training points,
or for ``asymmetric`` the number of points whose true class is in ``classes``.

- ``symmetric``: each chosen point gets a class drawn uniformly among the ``C - 1`` classes
  other than its own (``(y + U{1..C-1}) mod C``, as in Gamba et al.'s code).
- ``shuffle``: the chosen points' labels are permuted among themselves (Zhang & Wu's code:
  ``random.sample`` of ``n * fraction`` indices, ``np.random.shuffle`` of their labels), so the
  label histogram is unchanged. A plain permutation leaves about ``k * sum_c p_c^2`` of the
  ``k`` chosen points (~10% with 10 balanced classes) with their own label. Here every such
  point is repaired by swapping its new label with that of a random chosen point ``j`` such
  that both end up with a label different from their own; such a ``j`` always exists while no
  class holds more than half of the chosen points, so then every chosen point is truly
  corrupted. Otherwise (a dominant class, or a single chosen point) the points of the dominant
  class that cannot be given another class keep their true label; they stay in the mask,
  which always marks exactly the chosen points.
- ``asymmetric`` (Gamba et al. 2023, §4.5: "80% samples of 20 randomly selected classes are
  perturbed"): only points whose true class is in ``classes`` (default: all classes) are
  eligible; ``fraction`` is the corrupted fraction *within* these classes, allocated to each
  class in proportion to its size (largest remainder, ties to the lower class index), as their
  code corrupts ``int(0.8 * samples_per_class)`` points of each chosen class. A corrupted point
  gets a uniformly drawn different class (any of the other ``C - 1``, as in their code), so
  noisy labels can land in untouched classes but no point outside ``classes`` is changed.
  Which classes to corrupt is the caller's choice (their code takes the first ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError, UsageError, unknown

__all__ = ["NOISE_KINDS", "label_noise"]

NOISE_KINDS = ("symmetric", "shuffle", "asymmetric")


def _shuffle_labels(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``lab`` with as few positions keeping their label as possible."""
    new = lab[rng.permutation(lab.size)]
    for i in np.flatnonzero(new == lab):  # ~k/C points; each swap fixes one or two
        a = lab[i]
        if new[i] != a:
            continue
        cand = np.flatnonzero((new != a) & (lab != a))
        if cand.size == 0:
            continue
        j = cand[rng.integers(cand.size)]
        new[i], new[j] = new[j], a
    return new


def _asymmetric_choice(y: np.ndarray, classes: np.ndarray, fraction: float,
                       rng: np.random.Generator) -> np.ndarray:
    members = [np.flatnonzero(y == c) for c in classes]
    counts = np.array([m.size for m in members], dtype=np.int64)
    total = round(fraction * int(counts.sum()))
    exact = fraction * counts
    quota = np.minimum(np.floor(exact).astype(np.int64), counts)
    rest = total - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    room = order[quota[order] < counts[order]]
    quota[room[:max(rest, 0)]] += 1
    chosen = [rng.permutation(m)[:q] for m, q in zip(members, quota)]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def label_noise(labels: np.ndarray, num_classes: int, kind: str, fraction: float, seed: int,
                classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a fraction of ``labels``: returns ``(train_labels int64, noisy_mask bool)``.

    ``kind`` is ``symmetric``, ``shuffle`` or ``asymmetric`` (module docstring); ``fraction``
    in [0, 1); ``classes`` (asymmetric only) are the source classes whose points may be
    corrupted (None: all). The same arguments always give the same result.
    """
    if kind not in NOISE_KINDS:
        raise unknown("label-noise kind", kind, NOISE_KINDS)
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"label-noise fraction must be in [0, 1), got {fraction:g}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError(f"label-noise seed must be an integer, got {seed!r}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    y = np.asarray(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise DataError(f"labels must be a 1-d integer array, got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels outside [0, {num_classes})")
    if classes is not None and len(classes) and kind != "asymmetric":
        raise UsageError(f"noise classes apply to asymmetric noise only, not {kind}")

    rng = np.random.default_rng(seed)
    if kind == "asymmetric":
        src = np.arange(num_classes) if classes is None or not len(classes) else \
            np.asarray(list(classes))
        if not np.issubdtype(src.dtype, np.integer) or src.min() < 0 or src.max() >= num_classes:
            raise UsageError(f"noise classes must be integers in [0, {num_classes}), "
                             f"got {list(classes or [])}")
        if np.unique(src).size != src.size:
            raise UsageError(f"noise classes repeat a class: {list(classes or [])}")
        chosen = _asymmetric_choice(y, np.unique(src).astype(np.int64), fraction, rng)
    else:
        chosen = rng.permutation(y.size)[: round(fraction * y.size)]

    out = y.copy()
    mask = np.zeros(y.size, dtype=bool)
    if chosen.size == 0:
        return out, mask
    if num_classes < 2:
        raise UsageError("label noise needs at least 2 classes")
    if kind == "shuffle":
        out[chosen] = _shuffle_labels(y[chosen], rng)
    else:
        out[chosen] = (y[chosen] + rng.integers(1, num_classes, size=chosen.size)) % num_classes
    mask[chosen] = True
    return out, mask
