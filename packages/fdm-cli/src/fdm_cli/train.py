"""The f-DM training loop behind `fdm train` (single process or DDP under torchrun).

Exact commands::

    fdm train                                   # fdm-ds on embedded Fashion-MNIST, CPU, < 10 min
    fdm train --preset fdm-blur-g --out runs/blur --max-steps 5000
    fdm train --set process.gamma=0 --out runs/no-gamma     # the paper's gamma ablation
    fdm train --out runs/fdm-ds --resume        # continue from runs/fdm-ds/checkpoints/latest
    torchrun --nproc_per_node 2 -m fdm_cli train --max-steps 2000 --out runs/ddp

Each step: a batch at stream position p (a pure function of seed and p, see `fdm_cli.data`),
noise and t from a generator seeded by (seed, step, rank), `diffusion_loss` (t stratified so every
stage appears), AdamW with warm-up, gradient clipping, then an EMA update. A NaN or infinite
loss stops the run, or with ``train.nonfinite: skip`` drops that batch (`fdm_cli.nonfinite`). Every
``train.checkpoint_every`` steps rank 0 writes a checkpoint, a sample grid and a stage strip.
``train.precision: bf16`` runs only the UNet under autocast, ``train.compile`` compiles the
loss (process math, packed UNet, loss) as one graph (`fdm_cli.run`, docs/design.md §6.5);
each step is timed as data / forward / backward / optimizer (`fdm_cli.steptime`), shown in the
progress line. SIGINT/SIGTERM finish the current step, write a checkpoint and stop (continue
with --resume).

Reading order: `fdm_cli.run.setup` (data, process, model, EMA, optimizer, resume) ->
`train_step` (one batch, nothing read back) -> `fdm_cli.stepwindow` (the steps' statistics,
read once per log window) -> `run_training` (the loop).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from fdm_models import save_pretrained

from . import checkpointing as ckpt
from . import distributed as dist_
from .config import TrainConfig, TrainOptions, bundle_run_assets
from .nonfinite import NonfiniteGuard, diverged
from .progress import TrainProgress, graceful_stop
from .run import Run, setup
from .runlock import locked_run_dir
from .steptime import StepTimer, format_shares
from .stepwindow import StepWindow


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    wall_s: float
    model: nn.Module | None = None  # the trained UNet (raw weights; EMA is in the checkpoint)
    phase_seconds: dict[str, float] | None = None  # this process's seconds per step phase


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
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


def budget_spent(opts: TrainOptions, step: int, elapsed_s: float) -> bool:
    return (opts.max_steps is not None and step >= opts.max_steps) or (
        opts.minutes is not None and elapsed_s >= opts.minutes * 60
    )


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
    only the UNet runs under autocast (`fdm_cli.run.LossModule`). `timer` (started before the
    batch was read) gets the forward, backward and optimizer phases."""
    run.module.train()
    timer.mark()  # data -> forward
    loss, per_stage, counts = run.module(x, generator)
    timer.mark()  # forward -> backward
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    timer.mark()  # backward -> optimizer
    clip = run.cfg.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.unet.parameters(), clip if clip > 0 else math.inf
    )
    applied = guard is None or guard.keep(loss, grad_norm, run.step + 1)
    if applied:
        run.optimizer.step()
        run.ema.update(run.unet)
    timer.stop()
    return StepResult(loss.detach(), grad_norm, per_stage, counts, applied)


def agree(ctx: dist_.DistContext, clock: float, stop: bool) -> tuple[float, bool]:
    """Rank 0's clock and whether any rank stops: one small all-reduce under DDP (host values
    only; the other ranks pass a clock of 0)."""
    if not ctx.enabled:
        return clock, stop
    values = torch.tensor([clock, 1.0 if stop else 0.0], dtype=torch.float64)
    clock_sum, stops = dist_.sum_over_ranks(ctx, values).tolist()
    return clock_sum, stops > 0


# ---------------------------------------------------------------------------------------------
# The loop


