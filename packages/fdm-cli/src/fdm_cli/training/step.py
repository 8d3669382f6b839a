"""One f-DM optimizer step: the loss of a batch (or of its micro-batches), the backward pass, the
update and the EMA, with nothing read back to the host (docs/design.md §6.7).

`train_step` is the step of `fdm train` (`fdm_cli.training.loop`) and of the Python API's
`TrainingStep` (`fdm_cli.api.step`). With ``train.grad_accum: N`` the step's times, weights and
noise are drawn for the whole batch, which then runs as N micro-batches, each through the
network and its backward pass, the gradients adding up, before one clipping and one update
(docs/design.md §6.8); under DDP the gradients are all-reduced with the last micro-batch only.
With ``train.precision: fp16`` the backward pass starts from the scaled loss and the update goes
through the loss scaler (docs/design.md §6.5; `fdm_cli.training.update.update`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from fdm_cli.config.train import TrainConfig
from fdm_cli.training.nonfinite import NonfiniteGuard
from fdm_cli.training.setup import LossModule, WeightUpdate
from fdm_cli.training.steptime import StepTimer
from fdm_cli.training.update import update
from fdm_core import merge_outputs


class StepParts(Protocol):
    """What a step updates: an f-DM `Run` (`fdm_cli.training.setup`) or a `TrainingStep`."""

    cfg: TrainConfig
    module: nn.Module  # `loss`, or DistributedDataParallel around it
    loss: LossModule
    unet: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weight_update: WeightUpdate  # the AdamW step and the EMA update (one compiled function)


@dataclass
class StepResult:
    """One step on this rank: its statistics still on the device (`StepWindow` reads them)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    per_stage: torch.Tensor  # (K + 1,) mean loss per stage, NaN for a stage not in the batch
    counts: list[int]  # rows per stage
    applied: bool = True  # False: a non-finite batch skipped (the same on every rank)
    overflow: torch.Tensor | None = None  # fp16: 1.0 when the loss scaler skipped the update


def train_step(
    parts: StepParts,
    x: torch.Tensor,
    generator: torch.Generator,
    step: int,
    timer: StepTimer | None = None,
    guard: NonfiniteGuard | None = None,
) -> StepResult:
    """One optimizer step on the batch `x` (this rank's), the step's times and noise drawn from
    `generator`: loss and backward per micro-batch, clipping, the AdamW step, the EMA update.
    `step` is the number the step gets (1-based). Nothing is read back to the host, except by
    `guard` (``train.nonfinite: skip``), which may skip the update; under ``train.compile`` the
    AdamW step and the EMA update run as one compiled function (`WeightUpdate`). `timer`, started
    before the batch was read, gets the forward, backward and optimizer phases."""
    parts.module.train()
    scaler, ddp = parts.scaler, isinstance(parts.module, nn.parallel.DistributedDataParallel)
    if timer is not None:
        timer.mark("data")
    micro = parts.loss.draw(x, generator).split(parts.cfg.train.grad_accum)
    parts.optimizer.zero_grad(set_to_none=True)
    outputs = []
    for j, part in enumerate(micro):
        last = j == len(micro) - 1
        with contextlib.nullcontext() if last or not ddp else parts.module.no_sync():
            out = parts.module(part)
            if timer is not None:
                timer.mark("forward")
            scaler.scale(out.loss).backward()
        if timer is not None:
            timer.mark("backward")
        outputs.append(out)
    merged = merge_outputs(outputs)
    loss = merged.loss.detach()
    clip = parts.cfg.optim.grad_clip
    grad_norm, applied = update(
        parts.optimizer, loss, parts.unet.parameters(), clip, guard, step, scaler,
        parts.weight_update,
    )  # fmt: skip
    if timer is not None:
        timer.stop()
    overflow = (~torch.isfinite(grad_norm)).float() if scaler.is_enabled() else None
    return StepResult(loss, grad_norm, merged.per_stage, merged.counts, applied, overflow)
