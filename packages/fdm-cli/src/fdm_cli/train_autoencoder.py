"""The autoencoder training loop behind `fdm train-autoencoder` (single process).

Exact commands::

    fdm train-autoencoder                 # KL, 32x32 -> 4x8x8, embedded Fashion-MNIST, CPU, 3 min
    fdm train-autoencoder --bottleneck vq --out runs/vq-autoencoder --max-steps 2000
    fdm train-autoencoder --factor 8 --latent-channels 8 --attention --out runs/ae-f8
    fdm train-autoencoder --out runs/autoencoder --resume --minutes 6   # continue / extend
    fdm train-autoencoder --set model.kl_weight=1e-5 --dry-run

It trains :class:`fdm_models.Autoencoder`, the frozen encoder/decoder pair a latent f-DM stage
runs in (docs/design.md §5.4 for how the sampler crosses into such a stage). The last
``--holdout`` images of the dataset are never trained on; the reconstruction PSNR is measured on
them. Each step: a batch at stream position p (a pure function of seed and p, `fdm_cli.data`),
the posterior noise from a generator seeded by (seed, step), `Autoencoder.loss`, AdamW with
warm-up and cosine decay, gradient clipping. A NaN or infinite loss stops the run, or with
``train.nonfinite: skip`` drops that batch (`fdm_cli.nonfinite`). SIGINT/SIGTERM finish the step,
write a checkpoint and stop; ``--resume`` continues exactly (same losses on CPU as an
uninterrupted run).

RUN_DIR (default runs/autoencoder)::

    config.yaml                        the resolved AutoencoderTrainConfig
    checkpoints/step-*.safetensors     model, optimizer, RNG states, progress; `latest` pointer
    loss.csv, loss.png                 per-step total / reconstruction / regularization losses
    model/                             the final model (save_autoencoder; latent scale fitted)
    samples/reconstructions.png        held-out originals (top rows), reconstructions (below)
    metrics.json                       psnr_db, holdout, steps, wall_s, train_s, codebook_usage
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from fdm_models import Autoencoder, save_autoencoder

from . import checkpointing as ckpt
from .autoencoder_config import AutoencoderTrainConfig, resolve_autoencoder_config
from .data import DataOrder
from .distributed import resolve_device
from .errors import UserError
from .images import atomic_write_bytes, make_grid, save_png
from .losslog import AutoencoderLossLog
from .nonfinite import NonfiniteGuard, diverged
from .progress import TrainProgress, graceful_stop
from .runlock import locked_run_dir
from .seeding import MODEL_INIT, TRAIN_STEP, derive_seed
from .threads import configure_threads
from .train import budget_spent, learning_rate
from .training_data import IndexedImages, open_indexed

DEFAULT_RUN_DIR = Path("runs") / "autoencoder"
RECONSTRUCTIONS = "reconstructions.png"
METRICS = "metrics.json"

# ---------------------------------------------------------------------------------------------
# Evaluation


def reconstruction_psnr(
    model: Autoencoder, images: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image PSNR in dB, reconstructions) of images in [-1, 1] (peak-to-peak 2).

    The reconstruction is the deterministic ``decode_latent(encode_latent(x))`` clamped to the
    data range, as it would be shown; PSNR = 10 log10(2^2 / MSE) per image.
    """
    device = model.latent_scale.device
    psnr, recs = [], []
    with torch.no_grad():
        for x in images.split(batch_size):
            rec = model(x.to(device)).clamp(-1, 1).cpu()
            mse = (rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            psnr.append(10 * torch.log10(4.0 / mse))
            recs.append(rec)
    return torch.cat(psnr), torch.cat(recs)


def codebook_usage(model: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """vq: the fraction of the codebook that encoding `images` uses."""
    device = model.latent_scale.device
    with torch.no_grad():
        indices = [model.encode_indices(x.to(device)).cpu() for x in images.split(batch_size)]
    assert model.quantizer is not None
    return model.quantizer.usage(torch.cat(indices))[0]


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> Any:
    """Originals in the top rows, their reconstructions below at the same grid positions."""
    ncol = min(8, len(originals))
    n = len(originals) // ncol * ncol
    return make_grid(torch.cat([originals[:n], reconstructions[:n]]), ncol=ncol)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class AutoencoderResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    wall_s: float
    psnr_db: float | None = None
    codebook_usage: float | None = None
    model: Autoencoder | None = None


def _split(dataset: IndexedImages, holdout: int) -> int:
    """The number of training images: all but the last `holdout`."""
    if holdout >= len(dataset):
        raise UserError(
            f"--holdout {holdout} leaves no training images: {dataset.source} holds "
            f"{len(dataset)} images"
        )
    return len(dataset) - holdout


def _load_state(
    latest: Path, cfg: AutoencoderTrainConfig, model: Autoencoder, optimizer: torch.optim.Optimizer
) -> tuple[int, int, float]:
    """Load a checkpoint (refusing another model or data config): (step, position, elapsed)."""
    state, saved = ckpt.load_checkpoint(latest, ("model", "optimizer", "rng", "progress"))
    ckpt.refuse_changed_config(latest, cfg.to_dict(), saved, ("model", "data"))
    if saved.get("train", {}).get("holdout") != cfg.train.holdout:
        raise UserError(
            f"--resume: --holdout {cfg.train.holdout} differs from the run's "
            f"{saved.get('train', {}).get('holdout')}; the held-out images must stay the same"
        )
    with ckpt.restoring(latest):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(ckpt.optimizer_from_tree(state["optimizer"]))
        ckpt.set_rng_state(state["rng"])
    progress = state["progress"]
    return int(progress["step"]), int(progress["position"]), float(progress["elapsed_s"])


def run_autoencoder_training(
    cfg: AutoencoderTrainConfig,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    overwrite: bool = False,
) -> AutoencoderResult:
    """Train `cfg` into `run_dir` (see the module docstring). `should_stop(step)` -> True stops
    after that step as an interruption would (checkpoint written, no final model). Holds the
    run folder's lock throughout (`fdm_cli.runlock.locked_run_dir`, as `fdm train` does)."""
    t_wall = time.monotonic()
    console = console or Console(highlight=False, soft_wrap=True)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients can slow CPU kernels several-fold
    try:
        with locked_run_dir(run_dir, overwrite, resume):  # before anything is written
            return _train(cfg, run_dir, resume, console, show_progress, should_stop, device, t_wall)
    finally:
        if device.type == "cpu":
            torch.set_flush_denormal(False)


def _train(
    cfg: AutoencoderTrainConfig,
    run_dir: Path,
    resume: bool,
    console: Console,
    show_progress: bool,
    should_stop: Callable[[int], bool] | None,
    device: torch.device,
    t_wall: float,
) -> AutoencoderResult:
    opts = cfg.train
    threads = configure_threads(opts.threads, tune=device.type == "cpu")
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(
            f"{run_dir} already holds a run ({latest.name}); pass --resume to "
            "continue it, or choose another --out"
        )
    if stale := ckpt.sweep_stale_temporaries(run_dir):
        console.print(f"removed {len(stale)} temporary file(s) an interrupted write left")
    data = cfg.data
    dataset = open_indexed(data, cfg.model.resolution, cfg.model.in_channels)
    n_train = _split(dataset, opts.holdout)
    torch.manual_seed(derive_seed(opts.seed, MODEL_INIT))
    model = Autoencoder(cfg.model).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    log = AutoencoderLossLog(run_dir / "loss.csv")
    step, position, elapsed = 0, 0, 0.0
    if resume and latest is not None:
        step, position, elapsed = _load_state(latest, cfg, model, optimizer)
        console.print(f"resuming from {latest} (step {step})", markup=False)
        log.resume(step)
    else:
        if resume:
            console.print(f"no checkpoint in {run_dir}: starting a new run", markup=False)
        log.start()
    atomic_write_bytes(run_dir / ckpt.CONFIG_FILE, cfg.to_yaml().encode())
    order = DataOrder(n_train, opts.seed, cfg.data.hflip)
    guard = NonfiniteGuard(opts.nonfinite, run_dir)

    def checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": ckpt.optimizer_to_tree(optimizer.state_dict()),
            "rng": ckpt.rng_state(),
            "progress": {
                "step": step,
                "position": position,
                "elapsed_s": elapsed,
                "seed": opts.seed,
            },
        }
        log.flush()
        ckpt.save_checkpoint(run_dir, step, state, cfg.to_dict(), opts.keep_checkpoints)
        log.save_plot(run_dir / "loss.png")

    nparams = sum(p.numel() for p in model.parameters())
    budget = " / ".join(
        ([f"{opts.max_steps} steps"] if opts.max_steps else [])
        + ([f"{opts.minutes:g} min"] if opts.minutes else [])
    )
    m = cfg.model
    console.print(
        f"[bold]fdm train-autoencoder[/] {m.bottleneck}: {m.in_channels}x{m.resolution}x"
        f"{m.resolution} -> {'x'.join(map(str, m.latent_shape))}, {nparams / 1e6:.2f}M params, "
        f"data {escape(cfg.data.source)} ({n_train} training + {opts.holdout} held-out images), "
        f"batch {opts.batch_size} on {device}, budget {budget}, out {escape(str(run_dir))}",
        markup=True,
    )
    last_loss, interrupted = None, False
    saved_step = step if latest is not None and resume else -1
    t_start = time.monotonic() - elapsed
    # TrainProgress, budget_spent and learning_rate (from `fdm train`) read only fields this
    # config shares with TrainConfig: optim.lr/warmup_steps/decay, train.max_steps/minutes.
    with (
        graceful_stop() as stop_flag,
        TrainProgress(console, opts, step, show_progress, True) as progress,
    ):
        while not budget_spent(opts, step, elapsed):
            lr = learning_rate(cfg, step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = derive_seed(opts.seed, TRAIN_STEP, step)
            torch.manual_seed(seed)
            generator = torch.Generator(device).manual_seed(seed)
            idx, flip = order.take(position, opts.batch_size)
            x = dataset.batch(idx, flip).to(device)
            model.train()
            out = model.loss(x, generator)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            clip = cfg.optim.grad_clip
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), clip if clip > 0 else math.inf
            )
            applied = guard.keep(out.total, grad_norm, step + 1)  # False: batch skipped
            if applied:
                optimizer.step()
            threads.tick()
            step += int(applied)
            position += opts.batch_size
            elapsed = time.monotonic() - t_start
            if applied:
                last_loss = float(out.total.detach())
                if not math.isfinite(last_loss):
                    raise diverged(last_loss, step, run_dir)
                parts = [float(out.reconstruction.detach()), float(out.regularization.detach())]
                log.add(step, last_loss, parts, lr, float(grad_norm), elapsed)
                if step % opts.log_every == 0:
                    log.flush()
                    progress.update(step, last_loss, elapsed)
            if stop_flag["signal"] or (should_stop is not None and should_stop(step)):
                interrupted = True
                break
            if applied and step % opts.checkpoint_every == 0:
                checkpoint()
                threads.pause()  # not a training step
                saved_step = step
                progress.note(f"step {step}: loss {last_loss:.4f}; checkpoint written")
        progress.finish(step, last_loss, interrupted)

    if saved_step != step:
        checkpoint()
    if interrupted:
        console.print(
            f"stopped at step {step}; checkpoint written. Continue with: fdm train-autoencoder "
            f"--out {run_dir} --resume",
            markup=False,
        )
        return AutoencoderResult(run_dir, step, True, last_loss, time.monotonic() - t_wall)
    return _finish(cfg, run_dir, model, dataset, n_train, step, elapsed, last_loss, console, t_wall)


