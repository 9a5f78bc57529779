"""Checkpoint files: the format's names, atomic safetensors writes, validated reads, key prefixes."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

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


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"))


def not_regular(mode: int) -> str | None:
    """``'not a regular file (FIFO)'`` and the like for a file mode that is not a regular
    file's, else None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def open_regular(path: str | Path) -> tuple[BinaryIO, int]:
    """Open a file to read, refusing (CheckpointError) anything but a regular file without
    blocking or reading it: a FIFO is opened non-blocking and never read, ``/dev/zero`` is not
    read, a symlink loop is named. Returns (the open file, its size)."""
    path = Path(path)
    try:
        why = not_regular(os.stat(path).st_mode)
        if why is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            st = os.fstat(fd)  # the file opened, in case it was replaced since the stat
            why = not_regular(st.st_mode)
            if why is None:
                return os.fdopen(fd, "rb"), st.st_size
            os.close(fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError("symlink loop (too many levels of symbolic links)",
                                  path) from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise CheckpointError(f"broken symlink (to {os.readlink(path)})", path) from None
        raise CheckpointError(f"cannot read ({exc.strerror})", path) from None
    raise CheckpointError(why, path)


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors file's framing; return (tensor header, metadata). Anything but a
    regular file is refused unread (:func:`open_regular`)."""
    path = Path(path)
    fh, size = open_regular(path)
    try:
        with fh:
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
    for k, low in META_MIN.items():
        if out[k] < low:
            raise CheckpointError(f"bad metadata value: {k} {out[k]} (must be >= {low})", path)
    return out


META_MIN = {"width": 1, "epoch": 0, "step": -1, "num_classes": 1, "in_channels": 1}
"""The least value of each integer metadata field (``step`` -1: not recorded)."""


PICKLE_EXTS = (".pt", ".pth", ".bin", ".ckpt")
"""Pickle-based checkpoint files: read only with ``allow_pt`` and ``torch.load(weights_only=True)``."""


def read_state_dict(path: str | Path, device: str | torch.device = "cpu",
                    allow_pt: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint. Pickle-based files (``.pt``, ``.pth``, ``.bin``, Lightning
    ``.ckpt``) only with ``allow_pt`` and never unpickled beyond
    ``torch.load(weights_only=True)``; a dict holding ``state_dict`` (Lightning, many scripts)
    gives that entry, which a Lightning ``.ckpt`` must have. Any other dict that holds more than
    tensors (``{"epoch": 3, "model_state_dict": {...}, "optimizer_state_dict": {...}}``) gives
    its nested dicts' tensors under dotted keys (``model_state_dict.fc.weight``,
    :func:`flatten_tensors`), so a module prefix or ``--state-key`` picks the model. A folder
    checkpoint (:func:`open_state`) is read whole."""
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
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = flatten_tensors(obj)  # {"epoch": 3, "model_state_dict": {...}, ...}
        if not isinstance(obj, dict) or not obj:
            raise CheckpointError("not a state_dict of tensors", path)
        return obj
    if Path(path).is_dir() or path.name.endswith((INDEX_SUFFIX, BIN_INDEX_SUFFIX)):
        return dict(open_state(path, device, allow_pt))
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


WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
"""Module names that FSDP (1) and activation checkpointing insert *inside* saved keys
(``layer1._fsdp_wrapped_module.weight``); removed when the model's own keys have none."""


def _auto_prefix(keys: list[str], want: list[str], path: str | Path) -> str:
    """The prefix under which every key of ``want`` is in ``keys`` ('' when they are there as
    they are, or when no prefix fits); several that fit are an error."""
    have = set(keys)
    if not want or all(k in have for k in want):
        return ""
    first = want[0]
    found = sorted({k[:len(k) - len(first)] for k in keys if k.endswith("." + first)})
    fits = [p for p in found if all(p + k in have for k in want)]
    if len(fits) > 1:
        raise CheckpointError(f"several module prefixes fit the model ({', '.join(map(repr, fits))}): "
                              "choose one with --prefix", path)
    return fits[0] if fits else ""


def _prefix_of(keys: list[str], want: list[str], prefix: str | None, path: str | Path) -> str:
    """The module prefix to remove from ``keys`` so that they are the model's (``want``), ''
    for none; see :func:`strip_prefix`. Looks at key names only."""
    if prefix:
        p = prefix if prefix.endswith(".") else prefix + "."
        if not any(k.startswith(p) for k in keys):
            raise CheckpointError(f"prefix '{p}' matches no key: the model expects "
                                  f"{_sample(want)}; the file has {_sample(keys)}", path)
        # a module prefix inside it (``--state-key model_state_dict`` holding DDP's module.)
        return p + _auto_prefix([k[len(p):] for k in keys if k.startswith(p)], want, path)
    return _auto_prefix(keys, want, path)


def _unwrap(key: str) -> str:
    for seg in WRAPPER_SEGMENTS:
        key = key.replace(seg, "")
    return key


def key_map(keys: Iterable[str], want: Iterable[str], prefix: str | None = None,
            path: str | Path = "") -> dict[str, str]:
    """``{name without the module prefix: the file's key}`` of every key under the prefix that
    makes ``keys`` the model's (``want``; :func:`strip_prefix`). FSDP's
    ``_fsdp_wrapped_module.`` and ``_checkpoint_wrapped_module.`` inside the keys are removed
    first when the model's keys have none (and no two keys become one)."""
    keys, want = list(keys), list(want)
    names = {k: k for k in keys}
    if (any(seg in k for k in keys for seg in WRAPPER_SEGMENTS)
            and not any(seg in k for k in want for seg in WRAPPER_SEGMENTS)):
        clean = {_unwrap(k): k for k in keys}
        if len(clean) == len(keys):
            names = clean
    visible = list(names)
    p = _prefix_of(visible, want, prefix, path)
    return {k[len(p):]: names[k] for k in visible if k.startswith(p)}


def strip_prefix(state: Mapping[str, T], expected: Iterable[str], prefix: str | None = None,
                 path: str | Path = "") -> dict[str, T]:
    """``state`` with a module prefix removed so that its keys are the model's (``expected``).

    With ``prefix`` ('model' or 'model.'), keys under it are kept without it and the others
    dropped (a module prefix under it, such as DDP's ``module.``, is still found); a prefix
    that matches no key is an error naming the expected and found keys.
    Without it, a state that already holds every expected key is returned as is; otherwise the
    prefix under which every expected key appears (Lightning's ``model.``, DDP's ``module.``,
    ``torch.compile``'s ``_orig_mod.``, a ``{"model_state_dict": ...}`` file's
    ``model_state_dict.``) is found and removed; two such prefixes are an error.
    Only the kept entries are looked up (a lazy :class:`LazyState` reads no other)."""
    names = key_map(state, expected, prefix, path)
    if isinstance(state, LazyState):
        state.preload(names.values())
    return {k: state[v] for k, v in names.items()}


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                    prefix: str | None = None) -> None:
    """Copy ``state`` into ``model`` after checking that every key and shape fits (a module
    prefix is removed first, see :func:`strip_prefix`). Keys and shapes are checked from the
    names (and, for a :class:`LazyState`, the header) before any tensor is read, and only
    the model's tensors are read: an unused tensor under another prefix costs nothing.
    A mismatch is one line naming the file and the first cause;
    :func:`~ckpt_analyzer.checkpoints.models.key_report` gives every key."""
    own = model.state_dict()
    names = key_map(state, own, prefix, path)  # the model's key -> the file's
    for key, value in own.items():
        if key not in names:
            raise CheckpointError(f"does not fit the model: missing tensor '{key}' "
                                  f"(model wants {tuple(value.shape)}; the file has "
                                  f"{_sample(names)})", path)
        shape = state_shape(state, names[key])
        if shape != tuple(value.shape):
            raise CheckpointError(
                f"does not fit the model: '{key}' has shape {shape}, "
                f"model wants {tuple(value.shape)}", path)
    extra = [k for k in names if k not in own]
    if extra:
        raise CheckpointError(f"does not fit the model: unexpected tensor '{extra[0]}'", path)
    if isinstance(state, LazyState):
        state.preload(names[k] for k in own)
    model.load_state_dict({k: state[names[k]] for k in own}, strict=True)


