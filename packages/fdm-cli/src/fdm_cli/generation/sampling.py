"""Sampling from a trained f-DM: unconditional grids, stage strips, super-resolution, deblurring.

Exact commands::

    fdm sample runs/fdm-ds --num 64 --steps 100 --out grid.png --strip strip.png
    fdm sample runs/fdm-ds/model --num 16 --stage-seeds 2=3 --out-dir samples/
    fdm super-resolve runs/fdm-ds small.png --out sr/            # 8x8 or 16x16 input
    fdm deblur runs/fdm-blur-g blurred.png --out deblurred/

A model is a RUN_DIR (its latest checkpoint; EMA weights unless ``--no-ema``), a single
checkpoint file, or a MODEL_DIR written by ``save_pretrained`` (``RUN_DIR/model``). Sample i is
drawn from `StageNoise` seeded ``seed + i``, so images do not depend on the batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.pictures import upscale
from fdm_cli.errors import UserError, format_validation_error
from fdm_cli.runtime.threads import ThreadTuner
from fdm_core import (
    FDMProcess,
    ProcessConfig,
    SamplerConfig,
    StageNoise,
    Start,
    sample,
)
from fdm_models import MultiStageUNet, UNetConfig, from_pretrained, load_pretrained_config


@dataclass
class LoadedModel:
    """A trained f-DM ready to sample: its process, its UNet (eval mode, on its device) and
    where it came from (the path, the step, EMA or raw weights)."""

    process: FDMProcess
    unet: MultiStageUNet
    description: str

    @property
    def device(self) -> torch.device:
        """The device the UNet's weights are on."""
        return next(self.unet.parameters()).device


# What fdm train writes into a MODEL_DIR's config.json (save_pretrained adds the first two).
MODEL_DIR_KEYS = {"_class_name", "_fdm_models_version", "unet", "process", "fdm"}


def _process_from(config: dict, source: Path, base_dir: Path) -> FDMProcess:
    """The process of a model; its relative asset paths resolve against `base_dir` (the model
    or run folder, docs/design.md §10.5)."""
    try:
        return FDMProcess(ProcessConfig.model_validate(config, context={"base_dir": base_dir}))
    except ValidationError as exc:
        message = format_validation_error(exc)
        raise UserError(f"{source}: invalid process config: {message}") from None
    except (ValueError, KeyError) as exc:
        raise UserError(f"{source}: invalid process config: {exc}") from None


def _check_fit(process: FDMProcess, unet: MultiStageUNet, source: Path) -> None:
    """The UNet must have been built for the process's stages (else sampling fails or, worse,
    runs and returns garbage)."""
    ours = [tuple(s) for s in process.stage_shapes]
    theirs = [tuple(s) for s in unet.config.stage_shapes]
    if ours != theirs:
        raise UserError(
            f"{source}: the process has stages {ours} but the UNet was built for {theirs}; "
            "the model files do not belong together"
        )


