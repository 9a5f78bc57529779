"""Architectures by name, built from ``(width, num_classes, in_channels)``.

A model factory is any callable ``factory(width, num_classes, in_channels) -> nn.Module``. It
must be a pure function of its arguments: all randomness comes from torch's global RNG, so
``torch.manual_seed(s); factory(...)`` gives identical weights every time. Register one under
the entry-point group ``ckpt_analyzer.models``::

    [project.entry-points."ckpt_analyzer.models"]
    my_cnn = "my_package.models:my_cnn"

or pass it without registering as ``--model my_package.models:my_cnn`` (a module path) or
``--model path/to/file.py:my_cnn`` (a file). Built-ins: ``mcnn``, ``mcnn_nobn``,
``preact_resnet18``, ``mlp``; other libraries' architectures by name: ``torchvision:resnet18``,
``timm:NAME`` (when timm is installed), untrained, without a width (see :mod:`.external`).

Trust: an ``arch`` read from a file (checkpoint metadata, run.json) is built only when it is a
registered name or a library name (:func:`file_arch`); a ``module:factory`` or ``file.py:factory``
spec runs only when the person asks on the command line (``--model SPEC``, ``--trust-code``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CkptError, UsageError, first_line
from ..registry import Registry, import_user_file

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "build_model", "check_factory_args", "count_parameters", "file_arch",
           "is_registered", "load_factory"]

Factory = Callable[[int, int, int], "nn.Module"]

MODELS: Registry[Factory] = Registry("ckpt_analyzer.models", "architecture")


def check_factory_args(width: int, num_classes: int, in_channels: int) -> None:
    """UsageError unless width, num_classes and in_channels are positive integers."""
    for name, value in (("width", width), ("num_classes", num_classes),
                        ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")


def is_registered(arch: str) -> bool:
    """Whether building ``arch`` runs only installed code: a registered architecture name (an
    entry point, or a ``--plugin`` the person passed) or a library name (``torchvision:NAME``,
    ``timm:NAME``). Imports nothing."""
    from .external import is_external

    if not arch.isprintable():  # no registered or library name holds a newline or a control
        return False
    if is_external(arch):
        return True
    if ":" in arch:
        return False
    return arch in MODELS.known()


def _shown(text: str) -> str:
    """``text`` quoted for a one-line message (long or unprintable strings as a short repr)."""
    if len(text) > 200:
        return repr(text[:200]) + "..."
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def file_arch(arch: object, source: str | Path, trust_code: bool = False) -> str:
    """The architecture a file names (``source``: that file), checked before anything is built.

    A registered name or library name is returned as is. A ``module:factory`` or
    ``file.py:factory`` spec would import and run code that the file chose: it is refused with a
    one-line UsageError naming the file and the spec, unless ``trust_code`` (``--trust-code``).
    The caller skips this check when the person passed ``--model``: then the file's arch is
    not used. Never imports anything.
    """
    if not isinstance(arch, str):
        raise UsageError(f"{source}: arch must be an architecture name (got "
                         f"{type(arch).__name__} {_shown(str(arch))}); pass --model NAME")
    if trust_code or is_registered(arch):
        return arch
    if ":" not in arch:
        from ..errors import did_you_mean

        raise UsageError(f"{source}: arch {_shown(arch)} is not a registered architecture"
                         f"{did_you_mean(arch, MODELS.known())}; pass --model NAME")
    hint = f"--model {_shown(arch)} to run it, or " if arch.isprintable() else ""
    raise UsageError(f"{source}: arch {_shown(arch)} is code named by the file, not a registered "
                     f"architecture; pass {hint}--trust-code")


def load_factory(spec: str) -> Factory:
    """The callable named by ``"pkg.module:factory"`` or ``"path/to/file.py:factory"``.

    The attribute may be dotted (``module:Class.build``). Raises a one-line UsageError when the
    module does not import, has no such attribute, or the attribute is not callable.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(f"model '{spec}': expected 'module:factory' or 'file.py:factory'")
    path = Path(module_part).expanduser()
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        if not path.is_file():
            raise UsageError(f"model '{spec}': no such file {path}")
        module = import_user_file(path, f"model '{spec}'")
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise UsageError(
                f"model '{spec}': cannot import module '{module_part}': {first_line(exc)}"
            ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"model '{spec}': '{module_part}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"model '{spec}': '{attr}' is not callable ({type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def build_model(arch: str, width: int, num_classes: int, in_channels: int) -> nn.Module:
    """A fresh model: ``arch`` is a registered name or a ``module:factory`` spec.

    Unknown names raise UsageError with the closest registered name; a factory that returns
    something other than an ``nn.Module`` raises UsageError; a factory that raises is reported
    as a one-line CkptError.
    """
    from torch import nn

    from .external import build_external, is_external

    check_factory_args(width, num_classes, in_channels)
    if is_external(arch):
        factory: Factory = lambda w, c, i: build_external(arch, w, c, i)
    else:
        factory = load_factory(arch) if ":" in arch else MODELS.get(arch)
    try:
        model = factory(width, num_classes, in_channels)
    except CkptError:
        raise
    except Exception as exc:
        raise CkptError(
            f"model '{arch}' (width={width}, num_classes={num_classes}, "
            f"in_channels={in_channels}) failed to build: {first_line(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"model '{arch}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


#: The largest model (parameters and buffers) a width may build: beyond it the width is refused
#: with its estimated size instead of allocating.
MAX_MODEL_BYTES = 16 * 2**30


def model_bytes(arch: str, width: int, num_classes: int, in_channels: int) -> int | None:
    """Bytes of the parameters and buffers of ``build_model(...)``, computed without allocating
    (the model is built on torch's ``meta`` device); None when the factory cannot build there."""
    import torch

    try:
        with torch.device("meta"):
            model = build_model(arch, width, num_classes, in_channels)
    except UsageError:
        raise
    except Exception as exc:  # a factory that cannot build on meta: size unknown
        return 2**63 if "overflow" in str(exc) else None
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def check_model_size(arch: str, width: int, num_classes: int, in_channels: int,
                     what: str = "--widths") -> None:
    """UsageError naming the estimated size when width ``width`` would exceed MAX_MODEL_BYTES."""
    size = model_bytes(arch, width, num_classes, in_channels)
    if size is not None and size >= 2**63:
        raise UsageError(f"{what}: {arch} of width {width:,} is too large to build (its tensor "
                         "sizes overflow 64 bits)")
    if size is not None and size > MAX_MODEL_BYTES:
        raise UsageError(f"{what}: {arch} of width {width:,} would need ~{size / 2**30:,.1f} GiB "
                         f"for its weights alone (limit {MAX_MODEL_BYTES / 2**30:.0f} GiB)")


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (weights and biases; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
