"""One checkpoint through the probes: isolation, model restore, per-probe failures.

Used by every executor's :class:`~ckpt_analyzer.executors.work.Worker`; free of the cube,
progress and signals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import CheckpointError, CkptError, DiskError, disk_cause, first_line
from ..probes.base import Context, Probe
from ..schema import Outputs

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import CheckpointRef


@dataclass(frozen=True)
class PreparedProbe:
    probe: Probe
    outputs: Outputs


def measure(model: nn.Module, ref: CheckpointRef, probes: Sequence[PreparedProbe],
            ctx: Context, timings: dict[str, float] | None = None,
            failures: dict[str, str] | None = None,
            strict: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Every probe on one loaded checkpoint; results checked against the declarations.

    Probes are isolated from each other: one that raises (even ``SystemExit``), returns an
    undeclared metric or a wrong shape, or changes the model's weights or buffers is a failure
    of that probe alone; the model is restored before the next probe, so no probe sees another's
    changes. With ``failures`` (a dict) each failed probe's one-line error is put there and the
    other probes go on; without it, or with ``strict``, the first failure raises
    :class:`CheckpointError`. A disk fault (an ``OSError`` ENOSPC, EDQUOT, EFBIG, EROFS, EACCES,
    EPERM or EIO, or a :class:`~ckpt_analyzer.errors.DiskError`) is no probe's failure: it
    raises :class:`~ckpt_analyzer.errors.DiskError` and the run stops. A checkpoint with NaN/Inf
    weights raises CheckpointError before any probe runs: it is reported, never stored as a
    measurement.

    ``timings`` (optional) accumulates each probe's compute seconds."""
    cctx = ctx.with_checkpoint(ref)
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(f"has non-finite weights ({bad}); not measured", ref.path)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}
    for p in probes:
        name = p.probe.name
        model.eval()
        t0 = time.perf_counter()
        try:
            checked = p.probe.measure(model, cctx)  # numpy, checked against outputs()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            error = None
        except DiskError:
            raise  # the disk, not this probe: the run stops with its line
        except CkptError as exc:
            error = str(exc) if str(exc).startswith(f"probe '{name}'") else f"probe '{name}': {exc}"
        except OSError as exc:
            disk = _disk_error(exc, name)
            if disk is not None:
                raise disk from None
            error = f"probe '{name}' failed: {one_line(exc)}"
        except (Exception, SystemExit) as exc:
            error = f"probe '{name}' failed: {one_line(exc)}"
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        changed = _changed(model, snapshot)
        if changed:
            with torch.no_grad():
                model.load_state_dict(snapshot, strict=True)
            if error is None:
                error = (f"probe '{name}' changed the model's '{changed}' (a probe must not "
                         "modify the model); its result is discarded")
        if error is None:
            out[name] = checked
            continue
        if failures is None or strict:
            raise CheckpointError(error, ref.path)
        failures[name] = error
    return out


def _disk_error(exc: OSError, probe: str) -> DiskError | None:
    """A disk fault (full, read-only, I/O error) while a probe ran: it stops the run with one
    line instead of being recorded as this probe's failure (None for any other OSError)."""
    cause = disk_cause(exc.errno)
    if cause is None:
        return None
    at = f" at {exc.filename}" if exc.filename else ""
    return DiskError(f"probe '{probe}': {cause}{at} ({exc.strerror or exc}); the run stops, "
                     "finished checkpoints are kept: re-run to resume")


def one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return first_line(exc)


def _non_finite(model: nn.Module) -> str:
    """``'<n> NaN/Inf values in <tensor>'`` for the first non-finite floating tensor, or ''."""
    for key, t in model.state_dict().items():
        if t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                return f"{n} NaN/Inf value(s) in '{key}'"
    return ""


def _changed(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> str:
    """The first tensor of the model's state that differs from ``snapshot`` (or '')."""
    state = model.state_dict()
    if set(state) != set(snapshot):
        return sorted(set(state) ^ set(snapshot))[0]
    for key, t in state.items():
        ref = snapshot[key]
        if t.shape != ref.shape or t.dtype != ref.dtype or not torch.equal(t, ref):
            return key
    return ""
