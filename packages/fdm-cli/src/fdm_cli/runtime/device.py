"""The device a run, sampling or evaluation uses, from a name (auto, cpu, cuda, cuda:N)."""

from __future__ import annotations

import torch

from fdm_cli.errors import UserError


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """The device `preference` (a name `choices.check_device` accepts) means here. ``auto``:
    CUDA (this rank's GPU) when available, else CPU; ``cuda`` without one is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"`device` {preference}: CUDA is not available on this machine "
            "(allowed here: auto, cpu)"
        )
    if preference.startswith("cuda:"):
        index = int(preference.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise UserError(
                f"`device` {preference}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return torch.device(preference)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def take_peak_memory(device: torch.device) -> float | None:
    """GiB of device memory tensors took at most since the last call (None off CUDA), then a
    new peak begins: the allocator's own counters, no synchronisation with the device."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak
