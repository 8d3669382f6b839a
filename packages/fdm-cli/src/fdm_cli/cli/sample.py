"""`fdm sample`, `fdm super-resolve` and `fdm deblur`: a trained model's samples, and images
restored by starting its sampler at an intermediate stage: flags checked here, the work done by
the API (`fdm_cli.api.generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from fdm_cli.cli.console import cli_errors
from fdm_cli.cli.options import (
    DeviceOpt,
    EmaOpt,
    EtaOpt,
    FromStageOpt,
    ModelArg,
    Opt,
    OutFolderOpt,
    OverwriteOpt,
    ResizeOpt,
    RestoreSeedOpt,
    RestoreStepsOpt,
    StartTOpt,
    ThreadsOpt,
)
from fdm_cli.config.choices import SamplerName
from fdm_cli.errors import UserError

if TYPE_CHECKING:
    from fdm_core import FDMProcess, SamplerConfig


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
    compile: Annotated[bool, Opt(help="torch.compile each stage's step (one graph each).")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate samples (a grid or one PNG each) and optionally a stage strip."""
    from fdm_cli.api import generate as api
    from fdm_cli.artifacts.outputs import check_outputs, model_inputs
    from fdm_cli.artifacts.pictures import sample_paths, save_images, save_png
    from fdm_cli.seeding import check_seeds

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
    loaded = api.load_model(model, ema=ema, device=device)
    seeds = parse_stage_seeds(stage_seeds, loaded.process.num_stages)
    result = api.sample(
        loaded,
        num,
        steps=steps,
        sampler=sampler,
        eta=eta,
        seed=seed,
        stage_seeds=seeds,
        batch_size=batch_size,
        threads=threads,
        compile=compile,
    )
    console, note = Console(highlight=False, soft_wrap=True), steps_note(loaded.process, config)
    if out_dir is not None:
        paths = save_images(result.x, out_dir, first_index=0)
        console.print(f"wrote {len(paths)} samples to {out_dir}/ from {loaded.description}{note}")
    else:
        grid = api.make_grid(result)
        save_png(grid, targets[0])
        console.print(
            f"wrote {num} samples ({grid.width}x{grid.height}) to {targets[0]} from "
            f"{loaded.description}{note}"
        )
    if strip is not None:
        save_png(api.stage_strip(loaded, result, strip_rows), strip)
        console.print(f"wrote stage strip to {strip}")


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
    _restore("super-resolve", **options)


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
    _restore("deblur", **options)


def _restore(
    task: str,
    *,
    model: Path,
    images: list[Path],
    out: Path,
    from_stage: int | None,
    start_t: float | None,
    resize: bool,
    steps: int,
    eta: float,
    seed: int,
    ema: bool,
    device: str,
    overwrite: bool,
) -> None:
    """`fdm super-resolve` / `fdm deblur` from their flags (the same options): the images and
    a side-by-side comparison (the input in data space, then the result) in `out`."""
    from fdm_cli.api import generate as api
    from fdm_cli.artifacts.outputs import check_outputs, model_inputs
    from fdm_cli.artifacts.pictures import save_png
    from fdm_cli.seeding import check_seeds

    sampler_config(steps, "ddim", eta)
    check_seeds(seed, len(images))
    names = [p.stem for p in images]
    if len(set(names)) != len(names):
        raise UserError("two input images share a file name; outputs would overwrite each other")
    targets = [out / f"{n}{suffix}.png" for n in names for suffix in ("", "-compare")]
    check_outputs(targets, overwrite, [*images, *model_inputs(model)])
    loaded = api.load_model(model, ema=ema, device=device)
    restore = api.super_resolve if task == "super-resolve" else api.deblur
    options = {"from_stage": from_stage, "start_t": start_t, "resize": resize}
    results = restore(loaded, images, steps=steps, eta=eta, seed=seed, **options)
    console = Console(highlight=False, soft_wrap=True)
    for path, result in zip(images, results, strict=True):
        save_png(result.image, out / f"{path.stem}.png")
        save_png(result.comparison, out / f"{path.stem}-compare.png")
        console.print(f"{path} (stage {result.stage}) -> {out / (path.stem + '.png')}")


def sampler_config(steps: int, sampler: str, eta: float | None) -> SamplerConfig:
    """--steps, --sampler (ddim or ddpm) and --eta as fdm-core's SamplerConfig, which
    validates them (before any file is read)."""
    from fdm_core import SamplerConfig

    if sampler == "ddpm" and eta not in (None, 1.0):
        raise UserError(f"--sampler ddpm means eta = 1; for eta = {eta} use --sampler ddim")
    return SamplerConfig(steps=steps, eta=1.0 if sampler == "ddpm" else (eta or 0.0))


def steps_note(process: FDMProcess, config: SamplerConfig) -> str:
    """What the sampler runs when it is not `config.steps`, else "": every stage takes at least
    one step (docs/design.md §7.2 (E28)), so --steps under the number of stages runs one step
    per stage (``--steps 1`` on 3 stages runs 3)."""
    from fdm_core import steps_per_stage

    per_stage = steps_per_stage(process, config)
    if config.steps_per_stage is not None or sum(per_stage) == config.steps:
        return ""
    return (
        f" with {sum(per_stage)} sampler steps, one per stage (--steps {config.steps} is fewer "
        f"than the model's {len(per_stage)} stages)"
    )


def parse_stage_seeds(text: str | None, num_stages: int) -> dict[int, int]:
    """``--stage-seeds "0=7,2=3"`` -> {0: 7, 2: 3}; stages must exist in the model."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        stage, sep, seed = item.strip().partition("=")
        if not sep or not stage.strip().isdigit() or not seed.strip().lstrip("-").isdigit():
            raise UserError(f"--stage-seeds expects stage=seed pairs like 0=7,2=3, got {item!r}")
        k = int(stage)
        if k >= num_stages:
            raise UserError(
                f"--stage-seeds: stage {k} does not exist; this model has stages "
                f"0..{num_stages - 1}"
            )
        out[k] = int(seed)
    return out
