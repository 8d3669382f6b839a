"""pydantic v2 configs for the f-DM process and the sampler (docs/design.md §10.3).

Components (transforms, schedules) are given as registry specs ``{"name": ..., **params}``; the
config validates names against the plugin registry and parameters against each component's own
pydantic model, so a bad config fails here with the field and the allowed values in the message.
Validate against another registry than the default with
``ProcessConfig.model_validate(data, context={"registry": registry})``; relative asset paths
(an autoencoder's folder, docs/design.md §10.5) resolve against ``context={"base_dir": DIR}``.
Every transform is checked against its declared boundary contract when it is built
(`TransformContractError`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .assets import resolve_spec_assets
from .registry import BUILTIN_DISTRIBUTIONS, PluginError, Registry, get_registry
from .schedules import TERMINAL_ALPHA_MAX, NoiseSchedule, StageSchedule
from .testing import verify_contract
from .transform import Shape, SignalTransform

logger = logging.getLogger(__name__)


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
    latent: ComponentSpec | None = Field(
        None,
        description="a transform into the space every stage lives in (an autoencoder: latent "
        "diffusion, the LDM baseline); null: the data space",
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
    plugins: dict[str, str] = Field(
        default_factory=dict,
        description="written by fdm: the distribution and version that provided each component "
        "('transform:haar': 'fdm-haar 0.1.0'), so a missing plugin is named with what to install",
    )
    _base_dir: Path | None = PrivateAttr(None)  # where relative asset paths resolve

    @field_validator("stage_schedule", "noise_schedule", "latent", mode="before")
    @classmethod
    def _schedule_spec(cls, value: Any) -> Any:
        return _spec(value)

    @field_validator("transforms", mode="before")
    @classmethod
    def _transform_specs(cls, value: Any) -> Any:
        return [_spec(v) for v in value] if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _check_components(self, info: ValidationInfo) -> ProcessConfig:
        context = info.context or {}
        base_dir = context.get("base_dir")
        self._base_dir = Path(base_dir) if base_dir is not None else None
        registry = context.get("registry") or get_registry()
        resolve_components(self, registry)
        self.plugins = _record_sources(self, registry)
        if self.parameterization == "eps" and self.transforms and self.interpolation:
            raise ValueError(
                "parameterization 'eps' needs an identity mean path (no transforms, or "
                "interpolation=false); use 'v' or 'x0' for an interpolating f-DM chain"
            )
        if self.parameterization != "x0" and self.weighting != "truncated":
            raise ValueError(
                f"weighting {self.weighting!r} weights the x0 loss (docs/design.md (E20)); "
                f"parameterization {self.parameterization!r} is unweighted, so it would change "
                "nothing: set parameterization=x0 with it, or leave weighting at 'truncated'"
            )
        return self


class Components(NamedTuple):
    """The built pieces of a `ProcessConfig`."""

    transforms: list[SignalTransform]  # f_1..f_K
    noise_schedule: NoiseSchedule
    stage_schedule: StageSchedule
    stage_shapes: list[Shape]  # per-sample shapes of x^0..x^K
    latent: SignalTransform | None  # data -> the space of x^0 (None: x^0 is the data)


def resolve_components(config: ProcessConfig, registry: Registry) -> Components:
    """Build transforms and schedules and check the shape chain and each transform's boundary
    contract. Raises ValueError naming the offending field."""
    shape = (config.channels, config.resolution, config.resolution)
    latent = None
    if config.latent is not None:
        latent, shape = _transform(registry, config, config.latent, "latent", shape, "the data")
    transforms, shapes = [], [shape]
    for i, spec in enumerate(config.transforms):
        transform, shape = _transform(
            registry, config, spec, f"transforms[{i}]", shape, f"stage {i}"
        )
        transforms.append(transform)
        shapes.append(shape)
    noise = _build(registry, "noise_schedule", config.noise_schedule, "noise_schedule", config)
    if (alpha := noise.terminal_alpha()) > TERMINAL_ALPHA_MAX:
        raise ValueError(
            f"noise_schedule ({config.noise_schedule.name}): alpha(1) = {alpha:.3g} leaves signal "
            f"at t = 1, where sampling starts from pure noise; it must be at most "
            f"{TERMINAL_ALPHA_MAX}: lower its log-SNR at t = 1 (cosine: logsnr_min; linear_beta: "
            "larger betas or num_train_steps)"
        )
    stage = _build(registry, "stage_schedule", config.stage_schedule, "stage_schedule", config)
    try:
        stage.boundaries(len(transforms) + 1)
    except ValueError as exc:
        raise ValueError(f"stage_schedule: {exc}") from None
    return Components(transforms, noise, stage, shapes, latent)


def _transform(
    registry: Registry,
    config: ProcessConfig,
    spec: ComponentSpec,
    field: str,
    shape: Shape,
    what: str,
) -> tuple[SignalTransform, Shape]:
    """Build one transform (asset paths resolved), check its input shape and its contract."""
    try:
        factory = registry.get("transform", spec.name).factory
        spec = ComponentSpec(**resolve_spec_assets(spec.as_dict(), factory, config._base_dir))
    except KeyError as exc:
        hint = _install_hint(config, "transform", spec.name)
        raise ValueError(f"{field}: {exc.args[0]}{hint}") from None
    except (ValueError, PluginError) as exc:
        raise ValueError(f"{field} ({spec.name}): {exc}") from None
    transform = _build(registry, "transform", spec, field, config)
    try:
        out = tuple(transform.out_shape(shape))
    except ValueError as exc:
        raise ValueError(
            f"{field} ({spec.name}) cannot take {what} of shape {shape}: {exc}"
        ) from None
    verify_contract(transform, shape, f"{field} ({spec.name})")
    return transform, out


def _build(
    registry: Registry, kind: str, spec: ComponentSpec, field: str, config: ProcessConfig
) -> Any:
    try:
        return registry.build(kind, spec.as_dict())
    except KeyError as exc:
        raise ValueError(
            f"{field}: {exc.args[0]}{_install_hint(config, kind, spec.name)}"
        ) from None
    except (ValueError, TypeError, PluginError) as exc:
        raise ValueError(f"{field} ({spec.name}): {_one_line(exc)}") from None


def _components(config: ProcessConfig) -> list[tuple[str, ComponentSpec]]:
    specs = [("transform", spec) for spec in config.transforms]
    if config.latent is not None:
        specs.append(("transform", config.latent))
    return [
        *specs,
        ("noise_schedule", config.noise_schedule),
        ("stage_schedule", config.stage_schedule),
    ]


def _record_sources(config: ProcessConfig, registry: Registry) -> dict[str, str]:
    """'kind:name' -> 'distribution version' of every component `config` uses; one warning
    per external plugin whose installed version differs from the one recorded in `config`."""
    sources = {}
    for kind, spec in _components(config):
        entry = registry.get(kind, spec.name)
        key, now = f"{kind}:{spec.name}", f"{entry.distribution} {entry.version}"
        recorded = config.plugins.get(key)
        if recorded and recorded != now and entry.distribution not in BUILTIN_DISTRIBUTIONS:
            logger.warning("%s was made with %s; %s is installed", key, recorded, now)
        sources[key] = now
    return sources


def _install_hint(config: ProcessConfig, kind: str, name: str) -> str:
    recorded = config.plugins.get(f"{kind}:{name}")
    if not recorded:
        return ""
    return f" (this config was made with {recorded}: pip install {recorded.split()[0]})"


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
    compile: bool = Field(
        False, description="torch.compile each stage's step: one static-shape graph per stage"
    )

    @field_validator("steps_per_stage")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(n <= 0 for n in value):
            raise ValueError(f"steps_per_stage must be positive step counts, got {value}")
        return value
