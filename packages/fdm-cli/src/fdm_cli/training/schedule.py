"""The learning-rate schedule and the budget of a training run (`fdm train`,
`fdm train-autoencoder`): linear warm-up, then constant or cosine decay to 10% over the budget,
which is ``train.max_steps`` optimizer steps, ``train.minutes`` of training, or whichever ends
first. The schedule is a function of the step and the training seconds only, so a resumed run
continues it exactly.
"""

from __future__ import annotations

import math

import torch

from fdm_cli.config.base import LoopOptions, TrainingConfig


def learning_rate(cfg: TrainingConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then constant or cosine to 10% over the step/time budget."""
    optim, opts = cfg.optim, cfg.train
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    fractions = []
    if opts.max_steps:
        fractions.append((step - optim.warmup_steps) / max(1, opts.max_steps - optim.warmup_steps))
    if opts.minutes:
        fractions.append(elapsed_s / (opts.minutes * 60))
    frac = min(1.0, max(0.0, max(fractions)))
    return optim.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """`lr` into every param group: written into the group's 0-dim tensor where it holds one (a
    compiled step, `fdm_cli.training.setup.WeightUpdate`, whose graph reads that tensor: a new
    float there would compile a new graph), else set as a float."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def budget_spent(opts: LoopOptions, step: int, elapsed_s: float) -> bool:
    """True once ``train.max_steps`` steps or ``train.minutes`` of training are done."""
    return (opts.max_steps is not None and step >= opts.max_steps) or (
        opts.minutes is not None and elapsed_s >= opts.minutes * 60
    )


def budget_text(opts: LoopOptions) -> str:
    """The budget as the opening line names it: "N steps", "M min" or both."""
    parts = (opts.max_steps and f"{opts.max_steps} steps", opts.minutes and f"{opts.minutes:g} min")
    return " / ".join(part for part in parts if part)
