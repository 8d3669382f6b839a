"""The update of a training step after its backward pass: gradient clipping, the non-finite
policy (`fdm_cli.training.nonfinite`), fp16's loss scaler (docs/design.md §6.5) and the
optimizer step. `fdm train`'s step (`fdm_cli.training.step`) calls `update` after its backward
passes (one per micro-batch), `fdm train-autoencoder`'s step after its one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from fdm_cli.training.nonfinite import NonfiniteGuard


def update(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    parameters: Iterable[torch.Tensor],
    clip: float,
    guard: NonfiniteGuard | None,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
    apply: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, bool]:
    """After the backward pass of `loss` (with `scaler`, of the scaled loss): the global
    gradient norm clipped to `clip` (0: not clipped), and the optimizer step unless `guard`
    (``train.nonfinite: skip``) skips this batch; `step` is the number the step would get.
    With an enabled `scaler` (fp16, docs/design.md §6.5) the gradients are unscaled first, an
    overflow (a non-finite gradient norm) is left to the scaler, which skips that update, and
    the guard looks at the loss only. Returns (gradient norm, whether the update was applied:
    False only for a batch the guard skips). `apply`, when given, runs the update in place of
    the optimizer's (or the scaler's) step: f-DM's AdamW step and EMA update
    (`fdm_cli.training.setup.WeightUpdate`). Nothing is read back to the host except by
    `guard`."""
    scaling = scaler is not None and scaler.is_enabled()
    if scaling:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip if clip > 0 else math.inf)
    checked = torch.zeros_like(grad_norm) if scaling else grad_norm  # overflow: the scaler's
    applied = guard is None or guard.keep(loss, checked, step)
    if applied:
        if apply is not None:
            apply()
        else:
            optimizer_step(optimizer, scaler)
    if scaling:
        scaler.update()  # after a skipped batch too: its unscaling is recorded
    return grad_norm, applied


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """The optimizer's step, through an enabled `scaler` (fp16: it skips an overflowed update)."""
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)
    else:
        optimizer.step()
