"""The `fdm` command (``python -m fdm_cli``): train, train-autoencoder, sample, eval,
super-resolve, deblur, data pack, plugins, env.

Exact commands::

    fdm train                                  # fdm-ds on embedded Fashion-MNIST (CPU, < 10 min)
    fdm train-autoencoder                      # 32 -> 4x8x8 autoencoder in runs/autoencoder
    fdm train --preset fdm-vae                 # f-DM-VAE with that autoencoder (ldm: the baseline)
    fdm train --preset ddpm --max-steps 2000 --out runs/ddpm
    fdm train config.yaml --set process.interpolation=false --dry-run
    fdm sample runs/fdm-ds --num 64 --out grid.png --strip strip.png
    fdm eval runs/fdm-ds --num 2000 --out metrics.json    # FID/KID against the test split
    fdm super-resolve runs/fdm-ds low.png --out sr/
    fdm deblur runs/fdm-blur-g blurred.png --out sharp/
    fdm data pack photos/ --out shards/ --resolution 64   # WebDataset shards for --data
    fdm train --preset fdm-ds-64 --data 'shards/shard-{000000..000009}.tar' --device cuda
    fdm plugins --json
    fdm env

User errors (bad flag, bad config, missing or corrupt file, invalid image, an output that
exists without ``--overwrite``) print one line and exit with status 2; ``--debug`` (anywhere on
the command line) or ``FDM_DEBUG=1`` shows the traceback instead. RELIABILITY.md lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .choices import DEVICE_HELP, Precision, PresetName, SamplerName, check_device
from .data_cmd import data_app
from .errors import CommandGroup, UserError, cli_errors, set_debug

app = typer.Typer(
    name="fdm",
    cls=CommandGroup,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="f-DM: multi-stage diffusion with progressive signal transformations "
    "(Gu et al., ICLR 2023).",
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """f-DM command-line interface."""
    set_debug(debug)


Opt = typer.Option

# Options shared by several commands.
ModelArg = Annotated[Path, typer.Argument(help="RUN_DIR, MODEL_DIR or checkpoint file.")]
EmaOpt = Annotated[bool, Opt("--ema/--no-ema", help="EMA or raw weights.")]
DeviceOpt = Annotated[str, Opt(help=DEVICE_HELP, parser=check_device)]
JsonOpt = Annotated[bool, Opt("--json", help="Machine-readable output.")]
StrictOpt = Annotated[
    bool | None, Opt("--strict/--lenient", help="Refuse (or skip) unreadable images in --data.")
]
OverwriteOpt = Annotated[bool, Opt(help="Replace existing output files (never the inputs).")]
ThreadsOpt = Annotated[
    int | None, Opt(help="CPU threads; default: adapted to the machine's load (fdm_cli.threads).")
]
OutFolderOpt = Annotated[Path, Opt(help="Output folder.")]
FromStageOpt = Annotated[
    int | None, Opt(help="Stage the input is a signal of (default: by size / most blurred).")
]
StartTOpt = Annotated[
    float | None, Opt(help="Start time in that stage (default tau_k; later = more freedom).")
]
ResizeOpt = Annotated[bool, Opt(help="Resize/convert the input to the stage's size and channels.")]
RestoreStepsOpt = Annotated[int, Opt(help="Sampler steps for the whole range.")]
EtaOpt = Annotated[float, Opt(help="DDIM stochasticity in [0, 1].")]
RestoreSeedOpt = Annotated[int, Opt(help="Image i uses noise seed seed + i.")]


# ---------------------------------------------------------------------------------------------
# train


@app.command()
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
    max_steps: Annotated[int | None, Opt(help="Train this many steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Train this many minutes (default 7.5).")] = None,
    batch_size: Annotated[int | None, Opt(help="Global batch size.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    device: Annotated[str | None, Opt(help=DEVICE_HELP)] = None,
    precision: Annotated[Precision | None, Opt(help="bf16 (UNet under autocast) or fp32.")] = None,
    compile_: Annotated[bool | None, Opt("--compile/--no-compile", help="Compile the loss")] = None,
    seed: Annotated[int | None, Opt(help="Seed of init, data order and noise.")] = None,
    threads: ThreadsOpt = None,
    resume: Annotated[bool, Opt(help="Continue from RUN_DIR/checkpoints/latest.")] = False,
    overwrite: Annotated[bool, Opt(help="Start a new run in a non-empty RUN_DIR.")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="key=value override, repeatable.")] = None,
    dry_run: Annotated[bool, Opt(help="Print the resolved config and exit.")] = False,
    progress: Annotated[bool, Opt(help="Show the progress bar.")] = True,
) -> None:
    """Train an f-DM (or the DDPM baseline) and write checkpoints, samples and losses to RUN_DIR."""
    from .config import resolve_train_config
    from .configfile import saved_run_config
    from .presets import DEFAULT_PRESET

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
    }
    base_dir = run_dir if saved is not None else None  # a saved config names run-relative assets
    cfg = resolve_train_config(config, preset, flags, set_ or [], saved, base_dir)
    if out is None and saved is None:
        run_dir = Path("runs") / (cfg.preset or "custom")
    console = Console(highlight=False, soft_wrap=True)
    if dry_run:
        from .train import print_dry_run

        print_dry_run(cfg, run_dir, console)
        return
    from .train import run_training

    result = run_training(
        cfg, run_dir, resume=resume, console=console, show_progress=progress, overwrite=overwrite
    )
    if result.interrupted:
        raise typer.Exit(130)


@app.command("train-autoencoder")
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
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    max_steps: Annotated[int | None, Opt(help="Train this many steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Train this many minutes (default 3).")] = None,
    seed: Annotated[int | None, Opt(help="Seed of init, data order and noise.")] = None,
    device: Annotated[str | None, Opt(help=DEVICE_HELP)] = None,
    threads: ThreadsOpt = None,
    holdout: Annotated[
        int | None, Opt(help="Last N images: never trained on (default 500).")
    ] = None,
    resume: Annotated[bool, Opt(help="Continue from RUN_DIR/checkpoints/latest.")] = False,
    overwrite: Annotated[bool, Opt(help="Start a new run in a non-empty RUN_DIR.")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="key=value override, repeatable.")] = None,
    dry_run: Annotated[bool, Opt(help="Print the resolved config and exit.")] = False,
    progress: Annotated[bool, Opt(help="Show the progress bar.")] = True,
) -> None:
    """Train the autoencoder a latent f-DM stage runs in; write model/, PSNR and reconstructions."""
    from .train_autoencoder import command

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
    }
    result = command(flags, set_ or [], out, resume, overwrite, dry_run, progress)
    if result is not None and result.interrupted:
        raise typer.Exit(130)


# ---------------------------------------------------------------------------------------------
# sample, super-resolve, deblur


@app.command()
@cli_errors
def sample(
    model: ModelArg,
    num: Annotated[int, Opt(help="Number of samples.")] = 64,
    steps: Annotated[int, Opt(help="Sampler steps (split across stages).")] = 100,
    sampler: Annotated[SamplerName, Opt(help="ddim (eta from --eta) or ddpm (eta 1).")] = "ddim",
    eta: Annotated[float | None, Opt(help="DDIM stochasticity in [0, 1].")] = None,
    seed: Annotated[int, Opt(help="Sample i uses noise seed seed + i.")] = 0,
    stage_seeds: Annotated[str | None, Opt(help="Shared noise per stage, e.g. 0=7,2=3.")] = None,
    batch_size: Annotated[int, Opt(help="Images per sampler call.")] = 64,
    out: Annotated[Path | None, Opt(help="Grid PNG (default samples.png).")] = None,
    out_dir: Annotated[Path | None, Opt(help="Write one PNG per sample here instead.")] = None,
    strip: Annotated[Path | None, Opt(help="Also write a stage strip PNG.")] = None,
    strip_rows: Annotated[int, Opt(help="Samples shown in the stage strip.")] = 8,
    ema: EmaOpt = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate samples (a grid or one PNG each) and optionally a stage strip."""
    from .distributed import resolve_device
    from .images import make_grid, sample_paths, save_images, save_png, stage_strip
    from .outputs import check_outputs, model_inputs
    from .sample import (
        generate,
        load_model,
        parse_stage_seeds,
        sampler_config,
        steps_note,
        strip_columns,
        strip_tile,
    )
    from .seeding import check_seeds
    from .threads import configure_threads

    if out is not None and out_dir is not None:
        raise UserError("--out (one grid) and --out-dir (one PNG per sample) are alternatives")
    for name, value in (("--num", num), ("--batch-size", batch_size), ("--strip-rows", strip_rows)):
        if value <= 0:
            raise UserError(f"{name} {value}: must be positive")
    check_seeds(seed, num)
    config = sampler_config(steps, sampler, eta)
    targets = [out or Path("samples.png")] if out_dir is None else sample_paths(out_dir, num)
    for group, flag in ((targets, "--out-dir" if out_dir else "--out"), ([strip], "--strip")):
        check_outputs([p for p in group if p], overwrite, model_inputs(model), flag)
    dev = resolve_device(device)
    loaded = load_model(model, ema=ema, device=dev)
    seeds = parse_stage_seeds(stage_seeds, loaded.process.num_stages)
    tuner = configure_threads(threads, tune=dev.type == "cpu")
    result = generate(loaded, range(num), seed, config, seeds, batch_size, dev, threads=tuner)
    console, note = Console(highlight=False, soft_wrap=True), steps_note(loaded.process, config)
    if out_dir is not None:
        paths = save_images(result.x, out_dir, first_index=0)
        console.print(f"wrote {len(paths)} samples to {out_dir}/ from {loaded.description}{note}")
    else:
        grid = make_grid(result.x)
        save_png(grid, targets[0])
        console.print(
            f"wrote {num} samples ({grid.width}x{grid.height}) to {targets[0]} from "
            f"{loaded.description}{note}"
        )
    if strip is not None:
        tile = strip_tile(loaded.process.config.resolution)
        columns, labels = strip_columns(loaded.process, result, strip_rows, tile)
        save_png(stage_strip(columns, labels, tile=tile), strip)
        console.print(f"wrote stage strip to {strip}")


