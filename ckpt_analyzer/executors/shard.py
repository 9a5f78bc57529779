"""``--shard I/N``: this process's deterministic share of the (epoch, width) cells.

The selected checkpoints are ordered by (width, epoch) and dealt round-robin: shard I (1-based)
takes checkpoints I, I+N, I+2N, ... Every shard thus gets the same mix of widths and epochs, so
the shards take about equally long although a wide model costs several times a narrow one
(contiguous blocks would give one shard all the widest checkpoints); building a model per width
costs milliseconds. Deterministic given the same run folder and selection
(``--widths``/``--epochs``), so run the shards after training has finished;
``ckpt-analyze merge`` joins their cubes."""

from __future__ import annotations

from collections.abc import Sequence

from ..checkpoints import CheckpointRef
from ..errors import UsageError


def parse_shard(text: str) -> tuple[int, int]:
    i_s, sep, n_s = text.partition("/")
    try:
        i, n = int(i_s), int(n_s)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n:
        raise UsageError(f"--shard '{text}': expected I/N with 1 <= I <= N (e.g. 2/8)")
    return i, n


def shard_refs(refs: Sequence[CheckpointRef], i: int, n: int) -> list[CheckpointRef]:
    cells = sorted(refs, key=lambda r: (r.width, r.epoch))
    return cells[i - 1::n]
