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


@dataclass
class LossBatch:
    """Everything (E23) needs of a batch besides the network: the data `x` ordered by stage, its
    times `t`, importance weights, rows per stage and eps per stage (`draw_noise`).
    `normalizer` is the size of the step's whole batch, which the weighted errors are divided
    by: a micro-batch (`split`) keeps the whole batch's, so its losses add up to the batch's."""

    x: torch.Tensor
    t: torch.Tensor
    weights: torch.Tensor
    counts: list[int]
    noise: list[torch.Tensor | None]
    normalizer: int
    stratified: bool  # counts fixed by the batch size (a compiled loss never sees a new shape)

    def split(self, parts: int) -> list[LossBatch]:
        """`parts` micro-batches for gradient accumulation (docs/design.md §6.8): stage k's
        rows are cut into `parts` runs as equal as possible, and micro-batch j takes run j of
        every stage, so each stays ordered by stage; the longer runs go to the micro-batches in
        turn, so their sizes differ by one row at most. Times, weights, noise and `normalizer` stay
        the whole batch's, so the micro-batches' losses (and gradients) sum to the batch's."""
        if parts == 1:
            return [self]
        if not 1 <= parts <= self.x.shape[0]:
            raise ValueError(f"cannot split a batch of {self.x.shape[0]} into {parts} parts")
        firsts = [sum(self.counts[:k]) for k in range(len(self.counts))]  # stage k's first row
        sizes, turn = [], 0  # sizes[k][j]: stage k's rows in micro-batch j
        for n in self.counts:
            base, extra = divmod(n, parts)
            longer = {(turn + i) % parts for i in range(extra)}  # the longer runs go in turn
            sizes.append([base + (j in longer) for j in range(parts)])
            turn = (turn + extra) % parts
        out = []
        for j in range(parts):
            runs = [(sum(size[:j]), size[j]) for size in sizes]  # (offset in stage k, rows)

            def take(v: torch.Tensor, runs: list[tuple[int, int]] = runs) -> torch.Tensor:
                starts = zip(firsts, runs, strict=True)
                return torch.cat([v[f + o : f + o + n] for f, (o, n) in starts])

            noise = [
                None if eps is None or n == 0 else eps[o : o + n]
                for eps, (o, n) in zip(self.noise, runs, strict=True)
            ]
            counts = [n for _, n in runs]
            out.append(
                LossBatch(
                    take(self.x), take(self.t), take(self.weights), counts, noise,
                    self.normalizer, self.stratified,
                )
            )  # fmt: skip
        return out


def draw_loss_batch(
    process: FDMProcess,
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossBatch:
    """The random draws of a training step on the data `x`: stratified times and their weights
    (E21-E22) and eps for each stage, all from `generator`. Times given as `t` get weight 1;
    their stages are read back to order the batch."""
    batch = x.shape[0]
    counts = None
    if t is None:
        t, weights = stratified_times(process, batch, generator, x.device)
        counts = stratified_counts(process, batch)
    else:
        weights = torch.ones(batch, device=x.device)
    stratified = counts is not None
    if counts is None:  # order the batch by stage (a no-op for sorted stratified times)
        order = torch.argsort(process.stage_of(t), stable=True)
        x, t, weights = x[order], t[order], weights[order]
        counts = process.stage_counts(t)
    noise = draw_noise(process, counts, generator, x.device, x.dtype)
    return LossBatch(x, t, weights, list(counts), noise, batch, stratified)


def batch_loss(
    process: FDMProcess,
    model: Denoiser,
    batch: LossBatch,
    static_loss: StageLoss | None = None,
) -> LossOutput:
    """(E23) of a drawn batch (or micro-batch); `static_loss` replaces `stage_loss` when the
    rows per stage are fixed by the batch size (`fdm train --compile` passes its compiled
    graph, which then never sees a new shape)."""
    loss_fn = static_loss if static_loss is not None and batch.stratified else stage_loss
    loss, per_stage = loss_fn(
        process, model, batch.x, batch.t, batch.weights, batch.counts, batch.noise,
        batch.normalizer,
    )  # fmt: skip
    return LossOutput(loss, per_stage, list(batch.counts))


def merge_outputs(parts: Sequence[LossOutput]) -> LossOutput:
    """The losses of a batch's micro-batches (`LossBatch.split`) as the whole batch's: the sum
    of the losses, and per stage the mean over every row of the stage (NaN where no micro-batch
    holds the stage). Nothing is read back to the host."""
    if len(parts) == 1:
        return parts[0]
    counts = [sum(column) for column in zip(*(p.counts for p in parts), strict=True)]
    loss = torch.stack([p.loss for p in parts]).sum()
    first = parts[0].per_stage
    total = torch.zeros_like(first)
    for part in parts:
        share = [n / c if c else 0.0 for n, c in zip(part.counts, counts, strict=True)]
        weight = torch.tensor(share, dtype=first.dtype).to(first.device, non_blocking=True)
        present = torch.tensor([n > 0 for n in part.counts]).to(first.device, non_blocking=True)
        total = total + torch.where(present, part.per_stage * weight, 0.0)
    absent = torch.tensor([c == 0 for c in counts]).to(first.device, non_blocking=True)
    per_stage = torch.where(absent, torch.full_like(total, float("nan")), total)
    return LossOutput(loss, per_stage, counts)


def diffusion_loss(
    process: FDMProcess,
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    static_loss: StageLoss | None = None,
) -> LossOutput:
    """Mean weighted squared error of F(z_t, t, k) against the target over a batch of data x
    (E23): `draw_loss_batch`, then `batch_loss`. Times given as `t` get weight 1; their stages
    are read back to order the batch. `static_loss` as in `batch_loss`."""
    return batch_loss(process, model, draw_loss_batch(process, x, t, generator), static_loss)


def stage_loss(
    process: FDMProcess,
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor,
    counts: Sequence[int],
    noise: Sequence[torch.Tensor | None],
    normalizer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E23) and the per-stage losses for a batch ordered by stage, with its times, importance
    weights, rows per stage and eps per stage given: no random draw and no host read, so it can
    be compiled as one graph (`fdm train --compile`). The weighted errors are summed and divided
    by `normalizer` (default: the rows of `x`; a micro-batch passes its whole batch's size)."""
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
    return total / (normalizer or x.shape[0]), torch.stack(per_stage).float()
