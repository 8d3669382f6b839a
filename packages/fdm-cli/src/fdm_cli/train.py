"""The f-DM training loop behind `fdm train` (single process or DDP under torchrun).

Exact commands::

    fdm train                                   # fdm-ds on embedded Fashion-MNIST, CPU, < 10 min
    fdm train --preset fdm-blur-g --out runs/blur --max-steps 5000
    fdm train --set process.gamma=0 --out runs/no-gamma     # the paper's gamma ablation
    fdm train --out runs/fdm-ds --resume        # continue from runs/fdm-ds/checkpoints/latest
    torchrun --nproc_per_node 2 -m fdm_cli train --max-steps 2000 --out runs/ddp

Each step: a batch at stream position p (a pure function of seed and p, see `fdm_cli.data`),
noise and t from a generator seeded by (seed, step, rank), `diffusion_loss` (t stratified so every
stage appears), AdamW with warm-up, gradient clipping, then an EMA update. Every
``train.checkpoint_every`` steps rank 0 writes a checkpoint, a sample grid and a stage strip.
SIGINT/SIGTERM finish the current step, write a checkpoint and stop (continue with --resume).

Reading order: `setup` (data, process, model, EMA, optimizer, resume) -> `train_step` (one batch)
-> `StepStats` (what a step reports, one all-reduce over ranks) -> `run_training` (the loop).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from fdm_core import FDMProcess, diffusion_loss
from fdm_models import EMA, MultiStageUNet, save_pretrained

from . import checkpointing as ckpt
from . import distributed as dist_
from .config import TrainConfig, TrainOptions
from .data import DataOrder, ImageDataset, load_dataset
from .errors import UserError
from .images import atomic_write_bytes, make_grid, save_png, stage_strip
from .losslog import LossLog
from .progress import TrainProgress, graceful_stop
from .sample import LoadedModel, Samples, generate, strip_columns, strip_tile
from .seeding import MODEL_INIT, TRAIN_STEP, derive_seed

Say = Callable[..., None]  # say(message, markup=False): print on rank 0 only


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    wall_s: float
    model: nn.Module | None = None  # the trained UNet (raw weights; EMA is in the checkpoint)


class LossModule(nn.Module):
    """Wraps ``diffusion_loss`` so DDP sees one forward per step however many stage groups run."""

    def __init__(self, process: FDMProcess, unet: MultiStageUNet) -> None:
        super().__init__()
        self.process = process
        self.unet = unet

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list]:
        out = diffusion_loss(self.process, self.unet, x, generator=generator)
        k = self.process.num_stages
        per_stage = [out.per_stage.get(s, math.nan) for s in range(k)]
        counts = [out.counts.get(s, 0) for s in range(k)]
        return out.loss, [per_stage, counts]


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
        opts.minutes is not None and elapsed_s >= opts.minutes * 60)


# ---------------------------------------------------------------------------------------------
# Setup: everything a step needs, fresh or resumed


@dataclass
class Run:
    """A run being trained: its pieces (built by `setup`) and where it stands."""

    cfg: TrainConfig
    ctx: dist_.DistContext
    run_dir: Path
    dataset: ImageDataset
    order: DataOrder
    process: FDMProcess
    unet: MultiStageUNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    module: nn.Module  # LossModule, in DistributedDataParallel under torchrun
    log: LossLog
    step: int = 0
    position: int = 0  # images of the data stream consumed, all ranks together
    elapsed: float = 0.0  # training seconds, summed over resumes
    resumed: bool = False

    def batch(self) -> tuple[torch.Tensor, torch.Generator]:
        """This rank's slice of the batch at the stream position, and the step's generator."""
        ctx, per_rank = self.ctx, self.cfg.train.batch_size // self.ctx.world_size
        seed = derive_seed(self.cfg.train.seed, TRAIN_STEP, self.step, ctx.rank)
        torch.manual_seed(seed)
        generator = torch.Generator(ctx.device).manual_seed(seed)
        idx, flip = self.order.take(self.position + ctx.rank * per_rank, per_rank)
        return self.dataset.batch(idx, flip).to(ctx.device), generator

    def checkpoint(self) -> None:
        """Rank 0 saves the whole training state (and flushes the loss log and its plot)."""
        if not self.ctx.is_main:
            return
        state = {
            "model": self.unet.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": ckpt.optimizer_to_tree(self.optimizer.state_dict()),
            "rng": ckpt.rng_state(),
            "progress": {"step": self.step, "position": self.position,
                         "elapsed_s": self.elapsed, "seed": self.cfg.train.seed,
                         "world_size": self.ctx.world_size},
        }
        self.log.flush()
        ckpt.save_checkpoint(self.run_dir, self.step, state, self.cfg.to_dict(),
                             self.cfg.train.keep_checkpoints)
        self.log.save_plot(self.run_dir / "loss.png")

    def write_images(self, grid: str, strip: str) -> None:
        """A sample grid and a stage strip from the EMA weights (all ranks sample)."""
        model = LoadedModel(self.process, self.ema.averaged_model(self.unet), "ema")
        folder = self.run_dir / ckpt.SAMPLES
        write_samples(self.ctx, self.cfg, model, folder / grid, folder / strip)


def setup(cfg: TrainConfig, run_dir: Path, resume: bool, ctx: dist_.DistContext,
          say: Say) -> Run:
    """Data, process, model, EMA and optimizer; the checkpoint's state when resuming."""
    opts = cfg.train
    if opts.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {opts.batch_size} must be divisible by the "
                        f"{ctx.world_size} ranks (it is the global batch)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    elif ctx.enabled and ctx.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(f"{run_dir} already holds a run ({latest.name}); pass --resume to "
                        "continue it, or choose another --out")
    dataset = load_dataset(cfg.data.source, cfg.process.resolution, cfg.process.channels,
                           cfg.data.fit)
    process = FDMProcess(cfg.process)
    torch.manual_seed(derive_seed(opts.seed, MODEL_INIT))
    unet = MultiStageUNet(cfg.model).to(ctx.device)
    ema = EMA(unet, cfg.optim.ema_decay, warmup=cfg.optim.ema_warmup)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    log = LossLog(run_dir / "loss.csv", process.num_stages)
    step, position, elapsed = 0, 0, 0.0
    if resume and latest is not None:
        step, position, elapsed = _load_state(latest, cfg, unet, ema, optimizer)
        say(f"resuming from {latest} (step {step})")
        if ctx.is_main:
            log.resume(step)
    elif ctx.is_main:
        if resume:
            say(f"no checkpoint in {run_dir}: starting a new run")
        log.start()
    if ctx.is_main:
        atomic_write_bytes(run_dir / ckpt.CONFIG_FILE, cfg.to_yaml().encode())
    module: nn.Module = LossModule(process, unet)
    if ctx.enabled:
        find_unused = opts.find_unused_parameters
        if find_unused == "auto":
            find_unused = opts.batch_size // ctx.world_size < process.num_stages
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=bool(find_unused))
    order = DataOrder(len(dataset), opts.seed, cfg.data.hflip)
    return Run(cfg, ctx, run_dir, dataset, order, process, unet, ema, optimizer, module, log,
               step, position, elapsed, resumed=latest is not None and resume)


