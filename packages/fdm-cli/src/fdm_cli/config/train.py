"""`TrainConfig`: everything `fdm train` needs, one pydantic model (EDM-style grouped options).

A run's config is resolved in one order, by one function (`resolve_train_config`, used by
``fdm train``, the tests and the DDP worker), and every layer goes through the same models:

    presets.BASE < --preset P < CONFIG.yaml/json < flags (--lr, --batch-size, ...) < --set k=v

``process`` is fdm-core's `ProcessConfig`; ``model`` is fdm-models' `UNetConfig` whose
``stage_shapes`` are always derived from the process; ``process.channels`` follows the data
(``data.channels``). The other groups are declared and documented below, ``optim`` and
``train`` on the sections both trainers share (`fdm_cli.config.base`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fdm_cli.config.base import (
    MAX_BATCH,
    AdamWConfig,
    BatchSize,
    LoopOptions,
    Section,
    TrainingConfig,
)
from fdm_cli.config.choices import Precision
from fdm_cli.config.files import WITHHELD, read_config_file, refuse_withheld_source
from fdm_cli.config.presets import DEFAULT_PRESET, NO_DATA, deep_merge, preset_dict
from fdm_cli.data.dataset import probe_channels
from fdm_cli.errors import UserError, format_validation_error
from fdm_cli.seeding import MAX_SEED
from fdm_core import ProcessConfig, SamplerConfig
from fdm_models import UNetConfig


class DataConfig(Section):
    """Where the training images come from and how they are shaped (`fdm_cli.data.dataset`)."""

    source: str = Field(
        "fashion-mnist",
        description="'fashion-mnist' (embedded t10k split), a folder of images, IDX files, or "
        "WebDataset tar shards (a brace pattern, a tar, a pipe: URL, an `fdm data pack` folder)",
    )
    channels: Literal["auto", 1, 3] = Field(
        "auto", description="'auto' follows the data (1 if all images are grayscale, else 3)"
    )
    fit: Literal["auto", "pad", "resize"] = Field(
        "auto", description="pad small size differences (28 -> 32) or resize + centre crop"
    )
    hflip: bool = Field(True, description="random horizontal flips (seeded by position)")
    strict: bool = Field(
        False,
        description="refuse unreadable images instead of skipping them (a folder) or replacing "
        "them by the next readable one (tar shards)",
    )
    cache_dir: str | None = Field(
        None,
        description="where folders and IDX files are decoded once for training (default "
        "$FDM_DATA_CACHE, else ~/.cache/fdm/data)",
    )

    @field_validator("source")
    @classmethod
    def _checked_source(cls, value: str) -> str:
        if value.startswith(WITHHELD):  # a run folder's command or URL: see saved_run_config
            refuse_withheld_source({"data": {"source": value}})
        if "\0" in value:
            raise ValueError("a data source cannot contain a NUL character")
        return value


class OptimConfig(AdamWConfig):
    """AdamW (warm-up, decay, clipping) and an EMA of the weights."""

    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the sampling weights")
    ema_warmup: bool = Field(
        True, description="use min(decay, (1 + n) / (10 + n)) so short runs get a useful EMA"
    )


class TrainOptions(LoopOptions):
    """`fdm train`'s loop: precision and the DDP settings besides the shared options."""

    precision: Precision = Field(
        "fp32",
        description="bf16 or fp16 (CUDA only, with loss scaling): the UNet under autocast, the "
        "process math and the loss in fp32",
    )
    grad_accum: int = Field(
        1,
        gt=0,
        description="split each step's batch into this many micro-batches (the same update as "
        "the whole batch: times, weights and noise are drawn for the whole batch)",
    )
    eval_every: int | None = Field(
        None, gt=0, description="score the EMA model (FID, KID, precision, recall) every N steps"
    )
    eval_num: int = Field(1000, ge=4, description="images sampled for each evaluation")
    eval_steps: int = Field(100, gt=0, description="sampler steps of each evaluation (DDIM)")
    eval_ref: str | None = Field(
        None, description="reference images of the evaluation (default: the training data)"
    )
    eval_ref_split: Literal["test", "train"] = Field(
        "test", description="split of an IDX reference (Fashion-MNIST files)"
    )
    keep_best: bool = Field(
        False, description="keep RUN_DIR/model-best, the EMA model with the lowest FID so far"
    )
    compile: bool = Field(
        False, description="torch.compile the loss graph (inductor; $FDM_COMPILE_BACKEND overrides)"
    )
    dist_timeout_s: float = Field(1800.0, gt=0, description="DDP collective timeout in seconds")
    find_unused_parameters: Literal["auto", True, False] = Field(
        "auto", description="DDP flag; auto: on when a rank's batch cannot hold every stage"
    )

    @model_validator(mode="after")
    def _evaluation(self) -> TrainOptions:
        if self.keep_best and self.eval_every is None:
            raise ValueError("train.keep_best needs train.eval_every (the steps to score at)")
        if self.grad_accum > self.batch_size:
            raise ValueError(
                f"train.grad_accum {self.grad_accum} is more than the batch of "
                f"{self.batch_size} images (each micro-batch needs at least one)"
            )
        return self


