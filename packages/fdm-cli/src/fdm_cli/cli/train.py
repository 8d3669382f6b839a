"""`fdm train` and `fdm train-autoencoder`: flags -> a resolved config -> the training API
(`fdm_cli.training`), or ``--dry-run`` to print the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from fdm_cli.cli.console import cli_errors
from fdm_cli.cli.options import (
    DryRunOpt,
    LogOpt,
    LrOpt,
    MaxStepsOpt,
    Opt,
    OverwriteRunOpt,
    ProgressOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    StrictOpt,
    ThreadsOpt,
    TrainDeviceOpt,
)
from fdm_cli.config.choices import Precision, PresetName

if TYPE_CHECKING:
    from fdm_cli.config.autoencoder import AutoencoderTrainConfig
    from fdm_cli.config.train import TrainConfig


@cli_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML/JSON TrainConfig file.")] = None,
    preset: Annotated[PresetName | None, Opt(help="Starting point (default fdm-ds).")] = None,
    data: Annotated[
        str | None, Opt(help="fashion-mnist, an image folder, IDX files or WebDataset shards.")
    ] = None,
    strict: StrictOpt = None,
    out: Annotated[Path | None, Opt(help="RUN_DIR (default runs/<preset>).")] = None,
    autoencoder: Annotated[
        Path | None,
        Opt(help="Autoencoder folder of fdm-vae / ldm (default runs/autoencoder)."),
    ] = None,
    resolution: Annotated[int | None, Opt(help="Image size in pixels.")] = None,
    max_steps: MaxStepsOpt = None,
    minutes: Annotated[float | None, Opt(help="Train this many minutes (default 7.5).")] = None,
    batch_size: Annotated[int | None, Opt(help="Global batch size.")] = None,
    lr: LrOpt = None,
    device: TrainDeviceOpt = None,
    precision: Annotated[
        Precision | None, Opt(help="bf16 or fp16 (CUDA; loss scaling): the UNet under autocast.")
    ] = None,
    compile_: Annotated[bool | None, Opt("--compile/--no-compile", help="Compile the loss")] = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    log: LogOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train an f-DM (or the DDPM baseline) and write checkpoints, samples and losses to RUN_DIR."""
    from fdm_cli.config.files import saved_run_config
    from fdm_cli.config.presets import DEFAULT_PRESET
    from fdm_cli.config.train import resolve_train_config

    run_dir = out or Path("runs") / (preset or DEFAULT_PRESET)
    # Resuming with neither a config file nor a preset continues the run's own config.
    saved = saved_run_config(run_dir) if resume and config is None and preset is None else None
    flags = {
        "data.source": data,
        "data.strict": strict,
        "process.autoencoder": None if autoencoder is None else str(autoencoder),
        "process.resolution": resolution,
        "train.max_steps": max_steps,
        "train.minutes": minutes,
        "train.batch_size": batch_size,
        "optim.lr": lr,
        "train.device": device,
        "train.precision": precision,
        "train.compile": compile_,
        "train.seed": seed,
        "train.threads": threads,
        "train.trackers": log or None,
    }
    base_dir = run_dir if saved is not None else None  # a saved config names run-relative assets
    cfg = resolve_train_config(config, preset, flags, set_ or [], saved, base_dir)
    if out is None and saved is None:
        run_dir = Path("runs") / (cfg.preset or "custom")
    console = Console(highlight=False, soft_wrap=True)
    if dry_run:
        print_dry_run(cfg, run_dir, console)
        return
    from fdm_cli.training.loop import run_training

    result = run_training(
        cfg, run_dir, resume=resume, console=console, show_progress=progress, overwrite=overwrite
    )
    if result.interrupted:
        raise typer.Exit(130)


@cli_errors
def train_autoencoder(
    data: Annotated[str | None, Opt(help="fashion-mnist, an image folder, or IDX files.")] = None,
    strict: StrictOpt = None,
    out: Annotated[Path | None, Opt(help="RUN_DIR (default runs/autoencoder).")] = None,
    resolution: Annotated[int | None, Opt(help="Image size in pixels (default 32).")] = None,
    factor: Annotated[int | None, Opt(help="Down-sampling factor 2, 4 or 8 (default 4).")] = None,
    latent_channels: Annotated[int | None, Opt(help="Latent channels (default 4).")] = None,
    bottleneck: Annotated[str | None, Opt(help="kl (KL-VAE, default) or vq (VQ-VAE).")] = None,
    attention: Annotated[
        bool | None, Opt("--attention/--no-attention", help="Self-attention at the bottom.")
    ] = None,
    base_channels: Annotated[int | None, Opt(help="Width of the full-resolution level.")] = None,
    batch_size: Annotated[int | None, Opt(help="Images per step.")] = None,
    lr: LrOpt = None,
    max_steps: MaxStepsOpt = None,
    minutes: Annotated[float | None, Opt(help="Train this many minutes (default 3).")] = None,
    seed: SeedOpt = None,
    device: TrainDeviceOpt = None,
    threads: ThreadsOpt = None,
    holdout: Annotated[
        int | None, Opt(help="Last N images: never trained on (default 500).")
    ] = None,
    log: LogOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the autoencoder a latent f-DM stage runs in; write model/, PSNR and reconstructions."""
    flags = {
        "data.source": data,
        "data.strict": strict,
        "model.resolution": resolution,
        "model.factor": factor,
        "model.latent_channels": latent_channels,
        "model.bottleneck": bottleneck,
        "model.attention": attention,
        "model.base_channels": base_channels,
        "train.batch_size": batch_size,
        "optim.lr": lr,
        "train.max_steps": max_steps,
        "train.minutes": minutes,
        "train.seed": seed,
        "train.device": device,
        "train.threads": threads,
        "train.holdout": holdout,
        "train.trackers": log or None,
    }
    from fdm_cli.config.autoencoder import resolve_autoencoder_config
    from fdm_cli.config.files import saved_run_config
    from fdm_cli.training.autoencoder import DEFAULT_RUN_DIR, run_autoencoder_training

    run_dir = out or DEFAULT_RUN_DIR
    saved = saved_run_config(run_dir) if resume else None
    cfg = resolve_autoencoder_config(flags, set_ or [], saved)
    console = Console(highlight=False, soft_wrap=True)
    if dry_run:
        print_autoencoder_dry_run(cfg, run_dir, console)
        return
    result = run_autoencoder_training(cfg, run_dir, resume, console, progress, None, overwrite)
    if result.interrupted:
        raise typer.Exit(130)


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


def print_autoencoder_dry_run(cfg: AutoencoderTrainConfig, run_dir: Path, console: Console) -> None:
    """The resolved config as YAML, then one comment line with the model's size and latent."""
    from fdm_models import Autoencoder

    params = sum(p.numel() for p in Autoencoder(cfg.model).parameters())
    console.print(cfg.to_yaml(), end="", markup=False, highlight=False)
    console.print(
        f"# Autoencoder {params / 1e6:.2f}M parameters, latent "
        f"{'x'.join(map(str, cfg.model.latent_shape))} ({cfg.model.bottleneck}); RUN_DIR {run_dir}",
        markup=False,
    )
