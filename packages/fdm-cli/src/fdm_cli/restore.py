"""Conditional generation without retraining: super-resolution and deblurring (docs/design.md §7.4
(E30)).

A low-resolution image y *is* a stage-j signal x^j of a down-sampling f-DM, and a blurred image
is a stage-j signal of a blur f-DM. Starting the sampler in stage j at t = tau_j (or a later
``--start-t``, which trades fidelity for freedom) from z = alpha y + sigma xi and running it down
to t = 0 produces a full-resolution / sharp image consistent with y.

Exact commands::

    fdm super-resolve runs/fdm-ds/model low8x8.png low16x16.png --out sr/
    fdm super-resolve runs/fdm-ds photo.png --out sr/ --from-stage 2 --resize
    fdm deblur runs/fdm-blur-g blurred.png --out sharp/ --from-stage 2 --start-t 0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console

from fdm_core import Boundary, SamplerConfig, Start

from .data import image_channels, open_image, pil_to_tensor
from .distributed import resolve_device
from .errors import UserError
from .images import make_grid, save_png, upscale
from .outputs import check_outputs, model_inputs
from .sample import LoadedModel, generate, load_model, sampler_config
from .seeding import check_seeds


@dataclass
class Condition:
    path: Path
    stage: int
    signal: torch.Tensor  # (C, H, W) in [-1, 1], the stage signal


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[2]}" + ("" if shape[0] == 1 else f"x{shape[0]}")


def _stages_text(model: LoadedModel) -> str:
    return ", ".join(f"{k}: {_shape_text(s)}" for k, s in enumerate(model.process.stage_shapes))


def _is_gray(im: Image.Image) -> bool:
    """A grayscale mode (`image_channels`), or colour channels that are all equal."""
    if image_channels(im) == 1:
        return True
    rgb = im.convert("RGB")
    r, g, b = rgb.split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def load_condition(
    model: LoadedModel, path: Path, stage: int | None, resize: bool, task: str
) -> Condition:
    """Read `path` as the signal of `stage` (inferred from its size when None).

    The size and channels must match that stage unless `resize` (resize + convert) is given.
    """
    shapes = model.process.stage_shapes
    im = open_image(path)
    width, height = im.size
    channels = shapes[0][0]
    if stage is None:
        matches = [k for k in image_stages(model)[1:] if tuple(shapes[k][1:]) == (height, width)]
        if len(matches) != 1:
            why = "several stages have that size" if matches else "no stage has that size"
            raise UserError(
                f"{path} is {width}x{height}: {why} (stages {_stages_text(model)}); pass "
                f"--from-stage k{' and --resize' if not matches else ''}"
                + (
                    " (or use fdm deblur for a blur model)"
                    if task == "super-resolve" and matches
                    else ""
                )
            )
        stage = matches[0]
    target = shapes[stage]
    if (height, width) != tuple(target[1:]):
        if not resize:
            raise UserError(
                f"{path} is {width}x{height} but stage {stage} of this model is "
                f"{_shape_text(target)} (stages {_stages_text(model)}); pass --resize "
                "to resize it, or --from-stage k for a stage of that size"
            )
        im = im.resize((target[2], target[1]), Image.Resampling.BICUBIC)
    gray = _is_gray(im)
    if channels == 1 and not gray and not resize:
        raise UserError(
            f"{path} is a colour image but the model is grayscale (1 channel); "
            "pass --resize to convert it"
        )
    if channels == 3 and im.mode not in ("RGB", "RGBA") and not resize:
        raise UserError(
            f"{path} is grayscale ({im.mode}) but the model expects RGB (3 channels); "
            "pass --resize to convert it"
        )
    signal = pil_to_tensor(im, channels) / 127.5 - 1.0
    return Condition(path, stage, signal)


def image_stages(model: LoadedModel) -> list[int]:
    """The stages whose signal is an image: reached from the data through `projection` and
    `identity` transforms only. An autoencoder's latent (a `renoise` boundary) is not one, and
    in latent diffusion no stage is."""
    process = model.process
    if process.latent is not None:
        return []
    stages = [0]
    for k, transform in enumerate(process.transforms, start=1):
        if transform.boundary == Boundary.RENOISE:
            break
        stages.append(k)
    return stages


def check_task(model: LoadedModel, task: str) -> None:
    """super-resolve needs image stages smaller than the data; deblur needs same-size ones."""
    process = model.process
    if process.latent is not None:
        raise UserError(
            f"this model runs in an autoencoder's latent space (latent diffusion): no stage "
            f"holds an image, so {task} has no meaning for it"
        )
    if len(process.stage_shapes) == 1:
        raise UserError(
            f"this model has a single stage (K = 0, a plain DDPM): {task} needs a multi-stage f-DM"
        )
    images = image_stages(model)
    if len(images) == 1:
        raise UserError(
            f"stage 1 of this model is the latent of its {process.transforms[0].name} "
            f"transform (a renoise boundary), not an image: {task} needs a down-sampling or "
            "blur model"
        )
    shapes = [process.stage_shapes[k] for k in images]
    smaller = any(tuple(s[1:]) != tuple(shapes[0][1:]) for s in shapes[1:])
    if task == "super-resolve" and not smaller:
        raise UserError(
            f"every stage of this model is {_shape_text(shapes[0])} (a blur model): "
            "super-resolve needs a down-sampling model; use fdm deblur"
        )
    if task == "deblur" and all(tuple(s) != tuple(shapes[0]) for s in shapes[1:]):
        raise UserError(
            f"this model's stages are {_stages_text(model)}: deblur needs a blur "
            "model (stages of the data's size); use fdm super-resolve"
        )


def default_stage(model: LoadedModel, task: str) -> int | None:
    """deblur: the most blurred stage of the data's size; super-resolve: inferred per image."""
    if task != "deblur":
        return None
    shapes = model.process.stage_shapes
    return max(k for k, s in enumerate(shapes) if tuple(s) == tuple(shapes[0]))


