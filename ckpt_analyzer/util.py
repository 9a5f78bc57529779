"""Small shared helpers: integer selections, devices, seeds, one-line CLI errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .errors import CkptError, UsageError

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])

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


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device: unknown device '{spec}' (use auto, cpu or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"--device: unsupported device '{spec}'")
    return dev


def set_precision(device: torch.device, tf32: bool = False) -> None:
    """How this process computes on ``device``. On CUDA: full float32 in matrix products and
    convolutions (TF32 off, unless ``tf32``: about 10 bits of mantissa, faster on Ampere and
    later) and deterministic cuDNN algorithms without autotuning, so that a probe gives the same
    numbers on every run and its differences and second derivatives keep float32 accuracy.
    Nothing changes on other devices."""
    import torch

    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


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


def fail(exc: CkptError) -> NoReturn:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and the documented exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        try:  # a file-size limit: EFBIG, reported as one line, not a silent kill
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except (AttributeError, ValueError):  # no such signal, or not the main thread
            pass
        try:
            return fn(*args, **kwargs)
        except CkptError as exc:
            fail(exc)
        except (ValueError, TypeError) as exc:
            if not _from_functional(exc):
                raise  # a bug elsewhere: keep the traceback
            lines = str(exc).strip().splitlines()
            sys.stderr.write(f"error: {lines[0] if lines else type(exc).__name__}\n")
            sys.exit(CkptError.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: finished work is kept; re-run the same command to resume\n")
            sys.exit(130)
        except MemoryError as exc:  # numpy's and torch's CPU allocators; CUDA OOM is a RuntimeError
            detail = str(exc).strip().splitlines()
            sys.stderr.write("error: out of memory" + (f" ({detail[0]})" if detail else "")
                             + "; finished work is kept: lower the sizes or the batch and "
                             "re-run the same command\n")
            sys.exit(1)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            sys.stderr.write(f"error: {where}{exc.strerror or exc}\n")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _from_functional(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in :mod:`ckpt_analyzer.functional`, whose pure functions
    report bad arguments as ValueError/TypeError rather than the package's CkptError."""
    tb = exc.__traceback__
    name = ""
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return name.startswith("ckpt_analyzer.functional.")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def import_user_file(path: Path, what: str) -> ModuleType:
    """Import a user's ``.py`` file once (cached by its resolved path); one-line UsageError."""
    import hashlib
    import importlib.util

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    mod_name = f"ckpt_analyzer_user_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    mspec = importlib.util.spec_from_file_location(mod_name, path)
    if mspec is None or mspec.loader is None:
        raise UsageError(f"{what}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise UsageError(f"{what}: importing {path} failed: {first_line(exc)}") from None
    return module