def load_model(path: Path, ema: bool = True, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a RUN_DIR, a checkpoint file or a MODEL_DIR for sampling (eval mode, on `device`)."""
    if not path.exists():
        raise UserError(f"model not found: {path} (give a RUN_DIR, a MODEL_DIR or a checkpoint)")
    if path.is_dir() and (path / "config.json").is_file():
        if not ema:
            raise UserError(
                f"{path} is a MODEL_DIR holding only the EMA weights; "
                "--no-ema needs a RUN_DIR or a checkpoint file"
            )
        try:
            config = load_pretrained_config(path)
            unet = from_pretrained(path, device=device)
        except ValidationError as exc:
            message = format_validation_error(exc, "unet")
            raise UserError(f"{path / 'config.json'}: invalid model config: {message}") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
        if "process" not in config:
            raise UserError(
                f"{path}/config.json has no 'process' entry: not an f-DM model "
                "directory (write one with fdm train)"
            )
        unknown = sorted(set(config) - MODEL_DIR_KEYS)
        if unknown:
            raise UserError(
                f"{path}/config.json: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(MODEL_DIR_KEYS))}"
            )
        process = _process_from(config["process"], path, path)
        _check_fit(process, unet, path / "config.json")
        return LoadedModel(process, unet, f"{path} (EMA)")
    if path.is_dir():
        file = ckpt.latest_checkpoint(path)
        if file is None:
            raise UserError(
                f"{path} holds no checkpoint (expected "
                f"{ckpt.CHECKPOINTS}/*.safetensors "
                "from fdm train, or config.json + model.safetensors of a MODEL_DIR)"
            )
    else:
        file = path
    state, config = ckpt.load_checkpoint(file, ckpt.SAMPLE_PARTS if ema else ("model", "progress"))
    run_dir = file.parent.parent if file.parent.name == ckpt.CHECKPOINTS else file.parent
    process = _process_from(config.get("process", {}), file, run_dir)
    try:
        unet = MultiStageUNet(UNetConfig.model_validate(config.get("model", {})))
    except ValidationError as exc:
        raise UserError(f"{file}: invalid model config: {format_validation_error(exc)}") from None
    if ema:
        weights = {
            k.removeprefix("shadow."): v for k, v in state["ema"].items() if k.startswith("shadow.")
        }
        weights = {**{k: v for k, v in state["model"].items() if k not in weights}, **weights}
    else:
        weights = state["model"]
    try:
        unet.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(
            f"{file}: weights do not fit the model config: {str(exc).splitlines()[0]}"
        ) from None
    _check_fit(process, unet, file)
    step = state["progress"]["step"]
    return LoadedModel(
        process, unet.to(device).eval(), f"{file} (step {step}, {'EMA' if ema else 'raw'} weights)"
    )


@dataclass
class Samples:
    """Images sampled from a model, and what a stage strip shows of them."""

    x: torch.Tensor  # (N, C, H, W) in data space, on the CPU
    stage_predictions: list[torch.Tensor]  # xhat^k at the end of stage k, for each stage sampled


def generate(
    model: LoadedModel,
    indices: range,
    seed: int,
    sampler: SamplerConfig,
    stage_seeds: dict[int, int] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    start: Start | None = None,
    threads: ThreadTuner | None = None,
) -> Samples:
    """Samples number `indices` (noise seed ``seed + i``), `batch_size` at a time, with each
    stage's last clean prediction (for the stage strip).

    With `start` (its signal holds one row per index), sampling is conditioned on it. A
    `threads` tuner times every sampler step (by stage) and adapts the CPU thread count.
    """
    xs: list[torch.Tensor] = []
    preds: list[list[torch.Tensor]] = []
    lo = indices.start
    stage_end: dict[int, torch.Tensor] = {}

    def keep_last(stage: int, t: float, z: torch.Tensor, clean: torch.Tensor) -> None:
        stage_end[stage] = clean
        if threads is not None:
            threads.tick(stage)

    for first in range(indices.start, indices.stop, batch_size):
        last = min(indices.stop, first + batch_size)
        noise = StageNoise(seeds=torch.arange(seed + first, seed + last), stage_seeds=stage_seeds)
        part = None
        if start is not None:
            part = Start(start.stage, start.signal[first - lo : last - lo].to(device), start.t)
        stage_end.clear()
        if threads is not None:
            threads.pause()  # the batch's setup is not a sampler step
        out = sample(
            model.process,
            model.unet,
            sampler,
            noise=noise,
            start=part,
            device=device,
            callback=keep_last,
        )
        xs.append(out.x.float().cpu())
        preds.append([stage_end[k].float().cpu() for k in sorted(stage_end)])
    if not xs:
        stages = model.process.stage_shapes
        return Samples(torch.empty(0, *stages[0]), [torch.empty(0, *s) for s in stages])
    return Samples(torch.cat(xs), [torch.cat(p) for p in zip(*preds, strict=True)])


def strip_columns(
    process: FDMProcess, samples: Samples, rows: int, tile: int
) -> tuple[list[torch.Tensor], list[str]]:
    """Stage strip columns (coarsest stage first, in data space) and their labels."""
    columns, labels = [], []
    for k in reversed(range(len(samples.stage_predictions))):
        pred = samples.stage_predictions[k][:rows]
        shape = process.stage_shapes[k]
        columns.append(upscale(process.to_data_space(pred, k).clamp(-1, 1), tile))
        latent = shape[0] != process.config.channels  # e.g. an autoencoder's 4x8x8
        labels.append(f"stage {k}\n{'x'.join(map(str, shape if latent else shape[1:]))}")
    return columns, labels


def strip_tile(resolution: int) -> int:
    """Tile size of a stage strip: at least 64 px, an integer multiple of the resolution."""
    return resolution * max(1, math.ceil(64 / resolution))
