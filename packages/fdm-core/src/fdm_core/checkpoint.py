"""Checkpoint I/O: safetensors for tensors, JSON for everything else, atomic writes (docs/design.md
§11.2).

Never pickle. `save_state` takes a nested structure (dicts and lists of tensors, numbers,
strings, bools, None) such as a model, optimizer and RNG state together; tensors go into the
safetensors file under their dotted path, the rest into a JSON skeleton stored in the file's
metadata, so one file restores the whole structure with `load_state`.

Every file written here carries a SHA-256 digest of its tensors and metadata (`with_digest`),
checked on every read (`verify_digest`): a flipped byte anywhere in the file is refused with
one line, where it would otherwise load as silently different weights. A file without the
digest is refused as well: otherwise one changed byte in the digest's own key would turn the
check off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

CONFIG_KEY = "fdm_config"
STATE_KEY = "fdm_state"
DIGEST_KEY = "fdm_sha256"
_TENSOR = "__tensor__"
MAX_DEPTH = 64  # deeper skeletons are refused (states nest a few levels: optimizer.state.0.x)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or not an fdm checkpoint."""


def file_mode(path: Path) -> int:
    """The permissions a file written at `path` gets: those of the file it replaces, else what
    ``open()`` would give a new file (0o666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    A crash leaves either the old file or the new one, never a partial file. The file gets the
    replaced file's permissions, or the umask's for a new one (not mkstemp's private 0600).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.strerror and _names_temporary(exc.filename, path):
            exc.filename = str(path)  # name the file being written, not its temporary
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _names_temporary(filename: object, path: Path) -> bool:
    """An error's file name is none, or one of `atomic_write`'s temporaries for `path` (also
    one that mkstemp failed to create: a read-only folder)."""
    name = os.path.basename(os.fsdecode(filename)) if isinstance(filename, str | bytes) else ""
    return filename is None or (name.startswith(f".{path.name}.") and name.endswith(".tmp"))


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata entries (but the digest's own) and the tensors, both in name
    order: each tensor's name, dtype and shape, then its bytes."""
    digest = hashlib.sha256()
    entries = sorted((k, v) for k, v in metadata.items() if k != DIGEST_KEY)
    digest.update(json.dumps(entries).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def with_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` plus the `tensors_digest` of the file about to be written."""
    return {**metadata, DIGEST_KEY: tensors_digest(tensors, metadata)}


def verify_digest(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """CheckpointError when a file read back carries no digest or does not match it."""
    stored = metadata.get(DIGEST_KEY)
    if stored is None:
        raise CheckpointError(
            f"{path} carries no {DIGEST_KEY!r} digest: fdm writes one into every file, so this "
            "one was changed or written by another tool; use an intact copy, or re-save your "
            "own tensors with fdm_core.save_tensors (checkpoints) or "
            "fdm_models.save_pretrained (model folders)"
        )
    if stored != tensors_digest(tensors, metadata):
        raise CheckpointError(
            f"{path} is damaged: its content does not match the SHA-256 digest stored in it "
            "(a changed or corrupted byte); use an intact copy"
        )


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
        handle.write(save(tensors, metadata=with_digest(tensors, meta)))


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
    verify_digest(path, tensors, meta)
    return tensors, meta


def _config(path: str | os.PathLike[str], meta: dict[str, str]) -> dict[str, Any] | None:
    if CONFIG_KEY not in meta:
        return None
    try:
        config = json.loads(meta[CONFIG_KEY])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path}: the config in its metadata is not valid JSON ({exc})"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the config in its metadata is not a JSON object")
    return config


def load_tensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a file written by `save_tensors`: (tensors, config or None)."""
    tensors, meta = _read(path)
    return tensors, _config(path, meta)


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


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _unflatten(node: Any, tensors: dict[str, torch.Tensor], depth: int = 0) -> Any:
    """Rebuild the structure from its skeleton; ValueError for anything `_flatten` cannot have
    written (a damaged or hostile file)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"a skeleton node must be a one-key object, not {str(node)[:40]!r}")
    ((kind, value),) = node.items()
    if kind == _TENSOR:
        if not isinstance(value, str) or value not in tensors:
            raise ValueError(f"it names a tensor {str(value)[:60]!r} the file does not hold")
        return tensors[value]
    if kind == "value":
        if not _scalar(value):
            raise ValueError(f"a leaf holds a {type(value).__name__}")
        return value
    if kind not in ("dict", "list", "tuple") or not isinstance(value, list):
        raise ValueError(f"unknown skeleton node {kind!r}")
    if kind == "dict":
        if not all(isinstance(kv, list) and len(kv) == 2 and _scalar(kv[0]) for kv in value):
            raise ValueError("a dict node must hold [key, value] pairs with scalar keys")
        return {k: _unflatten(v, tensors, depth + 1) for k, v in value}
    items = [_unflatten(v, tensors, depth + 1) for v in value]
    return items if kind == "list" else tuple(items)


def save_state(
    path: str | os.PathLike[str], state: dict[str, Any], config: dict[str, Any] | None = None
) -> None:
    """Save a nested state (tensors and JSON leaves) as one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "state", tensors)
    save_tensors(path, tensors, config, {STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Inverse of `save_state`: (state, config or None). CheckpointError for a file it cannot
    have written: not safetensors, no state, or a skeleton that is not valid (bad JSON, unknown
    nodes, tensors the file does not hold, nesting deeper than MAX_DEPTH)."""
    tensors, meta = _read(path)
    if STATE_KEY not in meta:
        raise CheckpointError(
            f"{path} holds tensors but no fdm state (was it written by save_state?)"
        )
    try:
        state = _unflatten(json.loads(meta[STATE_KEY]), tensors)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: damaged state metadata: {exc}") from None
    return state, _config(path, meta)
