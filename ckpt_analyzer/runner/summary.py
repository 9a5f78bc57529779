"""What one ``ckpt-analyze run`` did (printed, or JSON with ``--json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSummary:
    cube: str
    checkpoints: int = 0
    computed: int = 0
    skipped_done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    probes: list[str] = field(default_factory=list)
    probe_seconds: dict[str, float] = field(default_factory=dict)
    executor: str = "local"
    workers: int = 1
    shard: str | None = None
    worker_cpu_seconds: dict[str, float] = field(default_factory=dict)  # pool/ray: CPU per worker
    stopped: str | None = None  # --follow gave up before the run was done (the idle timeout)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Terminated(BaseException):
    """SIGTERM, raised by the runner's handler: a BaseException (as KeyboardInterrupt), so the
    per-probe isolation, which catches ``Exception``, never records it as a probe's failure."""