def run_training(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `cfg` into `run_dir` (see the module docstring). `should_stop(step)` -> True stops
    after that step as an interruption would (checkpoint written, no final samples). The run
    holds `run_dir`'s lock throughout (one process per run folder, `fdm_cli.runlock`, which also
    applies the empty / --resume / --overwrite rules of `fdm_cli.outputs.prepare_run_dir`)."""
    t_wall = time.monotonic()
    console = console or Console(highlight=False, soft_wrap=True)
    ctx = dist_.init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    if ctx.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients can slow CPU kernels several-fold
    try:
        with locked_run_dir(run_dir, overwrite, resume, ctx):  # before anything is written
            return _train(cfg, run_dir, resume, console, show_progress, should_stop, ctx, t_wall)
    finally:
        if ctx.device.type == "cpu":
            torch.set_flush_denormal(False)  # torch's default, for whoever called us
        dist_.shutdown(ctx)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    console: Console,
    show_progress: bool,
    should_stop: Callable[[int], bool] | None,
    ctx: dist_.DistContext,
    t_wall: float,
) -> TrainResult:
    opts, main = cfg.train, ctx.is_main

    def say(message: str, markup: bool = False) -> None:
        if main:
            console.print(message, markup=markup)

    run = setup(cfg, run_dir, resume, ctx, say)
    guard = NonfiniteGuard(opts.nonfinite, run_dir, ctx)
    nparams = sum(p.numel() for p in run.unet.parameters())
    budget = " / ".join(
        x
        for x in (
            opts.max_steps and f"{opts.max_steps} steps",
            opts.minutes and f"{opts.minutes:g} min",
        )
        if x
    )
    say(
        f"[bold]fdm train[/] {escape(cfg.preset or 'custom')}: stages "
        f"{' -> '.join('x'.join(map(str, s)) for s in run.process.stage_shapes)}, UNet "
        f"{nparams / 1e6:.2f}M params, data {escape(cfg.data.source)} ({len(run.dataset)} "
        f"images), batch {opts.batch_size} on {ctx.world_size} x {ctx.device}, budget {budget}, "
        f"out {escape(str(run_dir))}",
        markup=True,
    )

    timer = StepTimer(ctx.device)
    window = StepWindow(run.process.num_stages, ctx)
    last_loss, interrupted = None, False
    saved_step = run.step if run.resumed else -1
    t_start = time.monotonic() - run.elapsed
    with (
        graceful_stop() as stop_flag,
        TrainProgress(console, opts, run.step, show_progress, main) as progress,
    ):

        def read_window() -> None:
            """The steps since the last read: the loss log, the progress line, and a stop at
            a non-finite loss (before anything of that step is saved)."""
            nonlocal last_loss
            for row in window.read():
                if not math.isfinite(row.loss):
                    raise diverged(row.loss, row.step, run_dir)
                last_loss = row.loss
                if main:
                    run.log.add(
                        row.step, row.loss, row.stage_means, row.lr, row.grad_norm, row.elapsed
                    )
            if main:
                run.log.flush()
                if last_loss is not None:
                    progress.update(run.step, last_loss, run.elapsed, timer.take_window())

        while not budget_spent(opts, run.step, run.elapsed):
            lr = learning_rate(cfg, run.step, run.elapsed)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            timer.start()
            x, generator = run.batch()
            result = train_step(run, x, generator, timer, guard)
            run.threads.tick()
            run.step += int(result.applied)  # a skipped batch is no step (fdm_cli.nonfinite)
            run.position += opts.batch_size
            stop = bool(stop_flag["signal"]) or (should_stop is not None and should_stop(run.step))
            run.elapsed, stop = agree(ctx, (time.monotonic() - t_start) if main else 0.0, stop)
            if result.applied:
                window.add(
                    run.step, lr, run.elapsed, result.loss, result.grad_norm, result.per_stage,
                    result.counts,
                )  # fmt: skip
            if stop:
                interrupted = True
                break
            if not result.applied:
                continue
            checkpoint_due = run.step % opts.checkpoint_every == 0
            if checkpoint_due or run.step % opts.log_every == 0:
                read_window()
            if checkpoint_due:
                run.checkpoint()
                saved_step = run.step
                run.write_images(f"step-{run.step:08d}.png", f"strip-{run.step:08d}.png")
                run.threads.pause()  # not a training step
                if main:
                    progress.note(
                        f"step {run.step}: loss {last_loss:.4f}; checkpoint and samples written"
                    )
        read_window()
        progress.finish(run.step, last_loss, interrupted)

    if saved_step != run.step:
        run.checkpoint()
    if interrupted:
        say(
            f"stopped at step {run.step}; checkpoint written. Continue with: fdm train --out "
            f"{run_dir} --resume"
        )
        wall = time.monotonic() - t_wall
        return TrainResult(run_dir, run.step, True, last_loss, wall, run.unet, timer.total)
    run.write_images("final.png", "final-strip.png")
    if main:
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
    wall = time.monotonic() - t_wall
    shown = last_loss if last_loss is not None else float("nan")
    say(
        f"done: {run.step} steps, final loss {shown:.4f}, {wall:.0f} s (steps: "
        f"{format_shares(timer.total)}). Samples: {run_dir / ckpt.SAMPLES / 'final.png'}, "
        f"stage strip: {run_dir / ckpt.SAMPLES / 'final-strip.png'}, model: "
        f"{run_dir / ckpt.MODEL_DIR}"
    )
    return TrainResult(run_dir, run.step, False, last_loss, wall, run.unet, timer.total)


def print_dry_run(cfg: TrainConfig, run_dir: Path, console: Console) -> None:
    """The resolved config as YAML, then one comment line with the stages, the boundaries, the
    UNet's size and RUN_DIR."""
    from fdm_core import FDMProcess
    from fdm_models import MultiStageUNet

    process = FDMProcess(cfg.process)
    params = sum(p.numel() for p in MultiStageUNet(cfg.model).parameters())
    console.print(cfg.to_yaml(), end="", markup=False, highlight=False)
    stages = ", ".join(f"{k}: {'x'.join(map(str, s))}" for k, s in enumerate(process.stage_shapes))
    bounds = ", ".join(f"{b:.4g}" for b in process.boundaries)
    console.print(
        f"# stages {stages}; boundaries [{bounds}]; UNet {params / 1e6:.2f}M "
        f"parameters; RUN_DIR {run_dir}",
        markup=False,
    )
