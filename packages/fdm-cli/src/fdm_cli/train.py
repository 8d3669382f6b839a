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
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from fdm_core import FDMProcess, diffusion_loss
from fdm_models import EMA, MultiStageUNet, save_pretrained

from . import checkpointing as ckpt
from . import distributed as dist_
from .config import TrainConfig
from .data import DataOrder, load_dataset
from .errors import UserError
from .images import atomic_write_bytes, make_grid, save_png, stage_strip
from .losslog import LossLog
from .sample import LoadedModel, Samples, generate, strip_columns, strip_tile
from .seeding import MODEL_INIT, TRAIN_STEP, derive_seed


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
    o, t = cfg.optim, cfg.train
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.decay == "constant":
        return o.lr
    fractions = []
    if t.max_steps:
        fractions.append((step - o.warmup_steps) / max(1, t.max_steps - o.warmup_steps))
    if t.minutes:
        fractions.append(elapsed_s / (t.minutes * 60))
    frac = min(1.0, max(0.0, max(fractions)))
    return o.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@contextmanager
def graceful_stop() -> object:
    """SIGINT/SIGTERM set a flag (checked after each step) instead of killing the run."""
    flag = {"signal": None}

    def handler(signum: int, _frame: object) -> None:
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]step {task.fields[step]}"), BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} it/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )


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
    t, o = cfg.train, cfg.optim
    main = ctx.is_main
    def say(message: str, markup: bool = False) -> None:
        if main:
            console.print(message, markup=markup)

    if t.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {t.batch_size} must be divisible by the {ctx.world_size} "
                        "ranks (it is the global batch)")
    if t.threads:
        torch.set_num_threads(t.threads)
    elif ctx.enabled and ctx.device.type == "cpu":
        import os

        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    per_rank = t.batch_size // ctx.world_size

    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(f"{run_dir} already holds a run ({latest.name}); pass --resume to "
                        "continue it, or choose another --out")
    dataset = load_dataset(cfg.data.source, cfg.process.resolution,
                           None if cfg.data.channels == "auto" else cfg.data.channels, cfg.data.fit)
    process = FDMProcess(cfg.process)
    torch.manual_seed(derive_seed(t.seed, MODEL_INIT))
    unet = MultiStageUNet(cfg.model).to(ctx.device)
    ema = EMA(unet, o.ema_decay, warmup=o.ema_warmup)
    opt = torch.optim.AdamW(unet.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    step, position, elapsed = 0, 0, 0.0
    log = LossLog(run_dir / "loss.csv", process.num_stages)
    if resume and latest is not None:
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
        opt.load_state_dict(ckpt.optimizer_from_tree(state["optimizer"]))
        ckpt.set_rng_state(state["rng"])
        step, position = int(state["progress"]["step"]), int(state["progress"]["position"])
        elapsed = float(state["progress"]["elapsed_s"])
        say(f"resuming from {latest} (step {step})")
        if main:
            log.resume(step)
    elif main:
        if resume:
            say(f"no checkpoint in {run_dir}: starting a new run")
        log.start()
    if main:
        atomic_write_bytes(run_dir / ckpt.CONFIG_FILE, cfg.to_yaml().encode())

    module: nn.Module = LossModule(process, unet)
    if ctx.enabled:
        find_unused = t.find_unused_parameters
        if find_unused == "auto":
            find_unused = per_rank < process.num_stages
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=bool(find_unused))
    order = DataOrder(len(dataset), t.seed, cfg.data.hflip)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    nparams = sum(p.numel() for p in unet.parameters())
    budget = " / ".join(x for x in (t.max_steps and f"{t.max_steps} steps",
                                     t.minutes and f"{t.minutes:g} min") if x)
    say(f"[bold]fdm train[/] {escape(cfg.preset or 'custom')}: stages "
        f"{' -> '.join('x'.join(map(str, s)) for s in process.stage_shapes)}, UNet "
        f"{nparams / 1e6:.2f}M params, data {escape(cfg.data.source)} ({len(dataset)} images), "
        f"batch {t.batch_size} on {ctx.world_size} x {ctx.device}, budget {budget}, out "
        f"{escape(str(run_dir))}", markup=True)

    def checkpoint() -> None:
        if not main:
            return
        state = {
            "model": unet.state_dict(), "ema": ema.state_dict(),
            "optimizer": ckpt.optimizer_to_tree(opt.state_dict()), "rng": ckpt.rng_state(),
            "progress": {"step": step, "position": position, "elapsed_s": elapsed,
                         "seed": t.seed, "world_size": ctx.world_size},
        }
        log.flush()
        ckpt.save_checkpoint(run_dir, step, state, cfg.to_dict(), t.keep_checkpoints)
        log.save_plot(run_dir / "loss.png")

    def images(grid: str, strip: str) -> None:
        sampler = LoadedModel(process, ema.averaged_model(unet), "ema")
        folder = run_dir / ckpt.SAMPLES
        write_samples(ctx, cfg, sampler, folder / grid, folder / strip)

    last_loss, interrupted, saved_step = None, False, step if latest is not None and resume else -1
    t_start = time.monotonic() - elapsed
    rate_t, rate_step = time.monotonic(), step
    last_line = rate_t
    live = show_progress and main and console.is_terminal  # logs get plain status lines instead
    with graceful_stop() as stop_flag, _progress(console, live) as bar:
        task = bar.add_task("train", total=1000, step=step, loss="-", ips="-")
        while True:
            over = (t.max_steps is not None and step >= t.max_steps) or (
                t.minutes is not None and elapsed >= t.minutes * 60)
            if over:
                break
            lr = learning_rate(cfg, step, elapsed)
            for group in opt.param_groups:
                group["lr"] = lr
            seed = derive_seed(t.seed, TRAIN_STEP, step, ctx.rank)
            torch.manual_seed(seed)
            generator = torch.Generator(ctx.device).manual_seed(seed)
            idx, flip = order.take(position + ctx.rank * per_rank, per_rank)
            x = dataset.batch(idx, flip).to(ctx.device)
            module.train()
            with autocast:
                loss, (per_stage, counts) = module(x, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                unet.parameters(), o.grad_clip if o.grad_clip > 0 else math.inf)
            opt.step()
            ema.update(unet)
            step += 1
            position += t.batch_size
            stop_here = bool(stop_flag["signal"]) or (should_stop is not None and should_stop(step))
            # One collective per step: the mean loss, per-stage sums/counts, rank 0's clock, stops.
            k = process.num_stages
            stats = torch.tensor(
                [float(loss.detach()), float(grad_norm),
                 *[0.0 if math.isnan(v) else v * c for v, c in zip(per_stage, counts, strict=True)],
                 *[float(c) for c in counts],
                 (time.monotonic() - t_start) if main else 0.0, 1.0 if stop_here else 0.0],
                dtype=torch.float64)
            if ctx.enabled:
                stats = dist_.sum_over_ranks(ctx, stats)
                stats[:2] /= ctx.world_size  # mean loss and gradient norm; the rest are sums
            elapsed, stop_here = float(stats[-2]), bool(stats[-1] > 0)
            sums, cnt = stats[2 : 2 + k], stats[2 + k : 2 + 2 * k]
            stage_means = [float(s / c) if c > 0 else math.nan
                           for s, c in zip(sums, cnt, strict=True)]
            last_loss = float(stats[0])
            if not math.isfinite(last_loss):
                raise RuntimeError(f"the loss is {last_loss} at step {step}; lower --lr or check "
                                   "the data")
            if main:
                log.add(step, last_loss, stage_means, lr, float(stats[1]), elapsed)
                if step % t.log_every == 0:
                    log.flush()
                    now = time.monotonic()
                    ips = (step - rate_step) / max(1e-9, now - rate_t)
                    rate_t, rate_step = now, step
                    frac = max(step / t.max_steps if t.max_steps else 0.0,
                               elapsed / (t.minutes * 60) if t.minutes else 0.0)
                    bar.update(task, completed=min(1000, 1000 * frac), step=step,
                               loss=f"{last_loss:.4f}", ips=f"{ips:.2f}")
                    if show_progress and not console.is_terminal and now - last_line >= 30:
                        last_line = now
                        say(f"step {step}: loss {last_loss:.4f}, {ips:.2f} it/s, "
                            f"{elapsed / 60:.1f} min, {100 * min(1.0, frac):.0f}% of the budget")
            if stop_here:
                interrupted = True
                break
            if step % t.checkpoint_every == 0:
                checkpoint()
                saved_step = step
                images(f"step-{step:08d}.png", f"strip-{step:08d}.png")
                if main:
                    bar.console.print(f"step {step}: loss {last_loss:.4f}; checkpoint and "
                                      "samples written", markup=False)
        bar.update(task, completed=1000 if not interrupted else bar.tasks[0].completed,
                   step=step, loss="-" if last_loss is None else f"{last_loss:.4f}")
    if saved_step != step:
        checkpoint()
    if interrupted:
        say(f"stopped at step {step}; checkpoint written. Continue with: fdm train --out "
            f"{run_dir} --resume")
        return TrainResult(run_dir, step, True, last_loss, time.monotonic() - t_wall, unet)
    images("final.png", "final-strip.png")
    if main:
        log.save_plot(run_dir / "loss.png")
        save_pretrained(ema.averaged_model(unet).cpu(), run_dir / ckpt.MODEL_DIR, extra_config={
            "process": cfg.process.model_dump(mode="json"),
            "fdm": {"preset": cfg.preset, "step": step, "data": cfg.data.source}})
    dist_.barrier(ctx)
    wall = time.monotonic() - t_wall
    shown = last_loss if last_loss is not None else float("nan")
    say(f"done: {step} steps, final loss {shown:.4f}, "
        f"{wall:.0f} s. Samples: {run_dir / ckpt.SAMPLES / 'final.png'}, stage strip: "
        f"{run_dir / ckpt.SAMPLES / 'final-strip.png'}, model: {run_dir / ckpt.MODEL_DIR}")
    return TrainResult(run_dir, step, False, last_loss, wall, unet)
