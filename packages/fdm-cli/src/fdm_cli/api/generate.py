"""A trained model from Python: load it, sample grids and stage strips, and restore images
(super-resolution and deblurring) by starting its sampler at an intermediate stage.

Example::

    import fdm_cli

    model = fdm_cli.load_model("runs/fdm-ds")              # RUN_DIR, MODEL_DIR or checkpoint
    samples = fdm_cli.sample(model, 64, steps=100, seed=0)  # image i from noise seed 0 + i
    fdm_cli.make_grid(samples).save("grid.png")
    fdm_cli.stage_strip(model, samples).save("strip.png")   # the paper's Figure 1
    [sr] = fdm_cli.super_resolve(model, ["low8x8.png"])     # sr.image, sr.comparison
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from pydantic import ValidationError

from fdm_cli.api.common import DeviceLike, check_eta, check_positive, check_seed, device_of
from fdm_cli.artifacts import pictures
from fdm_cli.errors import UserError, format_validation_error
from fdm_cli.generation import restore, sampling
from fdm_cli.generation.restore import ImageInput, Restored
from fdm_cli.generation.sampling import LoadedModel, Samples
from fdm_cli.runtime.threads import configure_threads
from fdm_core import SamplerConfig

__all__ = [
    "LoadedModel",
    "Restored",
    "Samples",
    "deblur",
    "load_model",
    "make_grid",
    "sample",
    "stage_strip",
    "super_resolve",
]


def load_model(
    path: str | os.PathLike[str], *, ema: bool = True, device: DeviceLike = "auto"
) -> LoadedModel:
    """A trained model for sampling, in eval mode on `device` ("auto": CUDA when available):
    a RUN_DIR (its latest checkpoint), a checkpoint file, or a MODEL_DIR (``RUN_DIR/model``,
    EMA weights only). `ema` picks the EMA weights (docs/design.md §6.4), else the raw ones.
    A folder's relative asset paths (an autoencoder) resolve inside it (§10.5)."""
    return sampling.load_model(Path(path), ema=ema, device=device_of(device))


def _sampler(steps: int, sampler: str, eta: float | None, compile: bool = False) -> SamplerConfig:
    check_positive(steps=steps)
    if sampler not in ("ddim", "ddpm"):
        raise UserError(f"`sampler` {sampler!r}: allowed: 'ddim', 'ddpm'")
    if eta is not None:
        check_eta(eta)
    if sampler == "ddpm" and eta not in (None, 1.0):
        raise UserError(f"`sampler` 'ddpm' means `eta` 1; for `eta` {eta} use 'ddim'")
    try:
        eta = 1.0 if sampler == "ddpm" else (eta or 0.0)
        return SamplerConfig(steps=steps, eta=eta, compile=compile)
    except ValidationError as exc:
        raise UserError(f"invalid sampler settings: {format_validation_error(exc)}") from None


