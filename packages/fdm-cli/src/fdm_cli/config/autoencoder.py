"""`AutoencoderTrainConfig`: everything `fdm train-autoencoder` needs, one pydantic model.

Sections: ``model`` (fdm-models' `AutoencoderConfig`), ``data``
(`fdm_cli.config.train.DataConfig`, the same as `fdm train`'s), ``optim`` and ``train`` (the
sections both trainers share, `fdm_cli.config.base`, with the autoencoder's defaults and
options). A run's config is resolved by `resolve_autoencoder_config` in one order, with the
layering helpers of `fdm_cli.config.train`:

    DEFAULTS (or the saved config of a run being resumed) < flags (--lr, ...) < --set k=v

``model.in_channels`` always follows the data (`fdm_cli.data.dataset.probe_channels`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, ValidationError

from fdm_cli.config.base import MAX_BATCH, AdamWConfig, BatchSize, LoopOptions, TrainingConfig
from fdm_cli.config.files import refuse_withheld_source
from fdm_cli.config.train import BUDGET_FLAGS, DataConfig, apply_flags
from fdm_cli.data.dataset import probe_channels
from fdm_cli.errors import UserError, format_validation_error
from fdm_models import AutoencoderConfig

# `fdm train-autoencoder` with no flags: a 32x32 -> 4x8x8 KL autoencoder on the embedded
# Fashion-MNIST, sized to reach a held-out PSNR above 24 dB in 3 minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "model": {
        "resolution": 32,
        "factor": 4,
        "latent_channels": 4,
        "base_channels": 16,
        "bottleneck": "kl",
    },
    "data": {"source": "fashion-mnist"},
    "optim": {},
    "train": {"minutes": 3.0},
}


class AutoencoderOptim(AdamWConfig):
    """The shared AdamW schedule with the autoencoder's defaults (no EMA)."""

    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    warmup_steps: int = Field(100, ge=0, description="linear learning-rate warm-up")


class AutoencoderTrainOptions(LoopOptions):
    """The shared loop options plus held-out images, the latent-scale fit and evaluation."""

    batch_size: BatchSize = Field(64, description=f"images per step (<= {MAX_BATCH})")
    seed: int = Field(0, ge=0, description="seeds init, data order and the posterior noise")
    holdout: int = Field(
        500, ge=0, description="the last N images of the dataset: never trained on, evaluated"
    )
    scale_images: int = Field(
        2000, gt=0, description="training images the latent shift and scale are fitted on"
    )
    show: int = Field(32, gt=0, description="held-out images in the reconstruction grid")
    eval_batch_size: BatchSize = Field(256, description="images per batch when evaluating")
    checkpoint_every: int = Field(500, gt=0, description="checkpoint every N steps")


class AutoencoderTrainConfig(TrainingConfig):
    """Everything `fdm train-autoencoder` needs (what --dry-run prints and RUN_DIR keeps)."""

    model: AutoencoderConfig
    data: DataConfig = Field(default_factory=DataConfig)
    optim: AutoencoderOptim = Field(default_factory=AutoencoderOptim)
    train: AutoencoderTrainOptions


def resolve_autoencoder_config(
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    saved: dict[str, Any] | None = None,
) -> AutoencoderTrainConfig:
    """DEFAULTS (or `saved`, the config of a run being resumed) < `flags` (dotted key -> value,
    None = not given; a step or time budget replaces the other) < ``--set key=value``
    `overrides`. ``model.in_channels`` follows the data. A command or URL data source that
    `saved_run_config` withheld must be given again. Invalid input: a UserError."""
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    if all(key in given for key in BUDGET_FLAGS):
        raise UserError("`max_steps` and `minutes` are alternatives; give one")
    raw = json.loads(json.dumps(saved if saved is not None else DEFAULTS))
    apply_flags(raw, given, overrides)
    refuse_withheld_source(raw)  # a command or URL from the run folder, not given again
    try:
        data = DataConfig.model_validate(raw.get("data", {}))
    except ValidationError as exc:
        raise UserError(f"invalid config: {format_validation_error(exc, 'data')}") from None
    channels = probe_channels(data.source, None if data.channels == "auto" else data.channels)
    if not isinstance(raw.get("model"), dict):
        raise UserError("invalid config: model must be a section (a mapping)")
    raw["model"]["in_channels"] = channels
    try:
        return AutoencoderTrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"invalid config: {format_validation_error(exc)}") from None