def _finish(
    cfg: AutoencoderTrainConfig,
    run_dir: Path,
    model: Autoencoder,
    dataset: IndexedImages,
    n_train: int,
    step: int,
    elapsed: float,
    last_loss: float | None,
    console: Console,
    t_wall: float,
) -> AutoencoderResult:
    """Fit the latent scale, write model/, the reconstruction grid and metrics.json."""
    opts = cfg.train
    model.eval()
    n_scale = min(opts.scale_images, n_train)
    model.fit_latent_scale(dataset.batch(torch.arange(n_scale)), opts.eval_batch_size)
    model_dir = save_autoencoder(model, run_dir / ckpt.MODEL_DIR)
    if opts.holdout:
        evaluated = dataset.batch(torch.arange(n_train, len(dataset)))
        where = f"{opts.holdout} held-out images"
    else:  # nothing held out: measure on training images and say so
        evaluated = dataset.batch(torch.arange(min(500, n_train)))
        where = f"{len(evaluated)} training images (--holdout 0)"
    psnr, recs = reconstruction_psnr(model, evaluated, opts.eval_batch_size)
    psnr_db = float(psnr.mean())
    shown = min(opts.show, len(evaluated))
    grid_path = run_dir / ckpt.SAMPLES / RECONSTRUCTIONS
    save_png(reconstruction_grid(evaluated[:shown], recs[:shown]), grid_path)
    usage = codebook_usage(model, evaluated, opts.eval_batch_size) if model.quantizer else None
    wall = time.monotonic() - t_wall
    metrics = {
        "psnr_db": psnr_db,
        "holdout": opts.holdout,
        "steps": step,
        "wall_s": wall,
        "train_s": elapsed,
        "codebook_usage": usage,
    }
    atomic_write_bytes(run_dir / METRICS, (json.dumps(metrics, indent=2) + "\n").encode())
    codes = f", codebook usage {100 * usage:.0f}%" if usage is not None else ""
    console.print(
        f"done: PSNR {psnr_db:.2f} dB on {where}{codes}, {step} steps, {wall:.0f} s "
        f"(training {elapsed:.0f} s). Model: {model_dir}, reconstructions: {grid_path}",
        markup=False,
    )
    return AutoencoderResult(
        run_dir, step, False, last_loss, wall, psnr_db, usage, model.cpu().eval()
    )


