"""Parameter checks and the device, shared by the API modules (`fdm_cli.api`): each error
names the parameter in backticks, as a Python caller wrote it, and what is allowed (a command
shows its own flag there, `fdm_cli.errors.UserError.with_names`)."""

from __future__ import annotations

import math

import torch

from fdm_cli.config.choices import check_device
from fdm_cli.errors import UserError
from fdm_cli.runtime.device import resolve_device
from fdm_cli.seeding import MAX_SEED

DeviceLike = str | torch.device  # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"


def device_of(device: DeviceLike) -> torch.device:
    """The device `device` names here (`fdm_cli.runtime.device.resolve_device`); a
    `torch.device` is taken as it is."""
    if isinstance(device, torch.device):
        return device
    try:
        return resolve_device(check_device(str(device)))
    except ValueError as exc:
        raise UserError(f"`device`: {exc}") from None


def check_positive(**values: int) -> None:
    """Each of `values` (parameter name -> value) must be a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"`{name}` {value!r}: must be a positive integer")


def check_seed(seed: int, count: int) -> None:
    """`seed` .. `seed + count - 1` (one noise seed per image) must lie in 0 .. 2^63 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"`seed` {seed!r}: must be an integer")
    if seed < 0 or seed + max(count, 1) - 1 > MAX_SEED:
        raise UserError(
            f"`seed` {seed}: seeds run from 0 to 2^63 - 1 = {MAX_SEED}, and {max(count, 1)} "
            "consecutive seed(s) from it are used (one per image)"
        )


def check_eta(eta: float) -> None:
    """DDIM stochasticity: 0 (deterministic) to 1 (DDPM)."""
    if not isinstance(eta, int | float) or math.isnan(eta) or not 0.0 <= eta <= 1.0:
        raise UserError(f"`eta` {eta!r}: must be in [0, 1]")