def state_shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """The shape of ``state[key]``, from the header for a :class:`LazyState` (nothing read)."""
    if isinstance(state, LazyState):
        return state.shape(key)
    return tuple(int(d) for d in getattr(state[key], "shape", ()))


class LazyState(Mapping[str, "torch.Tensor"]):
    """A checkpoint's tensors read when first looked up (or :meth:`preload` ed), shapes known
    without reading: one safetensors file, a sharded Hugging Face folder, a DCP folder."""

    path: Path
    _shapes: dict[str, tuple[int, ...]]
    _read: dict[str, torch.Tensor]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def _get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, key: str) -> torch.Tensor:
        t = self._read.get(key)
        if t is None:
            if key not in self._shapes:
                raise KeyError(key)
            t = self._read[key] = self._get(key)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def preload(self, keys: Iterable[str]) -> None:
        """Read these tensors now (e.g. in a prefetch thread)."""
        for k in keys:
            self[k]


class SafetensorsState(LazyState):
    """The tensors of one safetensors file, each read when it is first looked up (shapes come
    from the header), so a tensor the model does not use is never read. The file is validated
    (:func:`read_header`) and opened once: every tensor comes from the version of the file
    that was opened, even if it is replaced meanwhile."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from safetensors import safe_open

        self.path = Path(path)
        header, _ = read_header(self.path)
        try:
            self._file = safe_open(str(self.path), framework="pt", device=str(device))
            names = list(self._file.keys())
        except Exception as exc:
            raise CheckpointError(f"cannot read tensors ({exc})".splitlines()[0],
                                  self.path) from None
        self._shapes = {k: tuple(int(d) for d in header[k].get("shape", ())) for k in names}
        self._read = {}

    def _get(self, key: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor '{key}' ({exc})".splitlines()[0],
                                  self.path) from None


INDEX_SUFFIX = ".safetensors.index.json"
"""A sharded Hugging Face checkpoint's index (``model.safetensors.index.json``)."""

