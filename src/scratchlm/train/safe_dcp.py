"""Loading a torch.distributed.checkpoint (DCP) folder without unpickling anything from it.

DCP writes its index (`sharded/.metadata`) with pickle and reads it back with pickle.load, and
reads every non-tensor value (optimizer hyperparameters) with torch.load(weights_only=False):
a checkpoint folder from someone else would run any code it holds. So when we save, we write
the same index as plain JSON beside it (`sharded/metadata.json`), and we load through

    json_index_reader(path)   a FileSystemReader whose index comes from metadata.json
    safe_load_planner()       a DefaultLoadPlanner that reads non-tensor values with
                              weights_only=True (DCP already reads tensors that way)

A folder without metadata.json (written by another tool, or by scratchlm before this file
existed) is read with DCP's own pickle-based reader only when the user says they trust it
(`pretrain.trust_pickled_checkpoints`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json

INDEX = "metadata.json"
FORMAT = "scratchlm-dcp-index"


def _torch_attr(name: str, kind: type) -> Any:
    """torch.float32 from "float32": a lookup, never a call, and only of the expected kind."""
    value = getattr(torch, name, None)
    if not isinstance(value, kind):
        raise ValueError(f"{name!r} is not a torch {kind.__name__}")
    return value


def index_to_json(metadata: Any) -> dict[str, Any]:
    """DCP's Metadata (what dcp.save returns) as JSON-able data."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    entries: dict[str, Any] = {}
    for fqn, m in metadata.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            entries[fqn] = {"bytes": True}
            continue
        p = m.properties
        entries[fqn] = {
            "dtype": str(p.dtype).removeprefix("torch."),
            "layout": str(p.layout).removeprefix("torch."),
            "memory_format": str(p.memory_format).removeprefix("torch."),
            "requires_grad": p.requires_grad,
            "pin_memory": p.pin_memory,
            "size": list(m.size),
            "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks],
        }
    storage = [
        [
            index.fqn,
            None if index.offset is None else list(index.offset),
            index.index,
            info.relative_path,
            info.offset,
            info.length,
            None if info.transform_descriptors is None else list(info.transform_descriptors),
        ]
        for index, info in metadata.storage_data.items()
    ]
    planner = {k: list(v) for k, v in (metadata.planner_data or {}).items()}
    return {
        "format": FORMAT,
        "version": metadata.version,
        "entries": entries,
        "storage": storage,
        "planner_data": planner,
    }


def index_from_json(data: dict[str, Any]) -> Any:
    """The Metadata that `index_to_json` wrote; only DCP's plain data classes are built."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    if data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    entries: dict[str, Any] = {}
    for fqn, e in data["entries"].items():
        if e.get("bytes"):
            entries[fqn] = BytesStorageMetadata()
            continue
        props = TensorProperties(
            dtype=_torch_attr(e["dtype"], torch.dtype),
            layout=_torch_attr(e["layout"], torch.layout),
            requires_grad=bool(e["requires_grad"]),
            memory_format=_torch_attr(e["memory_format"], torch.memory_format),
            pin_memory=bool(e["pin_memory"]),
        )
        chunks = [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in e["chunks"]]
        entries[fqn] = TensorStorageMetadata(props, torch.Size(e["size"]), chunks)
    storage = {}
    for fqn, offset, index, path, start, length, transforms in data["storage"]:
        if Path(path).name != path or path in ("", ".", ".."):
            raise ValueError(f"storage file {path!r} is not a file name in the folder")
        key = MetadataIndex(fqn, None if offset is None else torch.Size(offset), index)
        storage[key] = _StorageInfo(path, int(start), int(length), transforms)
    planner = {k: tuple(v) for k, v in data["planner_data"].items()}
    return Metadata(entries, planner, storage, StorageMeta(), data.get("version"))


def write_index(folder: Path, metadata: Any) -> None:
    atomic_write_json(folder / INDEX, index_to_json(metadata))


def has_index(folder: Path) -> bool:
    return (folder / INDEX).is_file()


def json_index_reader(folder: Path) -> Any:
    """A DCP storage reader for `folder` that never opens its pickled .metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = index_from_json(json.loads((folder / INDEX).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageError(f"{folder / INDEX}: not a readable checkpoint index ({e})") from None

    class JsonIndexReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return JsonIndexReader(folder)


def safe_load_planner() -> Any:
    """DCP's default planner, reading non-tensor values with torch.load(weights_only=True)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            safe = torch.load(value, weights_only=True)
            super().load_bytes(read_item, io.BytesIO(_saved(safe)))

    return WeightsOnlyPlanner()


def _saved(value: Any) -> bytes:
    """`value` serialized again, for DefaultLoadPlanner.load_bytes to read: what it reads is
    now what weights_only=True accepted (plain numbers, strings, lists, dicts, tensors)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()
