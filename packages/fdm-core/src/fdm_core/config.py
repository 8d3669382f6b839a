"""pydantic v2 configs for the f-DM process and the sampler (docs/design.md §10.3).

Components (transforms, schedules) are given as registry specs ``{"name": ..., **params}``; the
config validates names against the plugin registry and parameters against each component's own
pydantic model, so a bad config fails here with the field and the allowed values in the message.
Validate against another registry than the default with
``ProcessConfig.model_validate(data, context={"registry": registry})``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .registry import Registry, get_registry
from .schedules import TERMINAL_ALPHA_MAX, NoiseSchedule, StageSchedule
from .transform import Shape, SignalTransform


class ComponentSpec(BaseModel):
    """A registry entry and its parameters, e.g. ``{"name": "downsample", "factor": 2}``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _spec(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class ProcessConfig(BaseModel):
    """Everything that defines an f-DM process: data shape, transform chain, schedules, loss."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(32, gt=0, description="data height and width in pixels")
    channels: int = Field(1, gt=0, description="data channels (1 grayscale, 3 RGB)")
    transforms: list[ComponentSpec] = Field(
        default_factory=list, description="f_1..f_K; K transforms make K + 1 stages ([] is DDPM)"
    )
    stage_schedule: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="equal"), description="boundaries tau_1..tau_K"
    )
    noise_schedule: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="cosine"), description="base log-SNR lambda(t)"
    )
    gamma: float = Field(
        1.0, ge=0.0, le=1.0, description="resolution-aware rescaling; 1: f-DM, 0: ablation"
    )
    interpolation: bool = Field(
        True, description="interpolate the mean inside a stage (ablation: off)"
    )
    parameterization: Literal["v", "x0", "eps"] = Field(
        "v", description="network output: v against the stage-start signal, x0, or eps"
    )
    weighting: Literal["snr", "min_snr", "truncated"] = Field(
        "truncated", description="x0 loss weight: snr, min(snr, min_snr_gamma), max(snr, 1)"
    )
    min_snr_gamma: float = Field(5.0, gt=0.0, description="gamma of the min_snr weighting")

    @field_validator("stage_schedule", "noise_schedule", mode="before")
    @classmethod
    def _schedule_spec(cls, value: Any) -> Any:
        return _spec(value)

    @field_validator("transforms", mode="before")
    @classmethod
    def _transform_specs(cls, value: Any) -> Any:
        return [_spec(v) for v in value] if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _check_components(self, info: ValidationInfo) -> ProcessConfig:
        registry = (info.context or {}).get("registry") or get_registry()
        resolve_components(self, registry)
        if self.parameterization == "eps" and self.transforms and self.interpolation:
            raise ValueError(
                "parameterization 'eps' needs an identity mean path (no transforms, or "
                "interpolation=false); use 'v' or 'x0' for an interpolating f-DM chain"
            )
        return self


class Components(NamedTuple):
    """The built pieces of a `ProcessConfig`."""

    transforms: list[SignalTransform]  # f_1..f_K
    noise_schedule: NoiseSchedule
    stage_schedule: StageSchedule
    stage_shapes: list[Shape]  # per-sample shapes of x^0..x^K


def resolve_components(config: ProcessConfig, registry: Registry) -> Components:
    """Build transforms and schedules and check the shape chain. Raises ValueError naming the
    offending field."""
    transforms = []
    shape = (config.channels, config.resolution, config.resolution)
    shapes = [shape]
    for i, spec in enumerate(config.transforms):
        transform = _build(registry, "transform", spec, f"transforms[{i}]")
        try:
            shape = tuple(transform.out_shape(shape))
        except ValueError as exc:
            raise ValueError(
                f"transforms[{i}] ({spec.name}) cannot take stage {i} of shape {shapes[-1]}: {exc}"
            ) from None
        transforms.append(transform)
        shapes.append(shape)
    noise = _build(registry, "noise_schedule", config.noise_schedule, "noise_schedule")
    if (alpha := noise.terminal_alpha()) > TERMINAL_ALPHA_MAX:
        raise ValueError(
            f"noise_schedule ({config.noise_schedule.name}): alpha(1) = {alpha:.3g} leaves signal "
            f"at t = 1, where sampling starts from pure noise; it must be at most "
            f"{TERMINAL_ALPHA_MAX}: lower its log-SNR at t = 1 (cosine: logsnr_min; linear_beta: "
            "larger betas or num_train_steps)"
        )
    stage = _build(registry, "stage_schedule", config.stage_schedule, "stage_schedule")
    try:
        stage.boundaries(len(transforms) + 1)
    except ValueError as exc:
        raise ValueError(f"stage_schedule: {exc}") from None
    return Components(transforms, noise, stage, shapes)


def _build(registry: Registry, kind: str, spec: ComponentSpec, field: str) -> Any:
    try:
        return registry.build(kind, spec.as_dict())
    except KeyError as exc:
        raise ValueError(f"{field}: {exc.args[0]}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{field} ({spec.name}): {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        return "; ".join(parts)
    return str(exc)


class SamplerConfig(BaseModel):
    """The DDIM-family sampler (docs/design.md §7): eta 0 is DDIM, 1 ancestral DDPM."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, gt=0, description="total steps, split across stages by their length")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="stochasticity; 0 DDIM, 1 DDPM")
    clip: float | None = Field(
        None, gt=0.0, description="clamp clean predictions to [-clip, clip] (1 for pixel data)"
    )
    steps_per_stage: list[int] | None = Field(
        None, description="explicit steps for stage 0..K (overrides the proportional split)"
    )

    @field_validator("steps_per_stage")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(n <= 0 for n in value):
            raise ValueError(f"steps_per_stage must be positive step counts, got {value}")
        return value
