"""`TrainingConfig`: what the configs of `fdm train` and `fdm train-autoencoder` share.

Both hold an AdamW schedule (``optim``, an `AdamWConfig`) and a training loop's budget, device,
seeding and checkpoints (``train``, `LoopOptions`), and are written to RUN_DIR/config.yaml and
into every checkpoint the same way (`TrainingConfig.to_dict`). The shared training loop
(`fdm_cli.training.trainer`) reads a run's config through this type only. The f-DM config is
`fdm_cli.config.train.TrainConfig`, the autoencoder's
`fdm_cli.config.autoencoder.AutoencoderTrainConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fdm_cli.config.choices import Device, TrackerName
from fdm_cli.seeding import MAX_SEED


class Section(BaseModel):
    """A config section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


Beta = Annotated[float, Field(ge=0, lt=1)]
MAX_BATCH = 1 << 16  # images in one batch: checked before anything is allocated
BatchSize = Annotated[int, Field(gt=0, le=MAX_BATCH)]


class AdamWConfig(Section):
    """AdamW with linear warm-up, then constant or cosine decay, and gradient clipping."""

    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[Beta, Beta] = Field((0.9, 0.99), description="AdamW betas, each in [0, 1)")
    warmup_steps: int = Field(200, ge=0, description="linear learning-rate warm-up")
    decay: Literal["constant", "cosine"] = Field(
        "cosine", description="after warm-up: constant, or cosine to 10% over the step/time budget"
    )
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm (0: off)")


NONFINITE_LIMIT = 20  # train.nonfinite=skip: this many non-finite batches in a row still stop


class LoopOptions(Section):
    """A training loop's length, device, seeding and checkpoints (shared by `fdm train` and
    `fdm train-autoencoder`)."""

    batch_size: BatchSize = Field(
        64, description=f"global batch (split across DDP ranks), at most {MAX_BATCH}"
    )
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    minutes: float | None = Field(
        None, gt=0, description="stop after this much training wall time (summed over resumes)"
    )
    device: Device = Field("auto", description="auto (cuda if available), cpu, cuda or cuda:N")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seeds init, data order and every noise draw"
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    log_every: int = Field(10, gt=0, description="progress/CSV flush interval in steps")
    checkpoint_every: int = Field(500, gt=0, description="checkpoint + sample images every N steps")
    keep_checkpoints: int = Field(2, gt=0, description="keep the last K checkpoints")
    trackers: list[TrackerName] = Field(
        [],
        description="also send the logged scalars, the checkpoint images and the evaluation "
        "metrics to these trackers: tensorboard (RUN_DIR/tensorboard), wandb (offline with "
        "WANDB_MODE=offline); rank 0 only (fdm_cli.training.tracking)",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a NaN/inf loss or gradient norm: 'stop' training (the last checkpoint is "
        "kept), or 'skip' the batch with a warning (no update; max_steps counts good steps; "
        f"{NONFINITE_LIMIT} such batches in a row stop training; fdm_cli.training.nonfinite)",
    )

    @model_validator(mode="after")
    def _budget(self) -> LoopOptions:
        if self.max_steps is None and self.minutes is None:
            raise ValueError("set train.max_steps or train.minutes (or both: whichever ends first)")
        return self


SHARED_SECTIONS: dict[str, type[Section]] = {"optim": AdamWConfig, "train": LoopOptions}


class TrainingConfig(Section):
    """A trainer's whole resolved configuration: ``optim`` (an `AdamWConfig`) and ``train`` (a
    `LoopOptions`), which each subclass narrows, and the subclass's own sections.

    The subclasses declare ``optim`` and ``train`` themselves, where they stand in their
    config.yaml (pydantic puts a base class's fields first, which would reorder the keys of
    every saved config); they are declared here for the type checker, and a subclass that lacks
    either, or declares it of another type, is refused when it is defined.
    """

    if TYPE_CHECKING:
        optim: AdamWConfig
        train: LoopOptions

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, section in SHARED_SECTIONS.items():
            field = cls.model_fields.get(name)
            declared = field.annotation if field is not None else None
            if not (isinstance(declared, type) and issubclass(declared, section)):
                raise TypeError(
                    f"{cls.__name__}.{name} must be declared: {section.__name__} or a subclass"
                )

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-compatible values (what a checkpoint stores)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as RUN_DIR/config.yaml holds it (keys in declaration order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
