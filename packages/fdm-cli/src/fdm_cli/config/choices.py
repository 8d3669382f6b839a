"""The fixed choices of `fdm`, one definition each, shared by the pydantic config
(`fdm_cli.config.train`) and the Typer flags (`fdm_cli.cli`). Importing this module loads no
torch."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator

from fdm_cli.config.presets import PRESETS

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # fdm-ds, fdm-blur-g, ...
Precision = Literal["fp32", "bf16", "fp16"]
TrackerName = Literal["tensorboard", "wandb"]
SamplerName = Literal["ddim", "ddpm"]

DEVICE_HELP = "auto (cuda if available), cpu, cuda or cuda:N."


def check_device(name: str) -> str:
    """`name` if it names a device (auto, cpu, cuda, cuda:N); ValueError saying what is allowed
    otherwise. The one device rule: the config (`Device`) and the --device flags use it."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")


Device = Annotated[str, AfterValidator(check_device)]