def print_dry_run(cfg: AutoencoderTrainConfig, run_dir: Path, console: Console) -> None:
    """The resolved config as YAML, then one comment line with the model's size and latent."""
    params = sum(p.numel() for p in Autoencoder(cfg.model).parameters())
    console.print(cfg.to_yaml(), end="", markup=False, highlight=False)
    console.print(
        f"# Autoencoder {params / 1e6:.2f}M parameters, latent "
        f"{'x'.join(map(str, cfg.model.latent_shape))} ({cfg.model.bottleneck}); RUN_DIR {run_dir}",
        markup=False,
    )


def command(
    flags: Mapping[str, Any],
    overrides: Sequence[str],
    out: Path | None,
    resume: bool,
    overwrite: bool,
    dry_run: bool,
    show_progress: bool,
) -> AutoencoderResult | None:
    """`fdm train-autoencoder`: resolve the config (a resumed run's own config is the base),
    then print it (--dry-run) or train. Returns the result (None for --dry-run)."""
    from .configfile import saved_run_config

    run_dir = out or DEFAULT_RUN_DIR
    saved = saved_run_config(run_dir) if resume else None
    cfg = resolve_autoencoder_config(flags, overrides, saved)
    console = Console(highlight=False, soft_wrap=True)
    if dry_run:
        print_dry_run(cfg, run_dir, console)
        return None
    return run_autoencoder_training(cfg, run_dir, resume, console, show_progress, None, overwrite)
