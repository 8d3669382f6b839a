"""fdm-core: the f-DM multi-stage diffusion process (Gu et al., ICLR 2023). See docs/design.md
§1."""

from .assets import AssetError, AssetPath, bundle_assets, content_digest, inside_folder
from .checkpoint import (
    CheckpointError,
    atomic_write,
    load_state,
    load_tensors,
    save_state,
    save_tensors,
    verify_digest,
    with_digest,
)
from .compiling import COMPILE_BACKEND_ENV, COMPILE_MODE_ENV, compile_options
from .config import ComponentSpec, ProcessConfig, SamplerConfig
from .hookspecs import Register, hookimpl
from .hostreads import HostReads
from .loss import (
    LossBatch,
    LossOutput,
    batch_loss,
    diffusion_loss,
    draw_loss_batch,
    draw_noise,
    merge_outputs,
    stage_loss,
    stratified_counts,
    stratified_times,
)
from .noise import StageNoise
from .process import Denoiser, FDMProcess, PackedDenoiser, StageBatch, packs_stages
from .registry import PluginError, Registry, get_registry, load_registry, reset_registry
from .sampler import Callback, SampleOutput, Start, ddim_step, sample, steps_per_stage
from .schedules import NoiseSchedule, StageSchedule
from .testing import TransformConformance, check_transform
from .transform import (
    Boundary,
    Coefficient,
    Shape,
    SignalTransform,
    TransformContractError,
    TransformParams,
)

__all__ = [
    "COMPILE_BACKEND_ENV",
    "COMPILE_MODE_ENV",
    "AssetError",
    "AssetPath",
    "Boundary",
    "Callback",
    "CheckpointError",
    "Coefficient",
    "ComponentSpec",
    "Denoiser",
    "FDMProcess",
    "HostReads",
    "LossBatch",
    "LossOutput",
    "NoiseSchedule",
    "PackedDenoiser",
    "PluginError",
    "ProcessConfig",
    "Register",
    "Registry",
    "SampleOutput",
    "SamplerConfig",
    "Shape",
    "SignalTransform",
    "StageBatch",
    "StageNoise",
    "StageSchedule",
    "Start",
    "TransformConformance",
    "TransformContractError",
    "TransformParams",
    "atomic_write",
    "batch_loss",
    "bundle_assets",
    "check_transform",
    "compile_options",
    "content_digest",
    "ddim_step",
    "diffusion_loss",
    "draw_loss_batch",
    "draw_noise",
    "get_registry",
    "hookimpl",
    "inside_folder",
    "load_registry",
    "load_state",
    "load_tensors",
    "merge_outputs",
    "packs_stages",
    "reset_registry",
    "sample",
    "save_state",
    "save_tensors",
    "stage_loss",
    "steps_per_stage",
    "stratified_counts",
    "stratified_times",
    "verify_digest",
    "with_digest",
]
__version__ = "0.1.0"
