"""Architectures of other libraries by name: ``torchvision:NAME`` and ``timm:NAME``.

Built untrained (no weight download), with ``num_classes`` outputs and ``in_channels`` inputs
taken from the data. These families have no width: every width builds the same network, so
foreign folders of them are analyzed as a single model (a ``--pattern`` without ``{width}``).
torchvision models are built for 3 channels; for other inputs the first convolution is replaced
by one with the same geometry and ``in_channels`` inputs.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from torch import nn

PREFIXES = ("torchvision:", "timm:")


def is_external(arch: str) -> bool:
    return arch.startswith(PREFIXES)


def _unknown(lib: str, name: str, names: list[str]) -> UsageError:
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (closest: {', '.join(close)})" if close else ""
    return UsageError(f"model '{lib}:{name}': {lib} has no such model{hint}")


def _first_conv_to(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``Conv2d`` by one taking ``in_channels`` inputs (same geometry)."""
    from torch import nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride,  # type: ignore[arg-type]
                            mod.padding, mod.dilation, mod.groups, mod.bias is not None,  # type: ignore[arg-type]
                            mod.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return model
    raise UsageError(f"{type(model).__name__}: no Conv2d to adapt to {in_channels} input channels")


def build_external(arch: str, width: int, num_classes: int, in_channels: int) -> nn.Module:
    """``torchvision:resnet18`` or ``timm:NAME``, untrained; ``width`` is ignored."""
    lib, _, name = arch.partition(":")
    if not name:
        raise UsageError(f"model '{arch}': expected '{lib}:NAME'")
    if lib == "torchvision":
        import torchvision

        names = list(torchvision.models.list_models())
        if name not in names:
            raise _unknown(lib, name, names)
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return _first_conv_to(model, in_channels)
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(f"model '{arch}': timm is not installed (pip install timm)") from None
    if not timm.is_model(name):
        raise _unknown(lib, name, list(timm.list_models()))
    return timm.create_model(name, pretrained=False, num_classes=num_classes,  # type: ignore[no-any-return]
                             in_chans=in_channels)
