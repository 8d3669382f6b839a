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
graph and the AdamW step with the EMA update as one compiled function (`fdm_cli.training.setup`,
docs/design.md §6.5); each step is timed as data / forward / backward / optimizer
(`fdm_cli.training.steptime`), shown in the progress line. SIGINT/SIGTERM finish the current
step, write a checkpoint and stop (continue with --resume).

The loop itself (budget, schedule, resume, checkpoints, signals, progress) is the one both
trainers share, `fdm_cli.training.trainer`; this module supplies f-DM's step and what it writes.
Reading order: `fdm_cli.training.setup.setup` (data, process, model, EMA, optimizer, resume) ->
`train_step` (one batch, nothing read back) -> `FDMTrainer` (the steps' statistics kept on the
device, `fdm_cli.training.stepwindow`, read once per log window; the samples at a checkpoint) ->
`run_training` (the run, and what it writes at the end).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from torch import nn

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.config.train import TrainConfig, bundle_run_assets
from fdm_cli.generation.sampling import LoadedModel
from fdm_cli.runtime import distributed as dist_
from fdm_cli.training.nonfinite import NonfiniteGuard, diverged
from fdm_cli.training.schedule import budget_text
from fdm_cli.training.setup import Run, setup
from fdm_cli.training.step import StepResult, train_step
from fdm_cli.training.steptime import StepTimer, format_shares
from fdm_cli.training.stepwindow import StepWindow
from fdm_cli.training.trainer import Call, Trainer, call_trainer
from fdm_models import save_pretrained

if TYPE_CHECKING:  # imported only by a run that evaluates (`_train`)
    from fdm_cli.training.evaluation import TrainingEvaluation


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    wall_s: float
    model: nn.Module | None = None  # the trained UNet (raw weights; EMA is in the checkpoint)
    phase_seconds: dict[str, float] | None = None  # this process's seconds per step phase
    evaluation_s: float = 0.0  # seconds spent scoring the model (``train.eval_every``)
    overflow_steps: int = 0  # fp16: updates the loss scaler skipped (in this invocation)


class FDMTrainer(Trainer):
    """f-DM's steps for the shared loop: `train_step` on `Run.batch`, the statistics kept on the
    device in a `StepWindow` until a read, a sample grid and stage strip at every checkpoint,
    and the EMA model scored every ``train.eval_every`` steps (`TrainingEvaluation`)."""

    def __init__(
        self, run: Run, guard: NonfiniteGuard, evaluation: TrainingEvaluation | None = None
    ) -> None:
        super().__init__(run)
        self.run: Run = run
        self.guard = guard
        self.evaluation = evaluation
        self.timer = StepTimer(run.ctx.device)
        self.window = StepWindow(run.process.num_stages, run.ctx)
        self.result: StepResult | None = None  # the last step's
        self.overflow_steps = 0  # fp16: updates the loss scaler skipped

    def step(self) -> bool:
        self.timer.start()
        x, generator = self.run.batch()
        self.result = train_step(self.run, x, generator, self.run.step + 1, self.timer, self.guard)
        return self.result.applied

    def record(self, lr: float) -> None:
        run, result = self.run, self.result
        assert result is not None
        self.window.add(
            run.step, lr, run.elapsed, result.loss, result.grad_norm, result.per_stage,
            result.counts, result.overflow,
        )  # fmt: skip

    def read(self) -> float | None:
        run, loss, overflows = self.run, None, 0
        for row in self.window.read():
            if not math.isfinite(row.loss):
                raise diverged(row.loss, row.step, run.run_dir)
            loss = row.loss
            overflows += row.overflow
            if run.ctx.is_main:
                run.log.add(row.step, row.loss, row.stage_means, row.lr, row.grad_norm, row.elapsed)
                stages = {f"train/loss_stage{k}": v for k, v in enumerate(row.stage_means)}
                scalars = {"train/loss": row.loss, **stages, "train/lr": row.lr}
                run.trackers.scalars(row.step, scalars | {"train/grad_norm": row.grad_norm})
        self.overflow_steps += overflows
        if run.scaler.is_enabled() and loss is not None:
            run.trackers.scalars(run.step, {"perf/overflow_steps": float(overflows)})
        return loss

    def at_checkpoint(self) -> str:
        step = self.run.step
        images = self.run.write_images(f"step-{step:08d}.png", f"strip-{step:08d}.png")
        self.run.trackers.images(step, images)
        return "checkpoint and samples written"

    def phases(self) -> dict[str, float]:
        return self.timer.take_window()

    def evaluation_due(self, step: int) -> bool:
        return self.evaluation is not None and self.evaluation.due(step)

    def evaluate(self) -> str:
        run, evaluation = self.run, self.evaluation
        assert evaluation is not None
        loaded = LoadedModel(run.process, run.ema.averaged_model(run.unet), "ema")
        metrics = evaluation.evaluate(run.step, loaded, lambda folder: save_model(run, folder))
        if not run.ctx.is_main:
            return ""
        run.trackers.scalars(run.step, {f"eval/{name}": value for name, value in metrics.items()})
        return evaluation.summary(metrics)


