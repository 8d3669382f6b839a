"""A NaN or infinite loss during training: stop (``train.nonfinite: stop``, the default) or skip
the batch (``train.nonfinite: skip``). Shared by `fdm train` and `fdm train-autoencoder`.

``stop``: the loop raises `diverged` once the step's (all-reduced) loss is not finite, before
anything of that step is saved, so the last checkpoint stays the last good one.

``skip``: `NonfiniteGuard.keep` looks at the loss and the global gradient norm after the
backward pass and before the optimizer step. When either is NaN or infinite the caller skips the
optimizer step, the EMA update and the step counter, so weights, EMA, AdamW state and the
learning-rate schedule (a function of the step, `fdm_cli.training.schedule.learning_rate`) stay
exactly as they were; the batch is dropped from the data stream (the position moves on, so the
retry of the step takes the next batch, with the same step's noise seed), no loss.csv row is
written, and a warning names the step and the count of skipped batches so far (in this
invocation). ``train.max_steps`` therefore counts good steps only; a time budget
(``train.minutes``) keeps running through skipped batches. After `NONFINITE_LIMIT` non-finite
batches in a row training stops as ``stop`` would.

This is the one mode with a read per step (one transfer of two numbers): its contract, that a
skipped batch is no step for the learning-rate schedule, the EMA warm-up and ``max_steps``, needs
the decision on the host before the next step is scheduled. ``stop`` reads nothing per step.

Under DDP every rank must take the same decision: the loss and gradient norm are summed over
the ranks first (one small all-reduce, only in ``skip`` mode), and a sum is finite exactly when
every rank's value is, so one rank's NaN makes all ranks skip.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.config.base import NONFINITE_LIMIT
from fdm_cli.errors import UserError
from fdm_cli.runtime import distributed as dist_

log = logging.getLogger(__name__)


def diverged(
    value: float, step: int, run_dir: Path, in_a_row: int = 1, name: str = "loss"
) -> UserError:
    """The error a NaN or infinite loss (or gradient norm: `name`) stops training with, raised
    before anything of that step is saved, so the last checkpoint stays the last good one."""
    latest = ckpt.latest_checkpoint(run_dir)
    kept = f"{latest.name} is kept" if latest is not None else "no checkpoint was written yet"
    repeated = f" for {in_a_row} batches in a row" if in_a_row > 1 else ""
    return UserError(
        f"the {name} is {value} at step {step}{repeated}: training stopped ({kept}); lower `lr` "
        "or check the data, then `resume=True` or start over"
    )


class NonfiniteGuard:
    """Decides, before the optimizer step, whether a step's update is applied (see the module
    docstring). In ``stop`` mode it always says yes: the loop's own check stops the run."""

    def __init__(self, mode: str, run_dir: Path, ctx: dist_.DistContext | None = None) -> None:
        self.skip = mode == "skip"
        self.run_dir, self.ctx = run_dir, ctx or dist_.DistContext()
        self.skipped = 0  # batches skipped in this invocation
        self.in_a_row = 0

    def keep(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> bool:
        """True: apply this step's update. False (``skip`` mode, a non-finite loss or gradient
        norm on any rank): skip it, with a warning. Raises `diverged` at `NONFINITE_LIMIT`
        non-finite batches in a row. `step` is the number the step would get (1-based)."""
        if not self.skip:
            return True
        values = torch.stack([loss.detach().float(), grad_norm.detach().float()]).double().cpu()
        values = dist_.sum_over_ranks(self.ctx, values) / self.ctx.world_size
        mean_loss, norm = values.tolist()
        if math.isfinite(mean_loss) and math.isfinite(norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= NONFINITE_LIMIT:
            name, value = (
                ("loss", mean_loss) if not math.isfinite(mean_loss) else ("gradient norm", norm)
            )
            raise diverged(value, step, self.run_dir, self.in_a_row, name)
        if self.ctx.is_main:
            log.warning(
                "step %d: the loss is %s (gradient norm %s); skipped that batch with no update "
                "(%d skipped so far, %d in a row; %d in a row stop training)",
                step,
                mean_loss,
                norm,
                self.skipped,
                self.in_a_row,
                NONFINITE_LIMIT,
            )
        return False
