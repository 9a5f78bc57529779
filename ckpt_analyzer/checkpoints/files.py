"""Checkpoint files: the format's names, atomic safetensors writes, validated reads, key prefixes."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._atomic import atomic_write_bytes
from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn


CKPT_FORMAT = "ckpt-analyzer.ckpt/1"


LABELS_FORMAT = "ckpt-analyzer.labels/1"


RUN_FORMAT = "ckpt-analyzer.run/1"


REQUIRED_META = (
    "format", "arch", "width", "epoch", "step", "num_classes", "in_channels", "image_size",
    "train_loss", "train_error",
)


INT_META = ("width", "epoch", "step", "num_classes", "in_channels", "image_size")


T = TypeVar("T")


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any]) -> None:
    """Atomically write a safetensors file; metadata values are stringified."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save(flat, metadata=meta))


def checkpoint_path(run_dir: str | Path, width: int, epoch: int) -> Path:
    return Path(run_dir) / f"w{width}" / f"e{epoch:05d}.safetensors"


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors file's framing; return (tensor header, metadata)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError("not a safetensors file (shorter than its 8-byte header)", path)
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > 100_000_000:
                raise CheckpointError("not a safetensors file (bad header length)", path)
            head = fh.read(n)
            if 8 + n > size and head.lstrip().startswith(b"{"):
                raise CheckpointError(f"truncated: {size} bytes, shorter than its own header", path)
            if 8 + n > size:
                raise CheckpointError("not a safetensors file (bad header length)", path)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror})", path) from None
    try:
        header = json.loads(head.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError("not a safetensors file (header is not JSON)", path) from None
    meta = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"not a safetensors file (bad entry '{name}')", path) from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"truncated: {size} bytes, header promises {8 + n + end}", path
        )
    return header, meta


def parse_metadata(meta: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Check a contract checkpoint's metadata and convert numbers."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"missing metadata {', '.join(missing)}", path)
    if meta["format"] != CKPT_FORMAT:
        raise CheckpointError(f"unsupported format '{meta['format']}' (expected {CKPT_FORMAT})", path)
    out: dict[str, Any] = dict(meta)
    try:
        for k in INT_META:
            out[k] = int(meta[k])
        for k in ("train_loss", "train_error"):
            out[k] = float(meta[k])
    except ValueError as exc:
        raise CheckpointError(f"bad metadata value ({exc})", path) from None
    return out


PICKLE_EXTS = (".pt", ".pth", ".bin", ".ckpt")
"""Pickle-based checkpoint files: read only with ``allow_pt`` and ``torch.load(weights_only=True)``."""


def read_state_dict(path: str | Path, device: str | torch.device = "cpu",
                    allow_pt: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint. Pickle-based files (``.pt``, ``.pth``, ``.bin``, Lightning
    ``.ckpt``) only with ``allow_pt`` and never unpickled beyond
    ``torch.load(weights_only=True)``; a dict holding ``state_dict`` (Lightning, many scripts)
    gives that entry, which a Lightning ``.ckpt`` must have."""
    import torch

    path = Path(path)
    if path.suffix in PICKLE_EXTS:
        if not allow_pt:
            raise CheckpointError("pickle-based checkpoints are read only with --allow-pt", path)
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load with weights_only=True ({exc})".splitlines()[0],
                                  path) from None
        if path.suffix == ".ckpt" and not (isinstance(obj, dict) and "state_dict" in obj):
            found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"Lightning checkpoint without 'state_dict' (found: {found})", path)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError("not a state_dict of tensors", path)
        return obj
    read_header(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"cannot read tensors ({exc})".splitlines()[0], path) from None


def _sample(keys: Iterable[str], n: int = 4) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(f"'{k}'" for k in keys[:n]) + more


def strip_prefix(state: Mapping[str, T], expected: Iterable[str], prefix: str | None = None,
                 path: str | Path = "") -> dict[str, T]:
    """``state`` with a module prefix removed so that its keys are the model's (``expected``).

    With ``prefix`` ('model' or 'model.'), keys under it are kept without it and the others
    dropped; a prefix that matches no key is an error naming the expected and found keys.
    Without it, a state that already holds every expected key is returned as is; otherwise the
    prefix under which every expected key appears (Lightning's ``model.``, DDP's ``module.``,
    ``torch.compile``'s ``_orig_mod.``) is found and removed; two such prefixes are an error."""
    want = list(expected)
    if prefix:
        p = prefix if prefix.endswith(".") else prefix + "."
        sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if not sub:
            raise CheckpointError(f"prefix '{p}' matches no key: the model expects "
                                  f"{_sample(want)}; the file has {_sample(state)}", path)
        return sub
    if not want or all(k in state for k in want):
        return dict(state)
    first = want[0]
    found = sorted({k[:len(k) - len(first)] for k in state if k.endswith("." + first)})
    fits = [p for p in found if all(p + k in state for k in want)]
    if len(fits) > 1:
        raise CheckpointError(f"several module prefixes fit the model ({', '.join(map(repr, fits))}): "
                              "choose one with --prefix", path)
    if fits:
        p = fits[0]
        return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return dict(state)


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                    prefix: str | None = None) -> None:
    """Copy ``state`` into ``model`` after checking that every key and shape fits (a module
    prefix is removed first, see :func:`strip_prefix`)."""
    own = model.state_dict()
    state = strip_prefix(state, own, prefix, path)
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"does not fit the model: missing tensor '{key}' "
                                  f"(model wants {tuple(value.shape)}; the file has "
                                  f"{_sample(state)})", path)
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"does not fit the model: '{key}' has shape {tuple(state[key].shape)}, "
                f"model wants {tuple(value.shape)}", path)
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"does not fit the model: unexpected tensor '{extra[0]}'", path)
    model.load_state_dict(state, strict=True)
