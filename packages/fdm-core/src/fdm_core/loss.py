"""The f-DM training loss (docs/design.md §6.2, §6.3 (E20-E23)).

t is stratified across the batch: each stage gets at least one sample when the batch holds at
least as many samples as there are stages, the rest are shared in proportion to stage length,
and t is stratified inside each stage. Importance weights L_k B / n_k keep the loss an unbiased
estimate of E_{t ~ U(0, 1)}. The batch is split by stage and each group runs at its own shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .process import Denoiser, FDMProcess
from .schedules import apportion


@dataclass
class LossOutput:
    loss: torch.Tensor
    per_stage: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)


def stratified_times(
    process: FDMProcess,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified t (B,) and importance weights (B,) that make the estimate unbiased."""
    if batch < process.num_stages:  # too few samples to cover every stage: plain stratification
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return (torch.arange(batch, device=device) + u) / batch, torch.ones(batch, device=device)
    counts = apportion(batch, process.stage_lengths, minimum=1)
    times, weights = [], []
    for k, n in enumerate(counts):
        if n == 0:
            continue
        lo, length = process.boundaries[k], process.stage_lengths[k]
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        times.append(lo + length * (torch.arange(n, device=device) + u) / n)
        weights.append(torch.full((n,), length * batch / n, device=device))
    t = torch.cat(times).clamp(0.0, 1.0 - 1e-7)
    return t, torch.cat(weights)


def loss_weight(process: FDMProcess, t: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample weight of the squared error: 1 for v and eps; for x0 a function of the SNR."""
    config = process.config
    if config.parameterization != "x0":
        return torch.ones_like(t)
    snr = process.logsnr(t.double(), k).exp()
    if config.weighting == "snr":
        return snr
    if config.weighting == "min_snr":
        return snr.clamp(max=config.min_snr_gamma)
    return snr.clamp(min=1.0)


def diffusion_loss(
    process: FDMProcess,
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Mean weighted squared error of F(z_t, t, k) against the target, over a batch of data x."""
    batch = x.shape[0]
    if t is None:
        t, weights = stratified_times(process, batch, generator, x.device)
    else:
        weights = torch.ones(batch, device=x.device)
    total = x.new_zeros(())
    per_stage, counts = {}, {}
    for group in process.split_by_stage(x, t, generator):
        output = model(group.z, group.t.to(x.dtype), group.stage)
        error = (output.float() - group.target.float()).pow(2).flatten(1).mean(1)
        weighted = error * loss_weight(process, group.t, group.stage).float()
        total = total + (weighted * weights[group.index].float()).sum()
        per_stage[group.stage] = float(error.detach().mean())
        counts[group.stage] = int(group.index.numel())
    return LossOutput(total / batch, per_stage, counts)