@app.command("eval")
@cli_errors
def eval_(
    model: Annotated[Path | None, typer.Argument(help="RUN_DIR, MODEL_DIR or checkpoint.")] = None,
    num: Annotated[int | None, Opt(help="Images per set (MODEL: required; --real: 2000).")] = None,
    steps: Annotated[int, Opt(help="Sampler steps (split across stages).")] = 100,
    eta: EtaOpt = 0.0,
    seed: Annotated[int, Opt(help="Sample i uses noise seed seed + i.")] = 0,
    batch_size: Annotated[int, Opt(help="Images per sampler / network call.")] = 64,
    ref: Annotated[str, Opt(help="fashion-mnist, IDX files or an image folder.")] = "fashion-mnist",
    ref_split: Annotated[str, Opt(help="test or train: split of --ref and --real.")] = "test",
    real: Annotated[list[str] | None, Opt(help="Two real sets instead of MODEL.")] = None,
    out: Annotated[Path, Opt(help="Metrics JSON file.")] = Path("metrics.json"),
    ema: EmaOpt = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
    progress: Annotated[bool, Opt(help="Show progress bars.")] = True,
) -> None:
    """FID, KID, precision and recall of samples against real images, or of two real sets."""
    options = dict(locals())  # the options above, by name
    from .evaluate import command

    command(**options)


