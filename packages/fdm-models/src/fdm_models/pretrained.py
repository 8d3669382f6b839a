"""``save_pretrained`` / ``from_pretrained``: a model directory in the diffusers layout.

A directory holds ``config.json`` ({"unet": <UNetConfig>, plus any extra keys the caller stores,
e.g. the f-DM process config}) and ``model.safetensors``. Both are written atomically (temporary
file, fsync, ``os.replace``). Loading validates the config and checks the weights against it;
pickle / ``torch.load`` are never used (docs/design.md §11.2), and a file that leads outside
the directory (a symbolic link out of it) is refused (`own_file`).

The helpers `write_model_dir`, `read_model_config` and `load_weights` are shared with
:mod:`fdm_models.autoencoder`, whose directories have the same layout under the key
``autoencoder``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from fdm_core import atomic_write, inside_folder, verify_digest, with_digest

from .config import UNetConfig
from .unet import MultiStageUNet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
UNET_KEY = "unet"
MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few kB; a larger one is refused unread
ModelT = TypeVar("ModelT", bound=nn.Module)


class WeightsMismatchError(ValueError):
    """The weights in ``model.safetensors`` do not fit the model built from ``config.json``."""


def _package_version() -> str:
    try:
        return version("fdm-models")
    except PackageNotFoundError:
        return "unknown"


def save_pretrained(
    model: MultiStageUNet,
    directory: str | os.PathLike[str],
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``.

    ``extra_config`` entries (JSON-serialisable) are stored beside the ``unet`` key and come
    back from :func:`load_pretrained_config`. Returns the directory.
    """
    return write_model_dir(
        directory,
        type(model).__name__,
        UNET_KEY,
        model.config.model_dump(mode="json"),
        model.state_dict(),
        extra_config,
    )


def write_model_dir(
    directory: str | os.PathLike[str],
    class_name: str,
    key: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (``state_dict`` on the CPU) and then ``config.json``
    ({"_class_name", "_fdm_models_version", `key`: `config`, **extra}) atomically."""
    extra = dict(extra_config or {})
    reserved = {key, "_class_name", "_fdm_models_version"} & set(extra)
    if reserved:
        raise ValueError(f"extra_config may not use the reserved keys {sorted(reserved)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "_class_name": class_name,
        "_fdm_models_version": _package_version(),
        key: config,
        **extra,
    }
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    with atomic_write(directory / WEIGHTS_NAME) as handle:
        handle.write(save(tensors, metadata=with_digest(tensors, {"format": "pt"})))
    with atomic_write(directory / CONFIG_NAME, "w") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
    return directory


def load_pretrained_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole ``config.json`` of a pretrained directory (``unet`` plus the extra keys)."""
    return read_model_config(directory, UNET_KEY, "save_pretrained")


def read_model_config(directory: str | os.PathLike[str], key: str, writer: str) -> dict[str, Any]:
    """The whole ``config.json`` of a model directory, which must hold a `key` entry
    (`writer` names the function that writes such directories, for the error message)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a {writer} directory")
    config = read_json(directory, CONFIG_NAME)
    if not isinstance(config, dict) or key not in config:
        raise ValueError(f"{path} has no {key!r} entry")
    return config


def read_json(directory: str | os.PathLike[str], name: str) -> Any:
    """The JSON document ``directory/name`` (inside the directory: `own_file`; at most
    MAX_CONFIG_BYTES, refused unread beyond). OSError or ValueError when it cannot be read."""
    with open(own_file(directory, name), "rb") as handle:
        text = handle.read(MAX_CONFIG_BYTES + 1)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"{Path(directory) / name} is over {MAX_CONFIG_BYTES >> 20} MiB: not a model config"
        )
    return json.loads(text)


def own_file(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory/name`` with links resolved; a ValueError (`fdm_core.AssetError`) when it
    leads outside `directory`: a model folder, which may come from anywhere, never makes fdm
    read a file outside itself."""
    return inside_folder(Path(directory) / name, directory)


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors file's header (no tensor is read); a
    ValueError naming the file when it is not a readable safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None


def check_weights(
    model: nn.Module, shapes: dict[str, tuple[int, ...]], source: Path, what: str = "UNet"
) -> None:
    """Raise :class:`WeightsMismatchError` naming every missing, unexpected or mis-shaped key
    of `shapes` (name -> shape) against ``model.state_dict()`` (`what` names the model in the
    message). The model may live on the meta device: only its shapes are read."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [
        f"{name}: file {tuple(shapes[name])} vs config {expected[name]}"
        for name in sorted(set(expected) & set(shapes))
        if tuple(shapes[name]) != expected[name]
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if mismatched:
            problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
        raise WeightsMismatchError(
            f"{source} does not match the {what} built from {CONFIG_NAME}: " + ", ".join(problems)
        )


def load_weights(
    build: Callable[[], ModelT], directory: Path, device: torch.device | str, what: str = "UNet"
) -> ModelT:
    """``build()`` the model and load ``directory/model.safetensors`` into it; returns it on
    `device` in eval mode.

    The file's header is checked against a copy built on the meta device first
    (`check_weights`), so a config that does not fit the weights, however large it claims the
    model to be, is refused before any parameter memory is allocated.
    """
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    own_file(directory, WEIGHTS_NAME)
    shapes = weight_shapes(weights)
    with torch.device("meta"):
        check_weights(build(), shapes, weights, what)
    try:
        tensors = load_file(weights, device=str(torch.device(device)))
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:  # a header that lies about the data
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from None
    verify_digest(weights, tensors, metadata)
    model = build()
    model.load_state_dict(tensors)
    model.to(device)
    return model.eval()


def from_pretrained(
    directory: str | os.PathLike[str],
    device: torch.device | str = "cpu",
) -> MultiStageUNet:
    """Build the UNet from ``config.json`` and load ``model.safetensors`` into it (eval mode).

    Raises ``pydantic.ValidationError`` (a ValueError) for an invalid config and
    :class:`WeightsMismatchError` when the weights do not fit the config.
    """
    directory = Path(directory)
    config = UNetConfig.model_validate(load_pretrained_config(directory)[UNET_KEY])
    return load_weights(lambda: MultiStageUNet(config), directory, device)
