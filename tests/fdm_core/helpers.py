"""Shared helpers for the fdm-core tests: processes and oracle denoisers."""

from __future__ import annotations

import torch

from fdm_core import FDMProcess, ProcessConfig


def make_process(transforms=(), resolution: int = 8, channels: int = 1, **overrides) -> FDMProcess:
    return FDMProcess(
        ProcessConfig(
            resolution=resolution, channels=channels, transforms=list(transforms), **overrides
        )
    )


def oracle(process: FDMProcess, x: torch.Tensor):
    """The ideal network for a data set of one image x: it outputs exactly the target whose
    clean prediction is x^k, whatever the parameterization."""

    def model(z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        xk = process.stage_signal(x, stage).expand_as(z).to(z.dtype)
        kind = process.config.parameterization
        if kind == "x0":
            return xk
        alpha, sigma = process.alpha_sigma(t, stage)
        a = alpha.to(z.dtype).view(-1, 1, 1, 1)
        s = sigma.to(z.dtype).view(-1, 1, 1, 1)
        if kind == "eps":
            return (z - a * process.mean(xk, t, stage)) / s
        return (a * z - xk) / s

    return model
