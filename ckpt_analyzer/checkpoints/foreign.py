"""Folder checkpoints of other trainers, read lazily: a sharded Hugging Face checkpoint
(``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors``) and a PyTorch
distributed checkpoint (DCP: ``.metadata`` + ``*.distcp``, also what FSDP's sharded state dict
is saved as); and, whole, a sharded ``.bin`` one (``pytorch_model.bin.index.json`` + its
shards, each through ``torch.load(weights_only=True)``, with ``--allow-pt``).

DCP's ``.metadata`` is a pickle, and torch's own ``FileSystemReader.read_metadata`` reads it
with plain ``pickle.load`` (any object, any code). It is read here by :class:`_MetadataUnpickler`
instead, which builds only DCP's metadata classes (and ``torch.Size``, dtypes, a path) and
refuses every other global; the tensor files are read by torch's reader itself, which uses
``torch.load(weights_only=True)``. Non-tensor entries (``BytesStorageMetadata``, read by torch
with full unpickling) are never requested. Still, DCP is opt-in with ``--allow-pt``, as every
pickle-based format is (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .files import (
    BIN_INDEX_SUFFIX,
    INDEX_SUFFIX,
    LazyState,
    SafetensorsState,
    open_regular,
    read_state_dict,
)

if TYPE_CHECKING:
    import torch

DCP_METADATA = ".metadata"


def index_files(folder: Path, suffix: str = INDEX_SUFFIX) -> list[Path]:
    """The ``*.safetensors.index.json`` (``suffix``) files directly in ``folder``."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
    except OSError:
        return []


def folder_format(folder: str | Path) -> str | None:
    """``"dcp"`` for a folder holding a DCP ``.metadata``, ``"hf-sharded"`` for one holding a
    ``*.safetensors.index.json``, ``"hf-sharded-bin"`` for one holding only a
    ``*.bin.index.json``, else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / DCP_METADATA).is_file():
        return "dcp"
    if index_files(folder):
        return "hf-sharded"
    return "hf-sharded-bin" if index_files(folder, BIN_INDEX_SUFFIX) else None


def open_folder(path: str | Path, device: str | torch.device = "cpu", allow_pt: bool = False
                ) -> LazyState:
    """The lazy state of a folder checkpoint (or of a ``*.safetensors.index.json`` file)."""
    path = Path(path)
    kind = folder_format(path) if path.is_dir() else (
        "hf-sharded-bin" if path.name.endswith(BIN_INDEX_SUFFIX) else "hf-sharded")
    if kind == "hf-sharded":
        return ShardedSafetensorsState(path, device)
    if kind == "hf-sharded-bin":
        if not allow_pt:
            raise CheckpointError("a folder of .bin shards is read only with --allow-pt "
                                  "(torch.load(weights_only=True))", path)
        return ShardedBinState(path, device)
    if kind == "dcp":
        if not allow_pt:
            raise CheckpointError("a PyTorch distributed checkpoint (DCP) folder is read only "
                                  "with --allow-pt (its .metadata is a pickle)", path)
        return DCPState(path, device)
    if not path.is_dir():
        raise CheckpointError("no such checkpoint", path)
    raise CheckpointError("a folder, but neither a sharded safetensors checkpoint "
                          f"(*{INDEX_SUFFIX}) nor a PyTorch distributed checkpoint "
                          f"({DCP_METADATA})", path)


def read_index(index: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """(``weight_map``: tensor -> shard file name, ``metadata``) of an index, validated: every
    shard is a plain file name in the index's folder."""
    fh, size = open_regular(index)
    with fh:
        raw = fh.read(min(size, 200_000_000))
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError("not a safetensors index (not JSON)", index) from None
    wmap = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise CheckpointError("not a safetensors index (no 'weight_map' of tensor names to "
                              "shard files)", index)
    bad = [v for v in set(wmap.values()) if Path(v).name != v or v in (".", "..")]
    if bad:
        raise CheckpointError(f"shard '{bad[0]}' is not a file name in the index's folder", index)
    meta = obj.get("metadata")
    return dict(wmap), dict(meta) if isinstance(meta, dict) else {}


