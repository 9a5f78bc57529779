"""Integer selections on the command line: ``--widths 1,2,4``, ``--epochs 0:100``."""

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
