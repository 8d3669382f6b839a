"""The f-DM trainer behind `fdm train` (single process or DDP under torchrun).

Exact commands::

    fdm train                                   # fdm-ds on embedded Fashion-MNIST, CPU, < 10 min
    fdm train --preset fdm-blur-g --out runs/blur --max-steps 5000
    fdm train --set process.gamma=0 --out runs/no-gamma     # the paper's gamma ablation
    fdm train --out runs/fdm-ds --resume        # continue from runs/fdm-ds/checkpoints/latest
    torchrun --nproc_per_node 2 -m fdm_cli train --max-steps 2000 --out runs/ddp

Each step: a batch at stream position p (a pure function of seed and p, see
`fdm_cli.data.dataset`), noise and t from a generator seeded by (seed, step, rank),
`diffusion_loss` (t stratified so every stage appears), AdamW with warm-up, gradient clipping,
then an EMA update. A NaN or infinite loss stops the run, or with ``train.nonfinite: skip``
drops that batch (`fdm_cli.training.nonfinite`). Every ``train.checkpoint_every`` steps rank 0
writes a checkpoint, a sample grid and a stage strip. ``train.precision: bf16`` runs only the
UNet under autocast, ``train.compile`` compiles the loss (process math, packed UNet, loss) as one
graph (`fdm_cli.training.setup`, docs/design.md §6.5); each step is timed as data / forward /
backward / optimizer (`fdm_cli.training.steptime`), shown in the progress line. SIGINT/SIGTERM
finish the current step, write a checkpoint and stop (continue with --resume).

The loop itself (budget, schedule, resume, checkpoints, signals, progress) is the one both
trainers share, `fdm_cli.training.trainer`; this module supplies f-DM's step and what it writes.
Reading order: `fdm_cli.training.setup.setup` (data, process, model, EMA, optimizer, resume) ->
`train_step` (one batch, nothing read back) -> `FDMTrainer` (the steps' statistics kept on the
device, `fdm_cli.training.stepwindow`, read once per log window; the samples at a checkpoint) ->
`run_training` (the run, and what it writes at the end).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.config.train import TrainConfig, bundle_run_assets
from fdm_cli.runtime import distributed as dist_
from fdm_cli.training.nonfinite import NonfiniteGuard, diverged
from fdm_cli.training.setup import Run, setup
from fdm_cli.training.steptime import StepTimer, format_shares
from fdm_cli.training.stepwindow import StepWindow
from fdm_cli.training.trainer import (
    Call,
    Trainer,
    backward_and_update,
    budget_text,
    call_trainer,
)
from fdm_models import save_pretrained


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    wall_s: float
    model: nn.Module | None = None  # the trained UNet (raw weights; EMA is in the checkpoint)
    phase_seconds: dict[str, float] | None = None  # this process's seconds per step phase


# ---------------------------------------------------------------------------------------------
# One step and what it reports


@dataclass
class StepResult:
    """One step on this rank: its statistics still on the device (`StepWindow` reads them)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    per_stage: torch.Tensor  # (K + 1,) mean loss per stage, NaN for a stage not in the batch
    counts: list[int]  # rows per stage
    applied: bool = True  # False: a non-finite batch skipped (the same on every rank)


def train_step(
    run: Run,
    x: torch.Tensor,
    generator: torch.Generator,
    timer: StepTimer,
    guard: NonfiniteGuard | None = None,
) -> StepResult:
    """One optimizer step on the batch `x`: loss, backward, clip, AdamW step, EMA update. Nothing
    is read back to the host, except by `guard` (``train.nonfinite: skip``), which looks at the
    loss and gradient norm before the update and may skip it. With ``train.precision: bf16``
    only the UNet runs under autocast (`fdm_cli.training.setup.LossModule`). `timer` (started
    before the batch was read) gets the forward, backward and optimizer phases."""
    run.module.train()
    timer.mark()  # data -> forward
    loss, per_stage, counts = run.module(x, generator)
    timer.mark()  # forward -> backward
    clip = run.cfg.optim.grad_clip
    grad_norm, applied = backward_and_update(
        run.optimizer, loss, run.unet.parameters(), clip, guard, run.step + 1, timer
    )
    if applied:
        run.ema.update(run.unet)
    timer.stop()
    return StepResult(loss.detach(), grad_norm, per_stage, counts, applied)