def check_start(model: LoadedModel, stage: int, start_t: float | None) -> None:
    b = model.process.boundaries
    if not 0 <= stage < len(model.process.stage_shapes):
        raise UserError(f"--from-stage {stage}: this model has stages 0..{len(b) - 2}")
    if stage not in image_stages(model):
        raise UserError(
            f"--from-stage {stage} is an autoencoder latent, not an image; image stages of "
            f"this model: {', '.join(map(str, image_stages(model)))}"
        )
    if stage == 0 and start_t is None:
        raise UserError(
            "--from-stage 0 is the data itself; give --from-stage >= 1, or "
            "--start-t > 0 to re-noise and re-sample it"
        )
    if start_t is not None and not b[stage] <= start_t <= b[stage + 1]:
        raise UserError(
            f"--start-t {start_t}: stage {stage} spans t in [{b[stage]:.4g}, {b[stage + 1]:.4g}]"
        )


def make_start(conditions: list[Condition], start_t: float | None) -> Start:
    stage = conditions[0].stage
    return Start(stage, torch.stack([c.signal for c in conditions]), start_t)


def command(
    task: str,
    *,
    model: Path,
    images: list[Path],
    out: Path,
    steps: int,
    eta: float,
    device: str,
    **options: Any,
) -> None:
    """`fdm super-resolve` / `fdm deblur` from their flags (the same options): `restore` with
    a DDIM sampler on the resolved device."""
    config = sampler_config(steps, "ddim", eta)
    console = Console(highlight=False, soft_wrap=True)
    restore(task, model, images, out, config, resolve_device(device), console, **options)


def restore(
    task: str,
    model: Path,
    images: list[Path],
    out: Path,
    config: SamplerConfig,
    dev: torch.device,
    console: Console,
    from_stage: int | None = None,
    start_t: float | None = None,
    resize: bool = False,
    seed: int = 0,
    ema: bool = True,
    overwrite: bool = False,
) -> None:
    """`fdm super-resolve` / `fdm deblur`: for each image, its result and a side-by-side
    comparison (input shown in data space above the result) in `out`."""
    check_seeds(seed, len(images))
    names = [p.stem for p in images]
    if len(set(names)) != len(names):
        raise UserError("two input images share a file name; outputs would overwrite each other")
    targets = [out / f"{n}{suffix}.png" for n in names for suffix in ("", "-compare")]
    check_outputs(targets, overwrite, [*images, *model_inputs(model)])
    loaded = load_model(model, ema=ema, device=dev)
    check_task(loaded, task)
    stage = from_stage if from_stage is not None else default_stage(loaded, task)
    if stage is not None:
        check_start(loaded, stage, start_t)
    conditions = [load_condition(loaded, p, stage, resize, task) for p in images]
    for c in conditions:
        check_start(loaded, c.stage, start_t)
    size = loaded.process.config.resolution
    for i, c in enumerate(conditions):
        result = generate(
            loaded, range(i, i + 1), seed, config, device=dev, start=make_start([c], start_t)
        )
        save_png(make_grid(result.x, padding=0), out / f"{c.path.stem}.png")
        shown = upscale(loaded.process.to_data_space(c.signal[None], c.stage), size)
        save_png(make_grid(_stack(shown, result.x)), out / f"{c.path.stem}-compare.png")
        console.print(f"{c.path} (stage {c.stage}) -> {out / (c.path.stem + '.png')}")


def _stack(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.float().cpu().clamp(-1, 1) for x in xs])