def _load_state(latest: Path, cfg: TrainConfig, unet: nn.Module, ema: EMA,
                optimizer: torch.optim.Optimizer) -> tuple[int, int, float]:
    """Load a checkpoint into the run (refusing a different process or model config); returns
    its step, stream position and elapsed training seconds."""
    state, saved = ckpt.load_checkpoint(latest)
    for section in ("process", "model"):
        ours, theirs = getattr(cfg, section).model_dump(mode="json"), saved.get(section, {})
        if ours != theirs:
            keys = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
            raise UserError(
                f"--resume: the {section} config differs from the checkpoint {latest} in "
                f"{', '.join(f'{section}.{k}' for k in keys)}; resume with the run's own "
                "settings (drop those flags) or train into another --out")
    unet.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(ckpt.optimizer_from_tree(state["optimizer"]))
    ckpt.set_rng_state(state["rng"])
    progress = state["progress"]
    return int(progress["step"]), int(progress["position"]), float(progress["elapsed_s"])


# ---------------------------------------------------------------------------------------------
# One step and what it reports


@dataclass
class StepStats:
    """One step's statistics on this rank; `all_reduce` combines the ranks' in one collective."""

    loss: float
    grad_norm: float
    stage_sums: list[float]  # per stage: mean loss x count (0 for a stage not in the batch)
    stage_counts: list[float]
    clock: float = 0.0  # training seconds so far: rank 0's clock (0 on the other ranks)
    stop: bool = False  # a signal or `should_stop` on any rank

    def all_reduce(self, ctx: dist_.DistContext) -> StepStats:
        """Mean loss and gradient norm; summed stage sums and counts, clock and stop flag."""
        k = len(self.stage_sums)
        values = torch.tensor([self.loss, self.grad_norm, *self.stage_sums, *self.stage_counts,
                               self.clock, 1.0 if self.stop else 0.0], dtype=torch.float64)
        if ctx.enabled:
            values = dist_.sum_over_ranks(ctx, values)
            values[:2] /= ctx.world_size
        v = values.tolist()
        return StepStats(v[0], v[1], v[2 : 2 + k], v[2 + k : 2 + 2 * k], v[-2], v[-1] > 0)

    def stage_means(self) -> list[float]:
        return [s / c if c > 0 else math.nan
                for s, c in zip(self.stage_sums, self.stage_counts, strict=True)]