@app.command("super-resolve")
@cli_errors
def super_resolve(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Low-resolution input images.")],
    out: OutFolderOpt,
    from_stage: FromStageOpt = None,
    start_t: StartTOpt = None,
    resize: ResizeOpt = False,
    steps: RestoreStepsOpt = 100,
    eta: EtaOpt = 0.0,
    seed: RestoreSeedOpt = 0,
    ema: EmaOpt = True,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Up-sample images with a down-sampling f-DM by starting the sampler at their stage."""
    options = dict(locals())  # the options above, by name
    from .restore import command

    command("super-resolve", **options)


@app.command()
@cli_errors
def deblur(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Blurred input images.")],
    out: OutFolderOpt,
    from_stage: FromStageOpt = None,
    start_t: StartTOpt = None,
    resize: ResizeOpt = False,
    steps: RestoreStepsOpt = 100,
    eta: EtaOpt = 0.0,
    seed: RestoreSeedOpt = 0,
    ema: EmaOpt = True,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Sharpen images with a blur f-DM by starting the sampler at a blurred stage."""
    options = dict(locals())  # the options above, by name
    from .restore import command

    command("deblur", **options)


# ---------------------------------------------------------------------------------------------
# plugins, env


@app.command()
@cli_errors
def plugins(
    as_json: JsonOpt = False,
) -> None:
    """List every registered transform and schedule with the distribution that provides it."""
    from .envinfo import plugin_table, print_plugins, report

    report(plugin_table(), as_json, print_plugins)


@app.command()
@cli_errors
def env(
    as_json: JsonOpt = False,
) -> None:
    """Versions and capabilities: python, torch, triton, xformers, CUDA, attention, plugins."""
    from .envinfo import environment, print_environment, report

    report(environment(), as_json, print_environment)


app.add_typer(data_app, name="data")  # fdm data pack


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``--debug`` is accepted anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[1:]:  # after the sub-command: move it to where the root option lives
        args = ["--debug", *(a for a in args if a != "--debug")]
    app(args=args, prog_name="fdm")


if __name__ == "__main__":
    main()
