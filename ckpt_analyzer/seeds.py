"""Seeds: the range numpy and torch accept, and stable seeds derived from integers."""

from __future__ import annotations

from .errors import UsageError

MAX_SEED = 2**64 - 1


def check_seed(seed: int, what: str = "--seed") -> int:
    """UsageError unless ``seed`` is an integer in [0, 2**64 - 1] (what numpy and torch take)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{what}: must be an integer in [0, 2**64 - 1] (got {seed})")
    return seed


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomization)."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2,
               dtype=np.uint64)[0] >> 1)
