"""Models for checkpoints: size screening, building, loading (the notebook API's load_model)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from torch import nn
from .discovery import CheckpointRef, _match_fields, pattern_regex
from .files import CKPT_FORMAT, load_state_into, open_state, parse_metadata, read_header
from .layout import CHECKPOINT_SUFFIX


def screen_widths(refs: list[CheckpointRef], meta_of: Callable[[CheckpointRef], Mapping[str, Any]],
                  model: str | None = None) -> tuple[list[CheckpointRef], list[CheckpointRef]]:
    """Split ``refs`` into those whose model can be built and those whose (metadata) width would
    build an absurdly large model (``error`` set, with the estimated size), checked on torch's
    meta device without allocating. ``meta_of`` must have checked each ``arch`` that a file
    names (:func:`~ckpt_analyzer.models.file_arch`): the size check builds the model."""
    from ..models import check_model_size

    verdict: dict[tuple[Any, ...], str | None] = {}
    keep, rejected = [], []
    for ref in refs:
        if ref.error is not None:
            keep.append(ref)
            continue
        meta = meta_of(ref)
        key = (model or meta.get("arch"), ref.width, meta.get("num_classes"), meta.get("in_channels"))
        if key not in verdict:
            verdict[key] = None
            try:
                check_model_size(str(key[0]), int(ref.width), int(meta["num_classes"]),
                                 int(meta["in_channels"]), what="metadata width")
            except (UsageError, KeyError, TypeError, ValueError) as exc:
                verdict[key] = str(exc)
        if verdict[key] is None:
            keep.append(ref)
        else:
            rejected.append(dataclasses.replace(ref, error=f"{ref.path}: {verdict[key]}; skipped"))
    return keep, rejected


def build_model_for(meta: Mapping[str, Any], model: str | None = None, *,
                    trust_code: bool = False, source: str | Path = "checkpoint metadata"
                    ) -> nn.Module:
    """A fresh model for a checkpoint's metadata. ``model`` (the person's ``--model``)
    overrides ``arch``; without it the metadata's ``arch`` (read from ``source``) must be a
    registered name, or ``trust_code`` set (:func:`~ckpt_analyzer.models.file_arch`)."""
    from ..models import build_model, file_arch

    arch = model or file_arch(meta.get("arch"), source, trust_code)
    return build_model(arch, int(meta["width"]), int(meta["num_classes"]),
                       int(meta["in_channels"]))


def load_model(path: str | Path, device: str = "cpu", model: str | None = None,
               pattern: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None, width: int | None = None,
               prefix: str | None = None, trust_code: bool = False) -> nn.Module:
    """One checkpoint's model, weights loaded, eval mode (the README's Python API).

    The metadata's ``arch`` is built only when it is a registered name; a ``module:factory``
    or ``file.py:factory`` spec that the file names is refused (UsageError) unless you pass
    ``model=`` yourself or ``trust_code=True``."""
    import torch

    path = Path(path)
    if path.suffix == CHECKPOINT_SUFFIX:
        _, raw = read_header(path)
    else:
        raw = {}
    if raw.get("format") == CKPT_FORMAT:
        meta: dict[str, Any] = parse_metadata(raw, path)
    else:
        if model is None:
            raise CheckpointError("no ckpt-analyzer metadata: pass model='module:factory'", path)
        meta = dict(raw)
        if pattern:
            m = None
            parts = path.resolve().parts
            for i in range(len(parts)):
                m = pattern_regex(pattern).match("/".join(parts[i:]))
                if m:
                    break
            if m is None:
                raise CheckpointError(f"path does not match pattern '{pattern}'", path)
            meta.setdefault("width", _match_fields(m, width or 1)[0])
        for key, val in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("width", width)):
            if val is not None:
                meta[key] = val
        missing = [k for k in ("width", "num_classes", "in_channels") if k not in meta]
        if missing:
            raise CheckpointError(f"cannot build a model: unknown {', '.join(missing)}", path)
    net = build_model_for(meta, model, trust_code=trust_code, source=path)
    load_state_into(net, open_state(path, allow_pt=path.suffix != CHECKPOINT_SUFFIX), path, prefix)
    return net.to(torch.device(device)).eval()