class SampleOptions(Section):
    """Images written during and after training (grid, stage strip)."""

    num: int = Field(64, gt=0, description="images in the sample grid")
    strip_rows: int = Field(8, gt=0, description="samples (rows) in the stage strip")
    steps: int = Field(100, gt=0, description="sampler steps (split across stages)")
    eta: float = Field(0.0, ge=0, le=1, description="0: DDIM, 1: ancestral DDPM")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sample i uses noise seed seed + i")
    batch_size: BatchSize = Field(64, description=f"images per sampler call (<= {MAX_BATCH})")

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(steps=self.steps, eta=self.eta)


class TrainConfig(TrainingConfig):
    """The whole resolved configuration of a run (what `--dry-run` prints and RUN_DIR keeps);
    the sections it shares with `fdm train-autoencoder` are `fdm_cli.config.base`'s."""

    preset: str | None = Field(DEFAULT_PRESET, description="the preset this config started from")
    process: ProcessConfig
    model: UNetConfig
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainOptions = Field(default_factory=TrainOptions)
    sample: SampleOptions = Field(default_factory=SampleOptions)


# ---------------------------------------------------------------------------------------------
# Building a TrainConfig from layers

BUDGET_FLAGS = ("train.max_steps", "train.minutes")
AUTOENCODER_KEY = "process.autoencoder"  # --autoencoder DIR, or --set process.autoencoder=DIR


