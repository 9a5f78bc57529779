"""The quick check of a foreign folder's preprocessing (``--normalize``), run once before
measuring: :func:`~ckpt_analyzer.data.preprocessing.check_fit` on one checkpoint that records
its test error."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoints import CheckpointRef, checkpoint_scalars
from ..checkpoints.run_data import RunData
from ..data import channel_stats
from ..data.preprocessing import Normalize, changed, check_fit, recorded_error
from ..errors import CkptError, UsageError


def preprocessing_note(refs: Sequence[CheckpointRef], norm: Normalize | None, data: RunData,
                       build: Callable[[int], nn.Module],
                       read: Callable[[int, CheckpointRef], Mapping[str, torch.Tensor]],
                       allow_pt: bool) -> str | None:
    """One warning line when the last checkpoint of the first width (else the one before it)
    that records a test error (the most trained one: at initialization every preprocessing gives chance error, so the
    first checkpoint could not tell) measures far from it with the preprocessing used; None
    when it fits, or when none records one or it cannot be read (its failure is reported when
    it is measured)."""
    good = [r for r in refs if r.error is None]
    first = [r for r in good if r.width == good[0].width] if good else []
    for ref in reversed(first[-2:]):  # two looks at most: a .pt is read whole
        try:
            meta: dict[str, Any] = dict(ref.metadata) or checkpoint_scalars(ref.path, allow_pt)
            found = recorded_error(meta)
            if found is None:
                continue
            model = build(ref.width)
            model.load_state_dict(dict(read(ref.width, ref)), strict=True)
        except (CkptError, RuntimeError):
            return None  # a misfit is reported, file by file, when it is measured
        model.eval()
        used = (data.mean.tolist(), data.std.tolist())
        name = norm.spec() if norm else "dataset"
        pixels = data.to_pixel(data.x_test)
        stats = channel_stats(data.to_pixel(data.x_train))  # the dataset's (as its loader's)
        others = {k: Normalize(k).resolve(*stats) for k in ("dataset", "none") if k != name}
        return check_fit(model, pixels, data.y_test, used, name, others, found[1],
                         f"{ref.path} ({found[0]} in its metadata)")
    return None


def check_preprocessing(cube: Any, prep: str | None, overwrite: bool) -> None:
    """Refuse (UsageError) to add to a cube measured with another preprocessing (its root
    attribute ``normalize``); with ``overwrite`` empty it instead."""
    if prep is None:
        return
    diff = changed(cube.root().get("normalize"), prep)
    if diff is None or not any(cube.done(p) for p in cube.probes()):
        return
    if not overwrite:
        raise UsageError(f"this cube was measured with another {diff}; use --overwrite to "
                         "start it afresh, or -o another cube", cube.path)
    cube.reset()