BIN_INDEX_SUFFIX = ".bin.index.json"
"""The index of a sharded ``.bin`` checkpoint (``pytorch_model.bin.index.json``)."""


def flatten_tensors(obj: Mapping[Any, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of nested dicts under dotted keys (``{"a": {"b": t}, "epoch": 3}`` ->
    ``{"a.b": t}``); other values (numbers, lists such as an optimizer's param_groups) are
    left out."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, Mapping):
            out.update(flatten_tensors(v, f"{prefix}{k}."))
    return out


def open_state(path: str | Path, device: str | torch.device = "cpu", allow_pt: bool = False
               ) -> Mapping[str, torch.Tensor]:
    """The tensors of one checkpoint, read lazily for safetensors (:class:`SafetensorsState`),
    a sharded Hugging Face folder (``*.safetensors.index.json`` and its shards) and a PyTorch
    distributed checkpoint folder (``.metadata``, only with ``allow_pt``;
    :mod:`.foreign`); a pickle-based file is read whole (:func:`read_state_dict`)."""
    path = Path(path)
    if path.suffix in PICKLE_EXTS:
        return read_state_dict(path, device, allow_pt)
    if path.is_dir() or path.name.endswith((INDEX_SUFFIX, BIN_INDEX_SUFFIX)):
        from .foreign import open_folder

        return open_folder(path, device, allow_pt)
    return SafetensorsState(path, device)


def model_keys(state: Mapping[str, Any], want: Iterable[str], prefix: str | None = None
               ) -> list[str]:
    """The keys of ``state`` that hold the model's tensors ``want`` (after its module prefix,
    :func:`strip_prefix`); [] when they cannot be told."""
    try:
        names = key_map(state, want, prefix, "")
    except CheckpointError:
        return []
    return [names[k] for k in want if k in names]


def checkpoint_scalars(path: str | Path, allow_pt: bool = False) -> dict[str, Any]:
    """The non-tensor values a checkpoint records beside its tensors: a safetensors file's
    metadata, a sharded folder's index metadata, a pickle-based file's top-level numbers and
    strings (``{"epoch": 3, "test_acc": 0.91, "model_state_dict": ...}``, read with
    ``torch.load(weights_only=True)``); {} for a DCP folder."""
    path = Path(path)
    if path.suffix in PICKLE_EXTS:
        import torch

        if not allow_pt:
            raise CheckpointError("pickle-based checkpoints are read only with --allow-pt", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load with weights_only=True ({exc})".splitlines()[0],
                                  path) from None
        if not isinstance(obj, dict):
            return {}
        return {str(k): v for k, v in obj.items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if path.is_dir() or path.name.endswith((INDEX_SUFFIX, BIN_INDEX_SUFFIX)):
        from .foreign import folder_metadata

        return folder_metadata(path)
    return dict(read_header(path)[1])
