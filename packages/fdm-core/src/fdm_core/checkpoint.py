"""Checkpoint I/O: safetensors for tensors, JSON for everything else, atomic writes (docs/design.md
§11.2).

Never pickle. `save_state` takes a nested structure (dicts and lists of tensors, numbers,
strings, bools, None) such as a model, optimizer and RNG state together; tensors go into the
safetensors file under their dotted path, the rest into a JSON skeleton stored in the file's
metadata, so one file restores the whole structure with `load_state`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

CONFIG_KEY = "fdm_config"
STATE_KEY = "fdm_state"
_TENSOR = "__tensor__"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or not an fdm checkpoint."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors` to a safetensors file with `config` as JSON in its metadata, atomically."""
    meta = dict(metadata or {})
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_write(path) as handle:
        handle.write(save(tensors, metadata=meta))


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file: {exc}"
        ) from None
    return tensors, meta


def _config(meta: dict[str, str]) -> dict[str, Any] | None:
    return json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None


def load_tensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a file written by `save_tensors`: (tensors, config or None)."""
    tensors, meta = _read(path)
    return tensors, _config(meta)


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value
        return {_TENSOR: prefix}
    if isinstance(value, dict):
        return {"dict": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot store a {type(value).__name__} at {prefix!r} in a checkpoint")


def _unflatten(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if _TENSOR in node:
        return tensors[node[_TENSOR]]
    if "dict" in node:
        return {k: _unflatten(v, tensors) for k, v in node["dict"]}
    if "list" in node:
        return [_unflatten(v, tensors) for v in node["list"]]
    if "tuple" in node:
        return tuple(_unflatten(v, tensors) for v in node["tuple"])
    return node["value"]


def save_state(
    path: str | os.PathLike[str], state: dict[str, Any], config: dict[str, Any] | None = None
) -> None:
    """Save a nested state (tensors and JSON leaves) as one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "state", tensors)
    save_tensors(path, tensors, config, {STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Inverse of `save_state`: (state, config or None)."""
    tensors, meta = _read(path)
    if STATE_KEY not in meta:
        raise CheckpointError(
            f"{path} holds tensors but no fdm state (was it written by save_state?)"
        )
    return _unflatten(json.loads(meta[STATE_KEY]), tensors), _config(meta)
