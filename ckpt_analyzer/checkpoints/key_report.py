"""The key-matching report: why a checkpoint's state dict does not fit a model, key by key.

:func:`~.files.load_state_into` refuses a misfit with one line naming the file and the first
cause. :func:`key_report` lists every missing, unexpected and mis-shaped key, the module prefix
that would make the keys fit, and (:func:`fitting_widths`) the widths whose model the tensors
fit, found by building the model on torch's ``meta`` device (nothing allocated). Shown by
``ckpt-analyze inspect-checkpoint PATH --model SPEC`` and ``ckpt-analyze run -v``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CkptError, UsageError
from .files import key_map, state_shape

Shape = tuple[int, ...]

MAX_LISTED = 12  # keys listed per kind in the text report (the JSON has all)


@dataclass
class KeyReport:
    """How the checkpoint at ``path`` fits a model: ``prefix`` is the module prefix removed
    (found or given), ``missing``/``unexpected``/``misshaped`` the keys that do not fit (after
    it), ``suggest`` a ``--prefix`` that would make more keys fit than ``prefix`` does (None:
    none better), ``widths`` the widths whose model fits (searched only when asked)."""

    path: str
    prefix: str
    expected: int
    found: int
    missing: list[tuple[str, Shape]] = field(default_factory=list)
    unexpected: list[tuple[str, Shape]] = field(default_factory=list)
    misshaped: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, file, model
    suggest: str | None = None
    note: str | None = None
    widths: list[int] | None = None
    width_flag: str = "--width"

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped or self.note)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "fits": self.fits, "prefix": self.prefix,
                "expected": self.expected, "found": self.found,
                "missing": [{"key": k, "model_shape": list(s)} for k, s in self.missing],
                "unexpected": [{"key": k, "shape": list(s)} for k, s in self.unexpected],
                "misshaped": [{"key": k, "shape": list(a), "model_shape": list(b)}
                              for k, a, b in self.misshaped],
                "suggest_prefix": self.suggest, "note": self.note, "fitting_widths": self.widths}


def _candidates(keys: Iterable[str], want: Iterable[str]) -> dict[str, int]:
    """``{prefix: how many model keys appear under it}`` for every prefix ('' or ending in a
    dot) that turns some file key into a model key."""
    want_set = set(want)
    count: dict[str, set[str]] = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts)):
            rest = ".".join(parts[i:])
            if rest in want_set:
                count.setdefault(".".join(parts[:i]) + ("." if i else ""), set()).add(rest)
    return {p: len(v) for p, v in count.items()}


def key_report(state: Mapping[str, Any], model_shapes: Mapping[str, Shape], path: str | Path,
               prefix: str | None = None) -> KeyReport:
    """Every key of ``state`` (a checkpoint, lazily: only shapes are read) against the model's
    ``{key: shape}``, after the module prefix (``prefix``, or found as
    :func:`~.files.strip_prefix` does)."""
    keys, want = list(state), list(model_shapes)
    note = None
    try:
        names = key_map(keys, want, prefix, path)
    except CheckpointError as exc:  # a --prefix that matches nothing, two prefixes that fit
        note = str(exc).split(": ", 1)[-1] if str(path) else str(exc)
        names = {k: k for k in keys}
    used = ""
    if names:
        k0, v0 = next(iter(names.items()))
        used = v0[: len(v0) - len(k0)] if v0.endswith(k0) else ""
    rep = KeyReport(str(path), used, len(want), len(keys), note=note)
    for k in want:
        if k not in names:
            rep.missing.append((k, tuple(model_shapes[k])))
        else:
            have = state_shape(state, names[k])
            if have != tuple(model_shapes[k]):
                rep.misshaped.append((k, have, tuple(model_shapes[k])))
    rep.unexpected = [(k, state_shape(state, v)) for k, v in names.items() if k not in model_shapes]
    if rep.missing or rep.unexpected:
        cand = _candidates(keys, want)
        best = max(cand.items(), key=lambda kv: (kv[1], -len(kv[0])), default=None)
        mine = cand.get(used, 0)
        if best is not None and best[1] > mine and best[0] != used:
            rep.suggest = best[0]
        if best is None or best[1] == 0:
            inner = _candidates(want, keys)  # the model's keys hold the file's under a prefix
            top = max(inner.items(), key=lambda kv: kv[1], default=None)
            if top is not None and top[0]:
                rep.note = rep.note or (f"the model's keys are the file's under '{top[0]}' "
                                        "(the model wraps the saved module: build the inner one)")
    return rep


def model_shapes(model: Any) -> dict[str, Shape]:
    return {k: tuple(int(d) for d in v.shape) for k, v in model.state_dict().items()}


def fitting_widths(state: Mapping[str, Any], arch: str, num_classes: int, in_channels: int,
                   prefix: str | None = None, widths: Iterable[int] = range(1, 129),
                   most: int = 3) -> list[int] | None:
    """The widths (of ``widths``, at most ``most``) whose ``arch`` model the tensors of
    ``state`` fit, every model built on the meta device; None when the factory cannot build
    there."""
    import torch

    from ..models import build_model

    out: list[int] = []
    built = False
    for w in widths:
        try:
            with torch.device("meta"):
                net = build_model(arch, w, num_classes, in_channels)
        except UsageError:
            raise
        except Exception:  # this width cannot be built (or not on meta)
            continue
        built = True
        try:
            if key_report(state, model_shapes(net), "", prefix).fits:
                out.append(w)
        except CkptError:
            continue
        if len(out) >= most:
            break
    return out if built else None


def inspect_checkpoint(path: str | Path, model: str | None = None, width: int | None = None,
                       num_classes: int | None = None, in_channels: int | None = None,
                       prefix: str | None = None, allow_pt: bool = False,
                       trust_code: bool = False, search_widths: bool = True,
                       width_flag: str = "--width") -> dict[str, Any]:
    """What a checkpoint holds (tensors, shapes, metadata) and, with a model (``model``, or
    the ``arch`` its ckpt-analyzer metadata names), how its keys fit (:func:`key_report`); for
    shapes that do not fit, the widths that do (``search_widths``)."""
    from .files import CKPT_FORMAT, open_state, parse_metadata
    from .models import build_model_for

    state = open_state(path, "cpu", allow_pt)
    meta = dict(getattr(state, "metadata", None) or _header_meta(path))
    out: dict[str, Any] = {
        "path": str(path), "format": type(state).__name__, "tensors": len(state),
        "keys": [{"key": k, "shape": list(state_shape(state, k))} for k in state],
        "metadata": meta}
    contract = meta.get("format") == CKPT_FORMAT
    info: dict[str, Any] = parse_metadata(meta, path) if contract else {}
    if model is None and not contract:
        return out
    for key, val in (("width", width), ("num_classes", num_classes),
                     ("in_channels", in_channels)):
        if val is not None:
            info[key] = val
    info.setdefault("width", 1)
    missing = [k for k in ("num_classes", "in_channels") if k not in info]
    if missing:
        raise UsageError(f"{path}: cannot build a model: unknown {', '.join(missing)} (pass "
                         "--dataset, or --num-classes and --in-channels)")
    net = build_model_for(info, model, trust_code=trust_code, source=path)
    rep = key_report(state, model_shapes(net), path, prefix)
    rep.width_flag = width_flag
    arch = model or str(info.get("arch"))
    if search_widths and rep.misshaped and not rep.missing and not rep.unexpected:
        rep.widths = fitting_widths(state, arch, int(info["num_classes"]),
                                    int(info["in_channels"]), prefix)
    out["model"] = {"arch": arch, "width": int(info["width"]),
                    "num_classes": int(info["num_classes"]),
                    "in_channels": int(info["in_channels"])}
    out["report"] = rep
    return out


def _header_meta(path: str | Path) -> dict[str, str]:
    from .files import PICKLE_EXTS, read_header

    p = Path(path)
    if p.is_file() and p.suffix not in PICKLE_EXTS:
        return read_header(p)[1]
    return {}


def format_key_report(rep: KeyReport, n: int = MAX_LISTED) -> str:
    """The report as indented lines (the first says whether it fits)."""
    lines = [f"{rep.path}: " + ("fits the model" if rep.fits else "does not fit the model")
             + f" ({rep.found} tensor(s) in the file, {rep.expected} in the model"
             + (f", prefix '{rep.prefix}' removed" if rep.prefix else "") + ")"]

    def block(title: str, rows: list[str]) -> None:
        if rows:
            lines.append(f"  {title} ({len(rows)}):")
            lines.extend(f"    {r}" for r in rows[:n])
            if len(rows) > n:
                lines.append(f"    ... {len(rows) - n} more")

    block("missing (the model wants, the file lacks)",
          [f"{k} {list(s)}" for k, s in rep.missing])
    block("unexpected (in the file, not in the model)",
          [f"{k} {list(s)}" for k, s in rep.unexpected])
    block("mis-shaped (file vs model)", [f"{k} {list(a)} vs {list(b)}"
                                         for k, a, b in rep.misshaped])
    if rep.note:
        lines.append(f"  note: {rep.note}")
    if rep.suggest:
        lines.append(f"  the keys fit under prefix '{rep.suggest}': pass --prefix "
                     f"{rep.suggest.rstrip('.')}")
    elif rep.suggest is not None:
        lines.append("  the keys fit without a prefix (leave --prefix out)")
    if rep.widths:
        lines.append(f"  the tensors fit width {', '.join(map(str, rep.widths))}: pass "
                     f"{rep.width_flag} {rep.widths[0]}")
    elif rep.widths is not None and rep.misshaped:
        lines.append("  no width in 1..128 fits these shapes")
    return "\n".join(lines)
