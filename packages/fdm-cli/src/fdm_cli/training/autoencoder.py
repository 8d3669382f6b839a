"""The autoencoder trainer behind `fdm train-autoencoder` (single process).

Exact commands::

    fdm train-autoencoder                 # KL, 32x32 -> 4x8x8, embedded Fashion-MNIST, CPU, 3 min
    fdm train-autoencoder --bottleneck vq --out runs/vq-autoencoder --max-steps 2000
    fdm train-autoencoder --factor 8 --latent-channels 8 --attention --out runs/ae-f8
    fdm train-autoencoder --out runs/autoencoder --resume --minutes 6   # continue / extend
    fdm train-autoencoder --set model.kl_weight=1e-5 --dry-run

It trains :class:`fdm_models.Autoencoder`, the frozen encoder/decoder pair a latent f-DM stage
runs in (docs/design.md §5.4 for how the sampler crosses into such a stage). The last
``--holdout`` images of the dataset are never trained on; the reconstruction PSNR is measured on
them. Each step: a batch at stream position p (a pure function of seed and p,
`fdm_cli.data.dataset`), the posterior noise from a generator seeded by (seed, step),
`Autoencoder.loss`, AdamW with warm-up and cosine decay, gradient clipping. A NaN or infinite
loss stops the run, or with ``train.nonfinite: skip`` drops that batch
(`fdm_cli.training.nonfinite`). SIGINT/SIGTERM finish the step, write a checkpoint and stop;
``--resume`` continues exactly (same losses on CPU as an uninterrupted run). The loop (budget,
schedule, resume, checkpoints, signals, progress) is the one `fdm train` runs,
`fdm_cli.training.trainer`; this module supplies the model, its step and what it writes.

RUN_DIR (default runs/autoencoder)::

    config.yaml                        the resolved AutoencoderTrainConfig
    checkpoints/step-*.safetensors     model, optimizer, RNG states, progress; `latest` pointer
    loss.csv, loss.png                 per-step total / reconstruction / regularization losses
    model/                             the final model (save_autoencoder; latent scale fitted)
    samples/reconstructions.png        held-out originals (top rows), reconstructions (below)
    metrics.json                       psnr_db, holdout, steps, wall_s, train_s, codebook_usage
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import AutoencoderLossLog
from fdm_cli.artifacts.pictures import atomic_write_bytes, make_grid, save_png
from fdm_cli.config.autoencoder import AutoencoderTrainConfig
from fdm_cli.data.dataset import DataOrder
from fdm_cli.errors import UserError
from fdm_cli.runtime.device import resolve_device
from fdm_cli.runtime.distributed import DistContext
from fdm_cli.runtime.threads import ThreadTuner, configure_threads
from fdm_cli.seeding import MODEL_INIT, TRAIN_STEP, derive_seed
from fdm_cli.training.data import IndexedImages, open_indexed
from fdm_cli.training.nonfinite import NonfiniteGuard, diverged
from fdm_cli.training.schedule import budget_text
from fdm_cli.training.trainer import (
    Call,
    Stateful,
    Trainer,
    TrainingRun,
    call_trainer,
    open_run_dir,
)
from fdm_cli.training.update import update
from fdm_models import Autoencoder, AutoencoderLoss, save_autoencoder

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
# The trainer


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
            f"`holdout` {holdout} leaves no training images: {dataset.source} holds "
            f"{len(dataset)} images"
        )
    return len(dataset) - holdout


@dataclass
class AutoencoderRun(TrainingRun):
    """An autoencoder run being trained: its model and where it stands."""

    COMMAND = "train-autoencoder"
    RESUME_COMPARED = ("model", "data")

    cfg: AutoencoderTrainConfig
    ctx: DistContext
    run_dir: Path
    model: Autoencoder
    optimizer: torch.optim.Optimizer
    log: AutoencoderLossLog
    threads: ThreadTuner
    step: int = 0
    position: int = 0
    elapsed: float = 0.0
    resumed: bool = False

    def weights(self) -> dict[str, Stateful]:
        """The autoencoder's weights."""
        return {"model": self.model}

    def refuse_changes(self, latest: Path, saved: dict[str, Any]) -> None:
        """The shared check, and the held-out images must stay the same (``train.holdout``)."""
        super().refuse_changes(latest, saved)
        holdout = self.cfg.train.holdout
        if saved.get("train", {}).get("holdout") != holdout:
            raise UserError(
                f"`resume=True`: `holdout` {holdout} differs from the run's "
                f"{saved.get('train', {}).get('holdout')}; the held-out images must stay the same"
            )


