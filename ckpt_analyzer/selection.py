"""Selections and sizes on the command line: ``--widths 1,2,4``, ``--epochs 0:100``,
``--max-memory 8G``."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UsageError

#: The most values one ``--widths``/``--epochs`` selection may expand to.
MAX_SELECTION = 100_000


def parse_ints(text: str | Sequence[int] | None, what: str, minimum: int = 0) -> list[int] | None:
    """``'4'``, ``'1,5,10'`` or an inclusive range ``'0:100'`` -> sorted unique ints."""
    if text is None:
        return None
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if ":" in part:
                    lo, hi = part.split(":", 1)
                    a, b = int(lo), int(hi)
                    if b < a:
                        raise ValueError
                    if b - a + 1 > MAX_SELECTION:
                        raise UsageError(
                            f"{what}: range '{part}' has {b - a + 1:,} values (~"
                            f"{(b - a + 1) * 36 / 2**30:.1f} GiB as a list); at most "
                            f"{MAX_SELECTION:,}")
                    values.extend(range(a, b + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise UsageError(f"{what}: '{part}' is not an integer, a list or a range a:b") from None
    if not values:
        raise UsageError(f"{what}: no values given")
    if len(values) > MAX_SELECTION:
        raise UsageError(f"{what}: {len(values):,} values; at most {MAX_SELECTION:,}")
    bad = [v for v in values if v < minimum]
    if bad:
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise UsageError(f"{what}: must be {kind} (got {bad[0]})")
    return sorted(set(values))


def parse_size(text: str, what: str = "--max-memory") -> int:
    """``'512M'``, ``'8G'``, ``'1.5GiB'``, ``'1000000'`` -> bytes (binary units k, M, G, T)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise UsageError(f"{what}: not a size (got '{text}'; e.g. 512M, 8G)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{what}: must be a positive size (got '{text}')")
    return int(value)
