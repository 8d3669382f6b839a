"""The f-DM training loss (docs/design.md §6.2, §6.3 (E20-E23)).

t is stratified across the batch: each stage gets at least one sample when the batch holds at
least as many samples as there are stages, the rest are shared in proportion to stage length,
and t is stratified inside each stage. Importance weights L_k B / n_k keep the loss an unbiased
estimate of E_{t ~ U(0, 1)}. The batch is ordered by stage, so stage k's rows are a slice whose
length is known before any value is computed; a network that packs stages
(`fdm_core.process.PackedDenoiser`) runs them all in one call (docs/design.md §6.6), any other
once per stage at its own shape. Nothing here reads a value back to the host when the times are
stratified, so a training step can run ahead of the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .process import Denoiser, FDMProcess, packs_stages
from .schedules import apportion

StageLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # `stage_loss`'s signature


@dataclass
class LossOutput:
    loss: torch.Tensor
    per_stage: torch.Tensor  # (K + 1,) mean squared error per stage, NaN where a stage is absent
    counts: list[int]  # rows per stage


def stratified_counts(process: FDMProcess, batch: int) -> list[int] | None:
    """Rows per stage of a stratified batch of `batch` times (E21), or None when the batch is
    smaller than the number of stages and the times are stratified over [0, 1] instead."""
    if batch < process.num_stages:
        return None
    return apportion(batch, process.stage_lengths, minimum=1)


def stratified_times(
    process: FDMProcess,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified t (B,), ordered by stage, and importance weights (B,) that make the estimate
    unbiased (E22)."""
    counts = stratified_counts(process, batch)
    if counts is None:  # too few samples to cover every stage: plain stratification
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return (torch.arange(batch, device=device) + u) / batch, torch.ones(batch, device=device)
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


def draw_noise(
    process: FDMProcess,
    counts: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor | None]:
    """eps for every stage present, stage after stage (the order `split_by_stage` draws in)."""
    return [
        torch.randn((n, *shape), generator=generator, device=device, dtype=dtype) if n else None
        for n, shape in zip(counts, process.stage_shapes, strict=True)
    ]


def diffusion_loss(
    process: FDMProcess,
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    static_loss: StageLoss | None = None,
) -> LossOutput:
    """Mean weighted squared error of F(z_t, t, k) against the target over a batch of data x
    (E23). Times given as `t` get weight 1; their stages are read back to order the batch.

    `static_loss` replaces `stage_loss` when the rows per stage are fixed by the batch size
    (stratified times, at least one row per stage): `fdm train --compile` passes its compiled
    graph, which then never sees a new shape."""
    batch = x.shape[0]
    counts = None
    if t is None:
        t, weights = stratified_times(process, batch, generator, x.device)
        counts = stratified_counts(process, batch)
    else:
        weights = torch.ones(batch, device=x.device)
    loss_fn = static_loss if static_loss is not None and counts is not None else stage_loss
    if counts is None:  # order the batch by stage (a no-op for sorted stratified times)
        order = torch.argsort(process.stage_of(t), stable=True)
        x, t, weights = x[order], t[order], weights[order]
        counts = process.stage_counts(t)
    noise = draw_noise(process, counts, generator, x.device, x.dtype)
    loss, per_stage = loss_fn(process, model, x, t, weights, counts, noise)
    return LossOutput(loss, per_stage, list(counts))


def stage_loss(
    process: FDMProcess,
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor,
    counts: Sequence[int],
    noise: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E23) and the per-stage losses for a batch ordered by stage, with its times, importance
    weights, rows per stage and eps per stage given: no random draw and no host read, so it can
    be compiled as one graph (`fdm train --compile`)."""
    groups = process.split_by_stage(x, t, counts, noise=noise)
    if packs_stages(model):
        zs: list[torch.Tensor | None] = [None] * process.num_stages
        for group in groups:
            zs[group.stage] = group.z
        packed = model.forward_packed(zs, t.to(x.dtype))  # type: ignore[attr-defined]
        outputs = [packed[group.stage] for group in groups]
    else:
        outputs = [model(group.z, group.t.to(x.dtype), group.stage) for group in groups]
    total = x.new_zeros(())
    per_stage = [x.new_full((), float("nan"))] * process.num_stages
    for group, output in zip(groups, outputs, strict=True):
        error = (output.float() - group.target.float()).pow(2).flatten(1).mean(1)
        weighted = error * weights[group.rows].float()
        if process.config.parameterization == "x0":  # omega = 1 for the others (E20)
            weighted = weighted * loss_weight(process, group.t, group.stage).float()
        total = total + weighted.sum()
        per_stage[group.stage] = error.detach().mean()
    return total / x.shape[0], torch.stack(per_stage).float()