class AutoencoderTrainer(Trainer):
    """The autoencoder's steps for the shared loop: `Autoencoder.loss` on a batch of the training
    images, each applied step's losses read at once into the loss log."""

    def __init__(
        self, run: AutoencoderRun, dataset: IndexedImages, order: DataOrder, guard: NonfiniteGuard
    ) -> None:
        super().__init__(run)
        self.run: AutoencoderRun = run
        self.dataset, self.order, self.guard = dataset, order, guard
        self.last: tuple[AutoencoderLoss, torch.Tensor] | None = None  # losses, gradient norm
        self.loss: float | None = None  # the last applied step's loss

    def step(self) -> bool:
        run, opts = self.run, self.run.cfg.train
        seed = derive_seed(opts.seed, TRAIN_STEP, run.step)
        torch.manual_seed(seed)
        generator = torch.Generator(run.ctx.device).manual_seed(seed)
        idx, flip = self.order.take(run.position, opts.batch_size)
        x = self.dataset.batch(idx, flip).to(run.ctx.device)
        run.model.train()
        out = run.model.loss(x, generator)
        run.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        clip = run.cfg.optim.grad_clip
        grad_norm, applied = update(
            run.optimizer, out.total, run.model.parameters(), clip, self.guard, run.step + 1
        )
        self.last = out, grad_norm
        return applied

    def record(self, lr: float) -> None:
        assert self.last is not None
        run, (out, grad_norm) = self.run, self.last
        loss = float(out.total.detach())
        if not math.isfinite(loss):
            raise diverged(loss, run.step, run.run_dir)
        parts = [float(out.reconstruction.detach()), float(out.regularization.detach())]
        norm = float(grad_norm)
        run.log.add(run.step, loss, parts, lr, norm, run.elapsed)
        names = ("train/loss", "train/reconstruction", "train/regularization")
        scalars = dict(zip(names, (loss, *parts), strict=True))
        run.trackers.scalars(run.step, scalars | {"train/lr": lr, "train/grad_norm": norm})
        self.loss = loss

    def read(self) -> float | None:
        return self.loss  # the rows went into the log as each step was recorded

    def at_checkpoint(self) -> str:
        return "checkpoint written"


def run_autoencoder_training(
    cfg: AutoencoderTrainConfig,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    overwrite: bool = False,
) -> AutoencoderResult:
    """Train `cfg` into `run_dir` (see the module docstring) in this process. `should_stop(step)`
    -> True stops after that step as an interruption would (checkpoint written, no final model).
    Holds the run folder's lock throughout, as `fdm train` does
    (`fdm_cli.training.trainer.call_trainer`)."""

    def start() -> DistContext:  # one process
        return DistContext(device=resolve_device(cfg.train.device))

    return call_trainer(
        _train, cfg, run_dir, resume, overwrite, console, show_progress, should_stop, start
    )


def _train(cfg: AutoencoderTrainConfig, call: Call) -> AutoencoderResult:
    """The run of `run_autoencoder_training`, its folder held."""
    opts, ctx, run_dir = cfg.train, call.ctx, call.run_dir
    threads = configure_threads(opts.threads, tune=ctx.device.type == "cpu")
    latest = open_run_dir(run_dir, call.resume, ctx, call.say)
    dataset = open_indexed(cfg.data, cfg.model.resolution, cfg.model.in_channels)
    n_train = _split(dataset, opts.holdout)
    torch.manual_seed(derive_seed(opts.seed, MODEL_INIT))
    model = Autoencoder(cfg.model).to(ctx.device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    log = AutoencoderLossLog(run_dir / "loss.csv")
    run = AutoencoderRun(cfg, ctx, run_dir, model, optimizer, log, threads)
    run.begin(latest, call.resume, call.say)
    order = DataOrder(n_train, opts.seed, cfg.data.hflip)
    trainer = AutoencoderTrainer(run, dataset, order, NonfiniteGuard(opts.nonfinite, run_dir))
    nparams = sum(p.numel() for p in model.parameters())
    m = cfg.model
    call.say(
        f"[bold]fdm train-autoencoder[/] {m.bottleneck}: {m.in_channels}x{m.resolution}x"
        f"{m.resolution} -> {'x'.join(map(str, m.latent_shape))}, {nparams / 1e6:.2f}M params, "
        f"data {escape(cfg.data.source)} ({n_train} training + {opts.holdout} held-out images), "
        f"batch {opts.batch_size} on {ctx.device}, budget {budget_text(opts)}, out "
        f"{escape(str(run_dir))}",
        markup=True,
    )
    with contextlib.closing(run.trackers):
        end = trainer.train(call)
        if end.interrupted:
            return AutoencoderResult(run_dir, run.step, True, end.last_loss, call.wall())
        return _finish(run, dataset, n_train, end.last_loss, call)


def _finish(
    run: AutoencoderRun,
    dataset: IndexedImages,
    n_train: int,
    last_loss: float | None,
    call: Call,
) -> AutoencoderResult:
    """Fit the latent scale, write model/, the reconstruction grid and metrics.json."""
    opts, model, run_dir = run.cfg.train, run.model, run.run_dir
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
    wall = call.wall()
    metrics = {
        "psnr_db": psnr_db,
        "holdout": opts.holdout,
        "steps": run.step,
        "wall_s": wall,
        "train_s": run.elapsed,
        "codebook_usage": usage,
    }
    atomic_write_bytes(run_dir / METRICS, (json.dumps(metrics, indent=2) + "\n").encode())
    run.trackers.scalars(run.step, {"eval/psnr_db": psnr_db})
    run.trackers.images(run.step, {"samples/reconstructions": grid_path})
    codes = f", codebook usage {100 * usage:.0f}%" if usage is not None else ""
    call.console.print(
        f"done: PSNR {psnr_db:.2f} dB on {where}{codes}, {run.step} steps, {wall:.0f} s "
        f"(training {run.elapsed:.0f} s). Model: {model_dir}, reconstructions: {grid_path}",
        markup=False,
    )
    return AutoencoderResult(
        run_dir, run.step, False, last_loss, wall, psnr_db, usage, model.cpu().eval()
    )
