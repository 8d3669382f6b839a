"""``save_pretrained`` / ``from_pretrained``: a model directory in the diffusers layout.

A directory holds ``config.json`` ({"unet": <UNetConfig>, plus any extra keys the caller stores,
e.g. the f-DM process config}) and ``model.safetensors``. Both are written atomically (temporary
file, fsync, ``os.replace``). Loading validates the config and checks the weights against it;
pickle / ``torch.load`` are never used (docs/design.md §11.2).
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from fdm_core import atomic_write

from .config import UNetConfig
from .unet import MultiStageUNet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
UNET_KEY = "unet"


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
    extra = dict(extra_config or {})
    reserved = {UNET_KEY, "_class_name", "_fdm_models_version"} & set(extra)
    if reserved:
        raise ValueError(f"extra_config may not use the reserved keys {sorted(reserved)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "_class_name": type(model).__name__,
        "_fdm_models_version": _package_version(),
        UNET_KEY: model.config.model_dump(mode="json"),
        **extra,
    }
    tensors = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()
    }
    with atomic_write(directory / WEIGHTS_NAME) as handle:
        handle.write(save(tensors, metadata={"format": "pt"}))
    with atomic_write(directory / CONFIG_NAME, "w") as handle:
        handle.write(json.dumps(config, indent=2) + "\n")
    return directory


def load_pretrained_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole ``config.json`` of a pretrained directory (``unet`` plus the extra keys)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a save_pretrained directory")
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or UNET_KEY not in config:
        raise ValueError(f"{path} has no {UNET_KEY!r} entry")
    return config


def _check_weights(model: MultiStageUNet, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{name}: file {tuple(tensors[name].shape)} vs config {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
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
            f"{source} does not match the UNet built from {CONFIG_NAME}: " + ", ".join(problems)
        )


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
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    tensors = load_file(weights, device=str(torch.device(device)))
    model = MultiStageUNet(config)
    _check_weights(model, tensors, weights)
    model.load_state_dict(tensors)
    model.to(device)
    return model.eval()