def _stage_seeds(model: LoadedModel, stage_seeds: Mapping[int, int] | None) -> dict[int, int]:
    seeds = dict(stage_seeds or {})
    stages = model.process.num_stages
    for stage, seed in seeds.items():
        if not isinstance(stage, int) or not 0 <= stage < stages:
            raise UserError(
                f"`stage_seeds`: stage {stage!r} does not exist; stages 0..{stages - 1}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"`stage_seeds`: the seed of stage {stage} must be an integer")
    return seeds


def sample(
    model: LoadedModel,
    num: int,
    *,
    steps: int = 100,
    sampler: str = "ddim",
    eta: float | None = None,
    seed: int = 0,
    stage_seeds: Mapping[int, int] | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    compile: bool = False,
) -> Samples:
    """`num` samples, as `fdm sample` draws them (docs/design.md §7): image i from the noise
    seeded ``seed + i``, so the images do not depend on `batch_size`. `steps` are split over
    the stages, at least one each (§7.2 (E28)); `sampler` "ddim" (stochasticity `eta`, default
    0) or "ddpm" (eta 1). `stage_seeds` ({stage: seed}) shares one noise among all images in
    those stages (§8). On the model's device; on the CPU `threads` pins torch's thread count,
    None adapts it to the machine's load while sampling. `compile` runs each stage's step as
    one ``torch.compile`` graph (§7.3; worth it for many images on a GPU, where the launches of
    a small step dominate; the first batch pays the compilation). ``samples.x`` is
    ``(num, C, H, W)`` in [-1, 1] on the CPU; ``samples.stage_predictions`` feed `stage_strip`."""
    check_positive(num=num, batch_size=batch_size)
    check_seed(seed, num)
    config = _sampler(steps, sampler, eta, compile)
    seeds = _stage_seeds(model, stage_seeds)
    device = model.device
    tuner = configure_threads(threads, tune=device.type == "cpu")
    indices = range(num)
    return sampling.generate(model, indices, seed, config, seeds, batch_size, device, threads=tuner)


def make_grid(
    images: Samples | torch.Tensor, ncol: int | None = None, padding: int = 2
) -> Image.Image:
    """Images in [-1, 1] ``(N, C, H, W)`` (or `Samples`) tiled into one picture, `ncol` per row
    (default: as square as it gets), on a white background (what `fdm sample --out` writes)."""
    x = images.x if isinstance(images, Samples) else images
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not len(x):
        raise UserError("`images`: give Samples or a tensor (N, C, H, W) with N >= 1")
    return pictures.make_grid(x, ncol, padding)


def stage_strip(model: LoadedModel, samples: Samples, rows: int = 8) -> Image.Image:
    """The stage strip of the paper's Figure 1 for the first `rows` samples: one column per
    stage (coarsest first), each stage's last clean prediction in data space, up-scaled with
    nearest neighbour (what `fdm sample --strip` writes)."""
    check_positive(rows=rows)
    tile = sampling.strip_tile(model.process.config.resolution)
    columns, labels = sampling.strip_columns(model.process, samples, rows, tile)
    return pictures.stage_strip(columns, labels, tile=tile)


def _restore(
    task: restore.Task,
    model: LoadedModel,
    images: Sequence[ImageInput],
    from_stage: int | None,
    start_t: float | None,
    resize: bool,
    steps: int,
    eta: float,
    seed: int,
) -> list[Restored]:
    if isinstance(images, str | os.PathLike | Image.Image):
        images = [images]
    images = list(images)
    if not images:
        raise UserError("`images`: give at least one image (a file or a PIL image)")
    check_seed(seed, len(images))
    config = _sampler(steps, "ddim", eta)
    return restore.restore_images(
        model, task, images, config, model.device, from_stage, start_t, resize, seed
    )


def super_resolve(
    model: LoadedModel,
    images: Sequence[ImageInput],
    *,
    from_stage: int | None = None,
    start_t: float | None = None,
    resize: bool = False,
    steps: int = 100,
    eta: float = 0.0,
    seed: int = 0,
) -> list[Restored]:
    """Up-sample low-resolution images (files or PIL images) with a down-sampling f-DM, as
    `fdm super-resolve` does (docs/design.md §7.4 (E30)): each image is the signal of the stage
    of its size (or `from_stage`; `resize` converts it to that stage's size and channels), and
    the sampler starts there at `start_t` (default the stage's start; later = more freedom),
    DDIM with `steps` over the whole range and `eta`, image i from noise seed ``seed + i``."""
    return _restore("super-resolve", model, images, from_stage, start_t, resize, steps, eta, seed)


def deblur(
    model: LoadedModel,
    images: Sequence[ImageInput],
    *,
    from_stage: int | None = None,
    start_t: float | None = None,
    resize: bool = False,
    steps: int = 100,
    eta: float = 0.0,
    seed: int = 0,
) -> list[Restored]:
    """Sharpen blurred images with a blur f-DM, as `fdm deblur` does: each image is read as the
    signal of `from_stage` (default the most blurred stage); otherwise as `super_resolve`."""
    return _restore("deblur", model, images, from_stage, start_t, resize, steps, eta, seed)