def resolve_train_config(
    config_file: Path | None = None,
    preset: str | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    saved: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> TrainConfig:
    """The TrainConfig of a run: the one path from what the user gave to a validated config.

    Layers, each over the one before: presets.BASE < `preset` (default: the config file's own
    ``preset``, else fdm-ds) < `config_file` < `flags` < `overrides`; `saved` (the config of a
    run being resumed) is the base instead when neither a file nor a preset is given. `flags`
    maps dotted keys (``"optim.lr"``) to flag values, None meaning "not given"; a step or time
    budget flag replaces the other budget. `overrides` are ``--set key=value`` strings. The
    data's channels then fix ``process.channels``, the process fixes ``model.stage_shapes``.
    ``process.autoencoder`` (flag or override) sets the folder of every autoencoder transform.
    Relative asset paths resolve against `base_dir` (the run folder of a saved config; default
    the working directory), and must then lie inside it. A command or URL data source of `saved`
    (withheld by `saved_run_config`) must be given again. Anything invalid is a UserError naming
    the field and what is allowed.
    """
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    if all(key in given for key in BUDGET_FLAGS):
        raise UserError(
            "`max_steps` and `minutes` are alternatives; give one (a config file "
            "may set both train.max_steps and train.minutes)"
        )
    raw = build_layers(config_file, preset, saved)
    apply_flags(raw, given, overrides)
    autoencoder = raw.get("process", {}).pop("autoencoder", None)
    if autoencoder is not None:
        set_autoencoder(raw, str(autoencoder))
    refuse_withheld_source(raw)
    try:
        data = DataConfig.model_validate(raw.get("data", {}))
    except ValidationError as exc:
        raise UserError(f"invalid config: {format_validation_error(exc, 'data')}") from None
    if data.source == NO_DATA:
        raise UserError(
            f"preset {raw.get('preset')} has no default data: pass `data` with your own RGB "
            "images (an image folder or IDX files)"
        )
    channels = probe_channels(data.source, None if data.channels == "auto" else data.channels)
    return finalize(raw, channels, base_dir)


def apply_flags(raw: dict[str, Any], given: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """Lay the given flags (dotted keys; a step or time budget replaces the other budget) and
    then the ``--set key=value`` `overrides` over `raw`."""
    for key, value in given.items():
        apply_override(raw, key.split("."), value)
        if key in BUDGET_FLAGS:
            other = BUDGET_FLAGS[1 - BUDGET_FLAGS.index(key)]
            apply_override(raw, other.split("."), None)
    for item in overrides:
        apply_override(raw, *parse_override(item))
    for name, value in raw.items():
        if name != "preset" and not isinstance(value, dict):
            raise UserError(
                f"'{name}' must be a section (a mapping of keys to values), got "
                f"{str(value)[:60]!r}; set one of its keys instead, e.g. "
                f"`overrides` {name}.KEY=VALUE"
            )


def set_autoencoder(raw: dict[str, Any], folder: str) -> None:
    """Point every ``autoencoder`` transform of the process (chain and latent) at `folder`."""
    process = raw.setdefault("process", {})
    chain = process.get("transforms")  # not yet validated: anything a user wrote
    specs = [s for s in [*(chain if isinstance(chain, list) else []), process.get("latent")] if s]
    found = [s for s in specs if isinstance(s, dict) and s.get("name") == "autoencoder"]
    if not found:
        raise UserError(
            f"`autoencoder` {folder}: this process has no autoencoder transform; use "
            "`preset` fdm-vae or ldm, or add {name: autoencoder, path: DIR} to process.transforms"
        )
    for spec in found:
        spec["path"] = folder


def bundle_run_assets(cfg: TrainConfig, folder: Path) -> TrainConfig:
    """`cfg` with the assets of its process (an autoencoder's folder) copied into `folder` and
    named relative to it, so the run is self-contained (docs/design.md §10.5)."""
    from fdm_core import bundle_assets, get_registry

    process = cfg.process
    specs = [spec.as_dict() for spec in process.transforms]
    if process.latent is not None:
        specs.append(process.latent.as_dict())
    factories = [get_registry().get("transform", spec["name"]).factory for spec in specs]
    try:
        bundled = bundle_assets(specs, factories, folder, process._base_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot copy the process's assets into {folder}: {exc}") from None
    if bundled == specs:
        return cfg
    raw = cfg.to_dict()
    if process.latent is not None:
        raw["process"]["latent"] = bundled.pop()
    raw["process"]["transforms"] = bundled
    return TrainConfig.model_validate(raw, context={"base_dir": folder})


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, so 0, false, [1, 2] work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
        raise UserError(
            f"`overrides` expects key=value with a dotted key (e.g. process.gamma=0), got {item!r}"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(config: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``config[path[0]][path[1]]... = value``; integer parts index lists."""
    node: Any = config
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, path[: i + 1])
        else:
            if not isinstance(node.get(part, {}), dict | list):
                raise UserError(
                    f"`overrides` {'.'.join(path)}: {'.'.join(path[: i + 1])} is a value, "
                    "not a section"
                )
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        index = _list_index(node, last, path)
        node[index] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise UserError(
            f"`overrides` {'.'.join(path)}: {part!r} is not an index of a list of {len(node)} items"
        )
    return int(part)


def _list_item(node: list, part: str, path: list[str]) -> Any:
    return node[_list_index(node, part, path)]


def build_layers(
    config_file: Path | None, preset: str | None, saved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """BASE < preset < file. A `saved` run config (resuming) is the base instead when neither a
    config file nor a preset is given. The preset is `preset`, else the file's ``preset``."""
    file_data = read_config_file(config_file) if config_file is not None else {}
    file_preset = file_data.pop("preset", None)
    name = preset or file_preset
    if saved is not None and name is None and config_file is None:
        return _unaliased(saved)
    try:
        raw = preset_dict(name or DEFAULT_PRESET)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    return _unaliased(deep_merge(raw, file_data))


def _unaliased(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy sharing no sub-objects (YAML anchors, repeated preset entries), so that
    ``--set process.transforms.1.factor=4`` changes one transform only."""
    return json.loads(json.dumps(raw, default=str))


def finalize(raw: dict[str, Any], data_channels: int, base_dir: Path | None = None) -> TrainConfig:
    """Validate `raw` into a TrainConfig: channels from the data, stage shapes from the process;
    relative asset paths resolve against `base_dir`."""
    raw = deep_merge(raw, {"process": {"channels": data_channels}})
    context = {"base_dir": base_dir}
    try:
        process = ProcessConfig.model_validate(raw.get("process", {}), context=context)
    except ValidationError as exc:
        message = format_validation_error(exc, "process")
        raise UserError(f"invalid config: {message}{_autoencoder_hint(message)}") from None
    except ValueError as exc:
        raise UserError(f"invalid config: process: {exc}") from None
    from fdm_core import FDMProcess

    shapes = [list(s) for s in FDMProcess(process).stage_shapes]
    raw = deep_merge(raw, {"model": {"stage_shapes": shapes}})
    raw["process"] = process.model_dump(mode="json")
    try:
        return TrainConfig.model_validate(raw, context=context)
    except ValidationError as exc:
        raise UserError(f"invalid config: {format_validation_error(exc)}") from None
    except ValueError as exc:
        raise UserError(f"invalid config: {exc}") from None


def _autoencoder_hint(message: str) -> str:
    if "(autoencoder)" in message and "does not exist" in message:
        return (
            "; train one with fdm train-autoencoder (it writes runs/autoencoder) or give "
            "`autoencoder` DIR"
        )
    return ""
