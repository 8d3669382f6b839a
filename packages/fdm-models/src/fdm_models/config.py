"""``UNetConfig``: the validated configuration of the multi-stage UNet (docs/design.md §6.1).

Level l of the UNet runs at the stage-0 resolution divided by 2**l with
``base_channels * channel_mult[l]`` channels. Every stage shape (C, H, W) must sit at one level:
its (H, W) equals that level's resolution; C is free (each stage has its own input and output
heads), so latent stages with other channel counts are fine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from .attention import AttentionBackend

StageShape = tuple[PositiveInt, PositiveInt, PositiveInt]

_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"base_channels": 32, "num_res_blocks": 1, "num_heads": 2},
    "small": {"base_channels": 64, "num_res_blocks": 2, "num_heads": 4},
    "base": {"base_channels": 128, "num_res_blocks": 2, "num_heads": 4},
}


class UNetConfig(BaseModel):
    """Architecture of :class:`fdm_models.unet.MultiStageUNet`.

    ``stage_shapes[k]`` is the (C, H, W) shape of the stage-k signal x^k; stage 0 is the data at
    full resolution. ``attention_levels`` are level indices (0 = full resolution) whose blocks
    carry self-attention; the middle block always does. ``attention`` names the backend
    (``FDM_ATTENTION`` overrides it at run time).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage_shapes: list[StageShape] = Field(min_length=1)
    base_channels: PositiveInt = 64
    channel_mult: tuple[PositiveInt, ...] = Field(default=(1, 2, 2, 2), min_length=1)
    num_res_blocks: PositiveInt = 2
    attention_levels: tuple[int, ...] = (1, 2)
    num_heads: PositiveInt = 4
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    attention: AttentionBackend = "auto"
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _check_architecture(self) -> UNetConfig:
        levels = len(self.channel_mult)
        _, height, width = self.stage_shapes[0]
        step = 2 ** (levels - 1)
        if height % step or width % step:
            raise ValueError(
                f"stage_shapes[0] = {self.stage_shapes[0]}: H and W must be divisible by "
                f"2**(len(channel_mult) - 1) = {step} so every level halves them exactly; use "
                "fewer levels in channel_mult or another resolution"
            )
        allowed = self.level_resolutions
        for k, shape in enumerate(self.stage_shapes):
            if tuple(shape[1:]) not in allowed:
                raise ValueError(
                    f"stage_shapes[{k}] = {tuple(shape)}: its (H, W) matches no UNet level; "
                    f"allowed resolutions (level 0..{levels - 1}): {allowed}. Each level "
                    "halves H and W, so a stage must be stage 0 shrunk by 1, 2, 4, ... in both "
                    "sides: make the transform produce one of these (e.g. down-sampling by 2 "
                    "or 4 in H and W), or add levels to model.channel_mult for smaller stages"
                )
        for level in self.attention_levels:
            if not 0 <= level < levels:
                raise ValueError(
                    f"attention_levels contains {level}; allowed level indices are "
                    f"0..{levels - 1} (one per channel_mult entry)"
                )
        for level in {*self.attention_levels, levels - 1}:
            channels = self.level_channels(level)
            if channels % self.num_heads:
                raise ValueError(
                    f"num_heads = {self.num_heads} must divide the {channels} channels of "
                    f"attention level {level} (base_channels * channel_mult[{level}])"
                )
        return self

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def num_stages(self) -> int:
        return len(self.stage_shapes)

    @property
    def level_resolutions(self) -> list[tuple[int, int]]:
        """(H, W) of every level, level 0 first."""
        _, height, width = self.stage_shapes[0]
        return [(height >> level, width >> level) for level in range(self.num_levels)]

    @property
    def stage_levels(self) -> list[int]:
        """The level at which each stage enters the encoder and leaves the decoder."""
        resolutions = self.level_resolutions
        return [resolutions.index(tuple(shape[1:])) for shape in self.stage_shapes]

    def level_channels(self, level: int) -> int:
        """Channels of the residual blocks at ``level``."""
        return self.base_channels * self.channel_mult[level]

    @classmethod
    def for_stages(
        cls, stage_shapes: list[tuple[int, int, int]], size: str = "small", **overrides: Any
    ) -> UNetConfig:
        """A config for ``stage_shapes`` with sensible depth, widths and attention placement.

        ``size`` is ``tiny`` (base 32 channels, 1 residual block per level), ``small`` (64, 2)
        or ``base`` (128, 2). Levels go down to 4 px for inputs up to 32 px, 8 px beyond, and
        deeper if a stage is smaller; multipliers are (1, 2, 2, ...) up to four levels and
        (1, 1, 2, 2, 4, ...) beyond; attention sits at the 16 and 8 px levels. ``overrides``
        replace any field.
        """
        if size not in _SIZES:
            raise ValueError(f"size {size!r} is not one of {', '.join(_SIZES)}")
        _, height, width = stage_shapes[0]
        full = min(height, width)
        smallest = min(min(shape[1], shape[2]) for shape in stage_shapes)
        lowest = min(smallest, 4 if full <= 32 else 8)
        levels = 1
        while (full >> levels) >= lowest and height % (2**levels) == 0 and width % (2**levels) == 0:
            levels += 1
        if levels <= 4:
            mult: tuple[int, ...] = (1,) + (2,) * (levels - 1)
        else:
            mult = (1, 1, 2, 2) + (4,) * (levels - 4)
        attention_levels = tuple(lv for lv in range(levels) if (full >> lv) in (16, 8))
        fields: dict[str, Any] = {
            **_SIZES[size],
            "stage_shapes": [tuple(shape) for shape in stage_shapes],
            "channel_mult": mult,
            "attention_levels": attention_levels,
        }
        return cls(**{**fields, **overrides})