def train_step(run: Run, x: torch.Tensor, generator: torch.Generator,
               autocast: torch.autocast) -> StepStats:
    """One optimizer step on the batch `x`: loss, backward, clip, AdamW step, EMA update."""
    run.module.train()
    with autocast:
        loss, (per_stage, counts) = run.module(x, generator)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = run.cfg.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(run.unet.parameters(),
                                               clip if clip > 0 else math.inf)
    run.optimizer.step()
    run.ema.update(run.unet)
    sums = [0.0 if math.isnan(v) else v * c for v, c in zip(per_stage, counts, strict=True)]
    return StepStats(float(loss.detach()), float(grad_norm), sums, [float(c) for c in counts])


# ---------------------------------------------------------------------------------------------
# The loop


def run_training(cfg: TrainConfig, run_dir: Path, resume: bool = False,
                 console: Console | None = None, show_progress: bool = True,
                 should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (see the module docstring). `should_stop(step)` -> True stops
    after that step as an interruption would (checkpoint written, no final samples)."""
    t_wall = time.monotonic()
    console = console or Console(highlight=False, soft_wrap=True)
    ctx = dist_.init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    if ctx.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients can slow CPU kernels several-fold
    try:
        return _train(cfg, run_dir, resume, console, show_progress, should_stop, ctx, t_wall)
    finally:
        if ctx.device.type == "cpu":
            torch.set_flush_denormal(False)  # torch's default, for whoever called us
        dist_.shutdown(ctx)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, console: Console, show_progress: bool,
           should_stop: Callable[[int], bool] | None, ctx: dist_.DistContext,
           t_wall: float) -> TrainResult:
    opts, main = cfg.train, ctx.is_main

    def say(message: str, markup: bool = False) -> None:
        if main:
            console.print(message, markup=markup)

    run = setup(cfg, run_dir, resume, ctx, say)
    nparams = sum(p.numel() for p in run.unet.parameters())
    budget = " / ".join(x for x in (opts.max_steps and f"{opts.max_steps} steps",
                                     opts.minutes and f"{opts.minutes:g} min") if x)
    say(f"[bold]fdm train[/] {escape(cfg.preset or 'custom')}: stages "
        f"{' -> '.join('x'.join(map(str, s)) for s in run.process.stage_shapes)}, UNet "
        f"{nparams / 1e6:.2f}M params, data {escape(cfg.data.source)} ({len(run.dataset)} "
        f"images), batch {opts.batch_size} on {ctx.world_size} x {ctx.device}, budget {budget}, "
        f"out {escape(str(run_dir))}", markup=True)

    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                              enabled=opts.precision == "bf16")
    last_loss, interrupted = None, False
    saved_step = run.step if run.resumed else -1
    t_start = time.monotonic() - run.elapsed
    with graceful_stop() as stop_flag, TrainProgress(console, opts, run.step, show_progress,
                                                     main) as progress:
        while not budget_spent(opts, run.step, run.elapsed):
            lr = learning_rate(cfg, run.step, run.elapsed)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            x, generator = run.batch()
            stats = train_step(run, x, generator, autocast)
            run.step += 1
            run.position += opts.batch_size
            stats.clock = (time.monotonic() - t_start) if main else 0.0
            stats.stop = bool(stop_flag["signal"]) or (
                should_stop is not None and should_stop(run.step))
            stats = stats.all_reduce(ctx)
            run.elapsed, last_loss = stats.clock, stats.loss
            if not math.isfinite(last_loss):
                raise RuntimeError(f"the loss is {last_loss} at step {run.step}; lower --lr or "
                                   "check the data")
            if main:
                run.log.add(run.step, last_loss, stats.stage_means(), lr, stats.grad_norm,
                            run.elapsed)
                if run.step % opts.log_every == 0:
                    run.log.flush()
                    progress.update(run.step, last_loss, run.elapsed)
            if stats.stop:
                interrupted = True
                break
            if run.step % opts.checkpoint_every == 0:
                run.checkpoint()
                saved_step = run.step
                run.write_images(f"step-{run.step:08d}.png", f"strip-{run.step:08d}.png")
                if main:
                    progress.note(f"step {run.step}: loss {last_loss:.4f}; checkpoint and "
                                "samples written")
        progress.finish(run.step, last_loss, interrupted)

    if saved_step != run.step:
        run.checkpoint()
    if interrupted:
        say(f"stopped at step {run.step}; checkpoint written. Continue with: fdm train --out "
            f"{run_dir} --resume")
        return TrainResult(run_dir, run.step, True, last_loss, time.monotonic() - t_wall,
                           run.unet)
    run.write_images("final.png", "final-strip.png")
    if main:
        run.log.save_plot(run_dir / "loss.png")
        save_pretrained(run.ema.averaged_model(run.unet).cpu(), run_dir / ckpt.MODEL_DIR,
                        extra_config={"process": cfg.process.model_dump(mode="json"),
                                      "fdm": {"preset": cfg.preset, "step": run.step,
                                              "data": cfg.data.source}})
    dist_.barrier(ctx)
    wall = time.monotonic() - t_wall
    shown = last_loss if last_loss is not None else float("nan")
    say(f"done: {run.step} steps, final loss {shown:.4f}, "
        f"{wall:.0f} s. Samples: {run_dir / ckpt.SAMPLES / 'final.png'}, stage strip: "
        f"{run_dir / ckpt.SAMPLES / 'final-strip.png'}, model: {run_dir / ckpt.MODEL_DIR}")
    return TrainResult(run_dir, run.step, False, last_loss, wall, run.unet)


# ---------------------------------------------------------------------------------------------
# Sample images


def write_samples(ctx: dist_.DistContext, cfg: TrainConfig, model: LoadedModel, grid: Path,
                  strip: Path) -> None:
    """Sample the grid (split over ranks, gathered on rank 0) and write grid + stage strip."""
    s = cfg.sample
    start, stop = dist_.shard(ctx, s.num)
    local = generate(model, range(start, stop), s.seed, s.sampler(), batch_size=s.batch_size,
                     device=ctx.device)
    x = dist_.gather_shards(ctx, local.x, s.num)
    preds = [dist_.gather_shards(ctx, p, s.num) for p in local.stage_predictions]
    if not ctx.is_main:
        return
    save_png(make_grid(x), grid)
    tile = strip_tile(cfg.process.resolution)
    columns, labels = strip_columns(model.process, Samples(x, preds), s.strip_rows, tile)
    save_png(stage_strip(columns, labels, tile=tile), strip)