class ShardedSafetensorsState(LazyState):
    """A sharded Hugging Face checkpoint: the tensors its index names, each read from its shard
    when first looked up; every shard's header is validated when it is opened (all at once,
    for the shapes), no tensor data is read before it is asked for."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        path = _one_index(Path(path), INDEX_SUFFIX)
        self.path = path.parent
        self.index = path
        wmap, self.metadata = read_index(path)
        self._shards = {name: SafetensorsState(shard, device)
                        for name, shard in _shard_paths(path, wmap).items()}
        self._where = {}
        self._shapes = {}
        for key, name in wmap.items():
            shard_state = self._shards[name]
            if key not in shard_state:
                raise CheckpointError(f"tensor '{key}' is not in its shard {name}", path)
            self._where[key] = shard_state
            self._shapes[key] = shard_state.shape(key)
        self._read = {}

    def _get(self, key: str) -> torch.Tensor:
        return self._where[key][key]


def _one_index(path: Path, suffix: str) -> Path:
    """The index of a folder (or the index file given)."""
    if not path.is_dir():
        return path
    found = index_files(path, suffix)
    if len(found) != 1:
        raise CheckpointError(f"{len(found)} files *{suffix} in one folder"
                              if found else f"no *{suffix} in this folder", path)
    return found[0]


def _shard_paths(index: Path, wmap: dict[str, str]) -> dict[str, Path]:
    out = {}
    for name in sorted(set(wmap.values())):
        shard = index.parent / name
        if not shard.exists() and not shard.is_symlink():
            raise CheckpointError(f"shard {name} named by {index.name} is missing", index.parent)
        out[name] = shard
    return out


def folder_metadata(path: str | Path) -> dict[str, Any]:
    """A sharded folder's index ``metadata`` (validated index, shards present, none read); {}
    for a DCP folder (its metadata validated)."""
    path = Path(path)
    kind = folder_format(path) if path.is_dir() else (
        "hf-sharded-bin" if path.name.endswith(BIN_INDEX_SUFFIX) else "hf-sharded")
    if kind == "dcp":
        read_dcp_metadata(path)
        return {}
    index = _one_index(path, BIN_INDEX_SUFFIX if kind == "hf-sharded-bin" else INDEX_SUFFIX)
    wmap, meta = read_index(index)
    _shard_paths(index, wmap)
    return meta


class ShardedBinState(LazyState):
    """A sharded ``.bin`` checkpoint (transformers with ``safe_serialization=False``): every
    shard read whole when it is opened, through ``torch.load(weights_only=True)`` (a pickle
    has no header to read shapes from), only the tensors its index names kept."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        index = _one_index(Path(path), BIN_INDEX_SUFFIX)
        self.path = index.parent
        self.index = index
        wmap, self.metadata = read_index(index)
        self._read = {}
        for name, shard in _shard_paths(index, wmap).items():
            tensors = read_state_dict(shard, device, allow_pt=True)
            for key in (k for k, v in wmap.items() if v == name):
                if key not in tensors:
                    raise CheckpointError(f"tensor '{key}' is not in its shard {name}", index)
                self._read[key] = tensors[key]
        self._shapes = {k: tuple(int(d) for d in t.shape) for k, t in self._read.items()}


_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "MetadataIndex", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
     ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes only: any other global is refused (never imported)."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _DCP_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata class")


def read_dcp_metadata(folder: Path) -> Any:
    """The ``Metadata`` of a DCP folder, unpickled by :class:`_MetadataUnpickler`."""
    from torch.distributed.checkpoint.metadata import Metadata

    fh, _ = open_regular(folder / DCP_METADATA)
    try:
        with fh:
            md = _MetadataUnpickler(fh).load()
    except Exception as exc:
        raise CheckpointError(f"not a readable DCP checkpoint ({DCP_METADATA}: {exc})"
                              .splitlines()[0], folder) from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise CheckpointError(f"not a readable DCP checkpoint ({DCP_METADATA} holds "
                              f"{type(md).__name__})", folder)
    return md


class DCPState(LazyState):
    """A PyTorch distributed checkpoint folder, read in one process without a process group:
    its tensors' names and shapes come from ``.metadata``; :meth:`preload` reads the tensors
    asked for (only those) with ``torch.distributed.checkpoint.load(no_dist=True)``. Keys are
    DCP's flattened names (``model.fc.weight`` for ``{"model": model.state_dict()}``)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = Path(path)
        self.device = device
        self._md = read_dcp_metadata(self.path)
        entries = {k: v for k, v in self._md.state_dict_metadata.items()
                   if isinstance(v, TensorStorageMetadata)}
        self._shapes = {k: tuple(int(d) for d in v.size) for k, v in entries.items()}
        self._dtypes = {k: v.properties.dtype for k, v in entries.items()}
        self._read = {}

    def _get(self, key: str) -> torch.Tensor:
        self.preload([key])
        return self._read[key]

    def preload(self, keys: Iterable[str]) -> None:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import StorageMeta

        want = [k for k in dict.fromkeys(keys) if k in self._shapes and k not in self._read]
        if not want:
            return
        md = self._md

        class Reader(FileSystemReader):
            def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
                if getattr(md, "storage_meta", None) is None:
                    md.storage_meta = StorageMeta()
                md.storage_meta.load_id = self.load_id
                return md  # the one read by the restricted unpickler, never pickle.load

        out = {k: torch.empty(self._shapes[k], dtype=self._dtypes[k]) for k in want}
        try:
            with warnings.catch_warnings():  # "torch.distributed is ... uninitialized"
                warnings.simplefilter("ignore")
                dcp.load(out, storage_reader=Reader(str(self.path)), no_dist=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read DCP tensors ({exc})".splitlines()[0],
                                  self.path) from None
        for k, t in out.items():
            self._read[k] = t.to(self.device)