def save_model(run: Run, folder: Path) -> None:
    """The run's EMA weights as a MODEL_DIR (`fdm_models.save_pretrained`) with its assets:
    ``model/`` at the end, ``model-best/`` under ``train.keep_best`` (rank 0). Written beside
    `folder` first and then swapped in, so a crash never leaves a half-written model there."""
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    for stale in (partial, old):
        shutil.rmtree(stale, ignore_errors=True)
    bundle_run_assets(run.cfg, partial)  # the MODEL_DIR carries its own copy
    save_pretrained(
        run.ema.averaged_model(run.unet).cpu(),
        partial,
        extra_config={
            "process": run.cfg.process.model_dump(mode="json"),
            "fdm": {
                "preset": run.cfg.preset,
                "step": run.step,
                "data": run.cfg.data.source,
                "fit": run.cfg.data.fit,  # how `fdm eval` loads its reference (the crop)
            },
        },
    )
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


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
    with contextlib.closing(run.trackers):
        nparams = sum(p.numel() for p in run.unet.parameters())
        call.say(
            f"[bold]fdm train[/] {escape(cfg.preset or 'custom')}: stages "
            f"{' -> '.join('x'.join(map(str, s)) for s in run.process.stage_shapes)}, UNet "
            f"{nparams / 1e6:.2f}M params, data {escape(cfg.data.source)} ({len(run.dataset)} "
            f"images), batch {opts.batch_size}{accumulation_text(opts.grad_accum)} on "
            f"{ctx.world_size} x {ctx.device}, budget {budget_text(opts)}, out "
            f"{escape(str(run_dir))}",
            markup=True,
        )
        evaluation = None
        if opts.eval_every is not None:
            from fdm_cli.training.evaluation import TrainingEvaluation

            ref = opts.eval_ref or cfg.data.source
            call.say(
                f"scoring the EMA model every {opts.eval_every} steps ({opts.eval_num} samples, "
                f"{opts.eval_steps} DDIM steps, against {ref}); reference statistics first "
                "(cached after the first run)"
            )
            resumed_at = run.step if run.resumed else None  # metrics.csv is cut back to it
            evaluation = TrainingEvaluation.open(run.cfg, run_dir, ctx, resumed_at)
        trainer = FDMTrainer(run, NonfiniteGuard(opts.nonfinite, run_dir, ctx), evaluation)
        end = trainer.train(call)
        if not end.interrupted:
            finish(run, trainer, end.last_loss, call)
    return TrainResult(
        run_dir, run.step, end.interrupted, end.last_loss, call.wall(), run.unet,
        trainer.timer.total, trainer.evaluation_s, trainer.overflow_steps,
    )  # fmt: skip


def accumulation_text(grad_accum: int) -> str:
    """ " (N micro-batches)" for the opening line under gradient accumulation."""
    return f" ({grad_accum} micro-batches)" if grad_accum > 1 else ""


def finish(run: Run, trainer: FDMTrainer, last_loss: float | None, call: Call) -> None:
    """The final samples, loss plot and ``model/``, and the closing line."""
    run_dir, samples = run.run_dir, run.run_dir / ckpt.SAMPLES
    images = run.write_images("final.png", "final-strip.png")
    if run.ctx.is_main:
        run.log.save_plot(run_dir / "loss.png")
        save_model(run, run_dir / ckpt.MODEL_DIR)
        if run.step % run.cfg.train.checkpoint_every:  # else sent with that checkpoint's
            run.trackers.images(run.step, images)
    dist_.barrier(run.ctx)
    shown = last_loss if last_loss is not None else float("nan")
    notes = [f"steps: {format_shares(trainer.timer.total)}"]
    if trainer.evaluation_s:
        notes.append(f"{trainer.evaluation_s:.0f} s of it scoring the model, not in the budget")
    if run.scaler.is_enabled():
        notes.append(f"{trainer.overflow_steps} fp16 overflow steps skipped by the loss scaler")
    call.say(
        f"done: {run.step} steps, final loss {shown:.4f}, {call.wall():.0f} s "
        f"({'; '.join(notes)}). Samples: {samples / 'final.png'}, stage strip: "
        f"{samples / 'final-strip.png'}, model: {run_dir / ckpt.MODEL_DIR}"
    )