class FDMTrainer(Trainer):
    """f-DM's steps for the shared loop: `train_step` on `Run.batch`, the statistics kept on the
    device in a `StepWindow` until a read, a sample grid and stage strip at every checkpoint."""

    def __init__(self, run: Run, guard: NonfiniteGuard) -> None:
        super().__init__(run)
        self.run: Run = run
        self.guard = guard
        self.timer = StepTimer(run.ctx.device)
        self.window = StepWindow(run.process.num_stages, run.ctx)
        self.result: StepResult | None = None  # the last step's

    def step(self) -> bool:
        self.timer.start()
        x, generator = self.run.batch()
        self.result = train_step(self.run, x, generator, self.timer, self.guard)
        return self.result.applied

    def record(self, lr: float) -> None:
        run, result = self.run, self.result
        assert result is not None
        self.window.add(
            run.step, lr, run.elapsed, result.loss, result.grad_norm, result.per_stage,
            result.counts,
        )  # fmt: skip

    def read(self) -> float | None:
        run, loss = self.run, None
        for row in self.window.read():
            if not math.isfinite(row.loss):
                raise diverged(row.loss, row.step, run.run_dir)
            loss = row.loss
            if run.ctx.is_main:
                run.log.add(row.step, row.loss, row.stage_means, row.lr, row.grad_norm, row.elapsed)
        return loss

    def at_checkpoint(self) -> str:
        step = self.run.step
        self.run.write_images(f"step-{step:08d}.png", f"strip-{step:08d}.png")
        return "checkpoint and samples written"

    def phases(self) -> dict[str, float]:
        return self.timer.take_window()


# ---------------------------------------------------------------------------------------------
# The run


def run_training(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `cfg` into `run_dir` (see the module docstring); under torchrun every rank calls
    it. `should_stop(step)` -> True stops after that step as an interruption would (checkpoint
    written, no final samples). The run holds `run_dir`'s lock throughout (one process per run
    folder, `fdm_cli.training.trainer.call_trainer`)."""

    def start() -> dist_.DistContext:  # under torchrun: this rank's place in the process group
        return dist_.init_distributed(cfg.train.device, cfg.train.dist_timeout_s)

    return call_trainer(
        _train, cfg, run_dir, resume, overwrite, console, show_progress, should_stop, start
    )


def _train(cfg: TrainConfig, call: Call) -> TrainResult:
    """The run of `run_training`, its folder held."""
    opts, ctx, run_dir = cfg.train, call.ctx, call.run_dir
    run = setup(cfg, run_dir, call.resume, ctx, call.say)
    trainer = FDMTrainer(run, NonfiniteGuard(opts.nonfinite, run_dir, ctx))
    nparams = sum(p.numel() for p in run.unet.parameters())
    call.say(
        f"[bold]fdm train[/] {escape(cfg.preset or 'custom')}: stages "
        f"{' -> '.join('x'.join(map(str, s)) for s in run.process.stage_shapes)}, UNet "
        f"{nparams / 1e6:.2f}M params, data {escape(cfg.data.source)} ({len(run.dataset)} "
        f"images), batch {opts.batch_size} on {ctx.world_size} x {ctx.device}, budget "
        f"{budget_text(opts)}, out {escape(str(run_dir))}",
        markup=True,
    )
    end, timer = trainer.train(call), trainer.timer
    if end.interrupted:
        return TrainResult(
            run_dir, run.step, True, end.last_loss, call.wall(), run.unet, timer.total
        )
    run.write_images("final.png", "final-strip.png")
    if ctx.is_main:
        run.log.save_plot(run_dir / "loss.png")
        model_dir = run_dir / ckpt.MODEL_DIR
        bundle_run_assets(run.cfg, model_dir)  # the MODEL_DIR carries its own copy
        save_pretrained(
            run.ema.averaged_model(run.unet).cpu(),
            model_dir,
            extra_config={
                "process": run.cfg.process.model_dump(mode="json"),
                "fdm": {"preset": cfg.preset, "step": run.step, "data": cfg.data.source},
            },
        )
    dist_.barrier(ctx)
    wall = call.wall()
    shown = end.last_loss if end.last_loss is not None else float("nan")
    call.say(
        f"done: {run.step} steps, final loss {shown:.4f}, {wall:.0f} s (steps: "
        f"{format_shares(timer.total)}). Samples: {run_dir / ckpt.SAMPLES / 'final.png'}, "
        f"stage strip: {run_dir / ckpt.SAMPLES / 'final-strip.png'}, model: "
        f"{run_dir / ckpt.MODEL_DIR}"
    )
    return TrainResult(run_dir, run.step, False, end.last_loss, wall, run.unet, timer.total)
