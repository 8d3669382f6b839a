"""Conditional generation without retraining: super-resolution and deblurring (docs/design.md
§7.4 (E30)).

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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from fdm_cli.artifacts.pictures import make_grid, upscale
from fdm_cli.data.images import image_channels, open_image, pil_to_tensor
from fdm_cli.errors import UserError
from fdm_cli.generation.sampling import LoadedModel, generate
from fdm_core import Boundary, SamplerConfig, Start

Task = Literal["super-resolve", "deblur"]
ImageInput = str | Path | Image.Image  # an image file, or an image already opened


@dataclass
class Condition:
    label: str | Path  # the file, or "image i" for an image given opened
    stage: int
    signal: torch.Tensor  # (C, H, W) in [-1, 1], the stage signal


@dataclass
class Restored:
    """One restored image: the stage its input was read as, the result ``(1, C, H, W)`` in
    [-1, 1], and as pictures the result and a comparison (the input in data space, up-scaled,
    left of the result)."""

    stage: int
    x: torch.Tensor
    image: Image.Image
    comparison: Image.Image


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
    model: LoadedModel,
    source: ImageInput,
    stage: int | None,
    resize: bool,
    task: str,
    label: str | None = None,
) -> Condition:
    """Read `source` (a file, or an opened image called `label`) as the signal of `stage`
    (inferred from its size when None).

    The size and channels must match that stage unless `resize` (resize + convert) is given.
    """
    shapes = model.process.stage_shapes
    if isinstance(source, Image.Image):
        im, path = source, label or "the image"
    else:
        im, path = open_image(Path(source)), Path(source)
    width, height = im.size
    channels = shapes[0][0]
    if stage is None:
        matches = [k for k in image_stages(model)[1:] if tuple(shapes[k][1:]) == (height, width)]
        if len(matches) != 1:
            why = "several stages have that size" if matches else "no stage has that size"
            raise UserError(
                f"{path} is {width}x{height}: {why} (stages {_stages_text(model)}); pass "
                f"`from_stage` k{' and `resize=True`' if not matches else ''}"
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
                f"{_shape_text(target)} (stages {_stages_text(model)}); pass `resize=True` "
                "to resize it, or `from_stage` k for a stage of that size"
            )
        im = im.resize((target[2], target[1]), Image.Resampling.BICUBIC)
    gray = _is_gray(im)
    if channels == 1 and not gray and not resize:
        raise UserError(
            f"{path} is a colour image but the model is grayscale (1 channel); "
            "pass `resize=True` to convert it"
        )
    if channels == 3 and im.mode not in ("RGB", "RGBA") and not resize:
        raise UserError(
            f"{path} is grayscale ({im.mode}) but the model expects RGB (3 channels); "
            "pass `resize=True` to convert it"
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
        raise UserError(f"`from_stage` {stage}: this model has stages 0..{len(b) - 2}")
    if stage not in image_stages(model):
        raise UserError(
            f"`from_stage` {stage} is an autoencoder latent, not an image; image stages of "
            f"this model: {', '.join(map(str, image_stages(model)))}"
        )
    if stage == 0 and start_t is None:
        raise UserError(
            "`from_stage` 0 is the data itself; give `from_stage` >= 1, or "
            "`start_t` > 0 to re-noise and re-sample it"
        )
    if start_t is not None and not b[stage] <= start_t <= b[stage + 1]:
        raise UserError(
            f"`start_t` {start_t}: stage {stage} spans t in [{b[stage]:.4g}, {b[stage + 1]:.4g}]"
        )


def make_start(conditions: list[Condition], start_t: float | None) -> Start:
    stage = conditions[0].stage
    return Start(stage, torch.stack([c.signal for c in conditions]), start_t)


def restore_images(
    model: LoadedModel,
    task: Task,
    images: Sequence[ImageInput],
    sampler: SamplerConfig,
    device: torch.device | str,
    from_stage: int | None = None,
    start_t: float | None = None,
    resize: bool = False,
    seed: int = 0,
) -> list[Restored]:
    """`fdm super-resolve` / `fdm deblur` on `model`: every image is read and checked against
    the model first, then each is restored on its own (noise seed ``seed + i`` for image i) by
    starting the sampler at its stage, at `start_t` (default the stage's start)."""
    check_task(model, task)
    stage = from_stage if from_stage is not None else default_stage(model, task)
    if stage is not None:
        check_start(model, stage, start_t)
    conditions = [
        load_condition(model, im, stage, resize, task, f"image {i}") for i, im in enumerate(images)
    ]
    for c in conditions:
        check_start(model, c.stage, start_t)
    size = model.process.config.resolution
    out = []
    for i, c in enumerate(conditions):
        result = generate(
            model, range(i, i + 1), seed, sampler, device=device, start=make_start([c], start_t)
        )
        shown = upscale(model.process.to_data_space(c.signal[None], c.stage), size)
        image, comparison = make_grid(result.x, padding=0), make_grid(_stack(shown, result.x))
        out.append(Restored(c.stage, result.x, image, comparison))
    return out


def _stack(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.float().cpu().clamp(-1, 1) for x in xs])
