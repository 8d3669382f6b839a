"""Training from Python: a config resolved exactly as `fdm train` (or `fdm train-autoencoder`)
resolves its flags, then the run itself, into a run folder (docs/design.md §6.3).

Example::

    import fdm_cli

    config = fdm_cli.train_config("fdm-ds", {"train.max_steps": 300})
    result = fdm_cli.train(config, "runs/python")   # checkpoints, samples, model/ in the folder
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from fdm_cli.config.autoencoder import AutoencoderTrainConfig, resolve_autoencoder_config
from fdm_cli.config.files import saved_run_config
from fdm_cli.config.train import TrainConfig, resolve_train_config
from fdm_cli.errors import UserError
from fdm_cli.training.autoencoder import AutoencoderResult, run_autoencoder_training
from fdm_cli.training.loop import TrainResult, run_training

PathLike = str | os.PathLike[str]

__all__ = [
    "AutoencoderResult",
    "AutoencoderTrainConfig",
    "TrainConfig",
    "TrainResult",
    "autoencoder_config",
    "train",
    "train_autoencoder",
    "train_config",
]


def _sets(sets: Iterable[str] | str) -> list[str]:
    items = [sets] if isinstance(sets, str) else list(sets)
    if not all(isinstance(item, str) for item in items):
        raise UserError(f"sets: give 'key=value' strings, got {items!r}")
    return items


def _mapping(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise UserError(
            "`overrides`: give a mapping of dotted keys to values, e.g. {'train.max_steps': 300} "
            f"(for 'key=value' strings use sets=); got {type(overrides).__name__}"
        )
    return dict(overrides)


def train_config(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    sets: Iterable[str] | str = (),
    config_file: PathLike | None = None,
    resume_dir: PathLike | None = None,
) -> TrainConfig:
    """The `TrainConfig` that ``fdm train [CONFIG_FILE] --preset PRESET <flags> --set ...``
    resolves (`fdm_cli.config.train.resolve_train_config`), checked and with the data probed.

    Layers, each over the one before: the `preset` (default: the config file's own, else
    fdm-ds) < `config_file` (YAML or JSON) < `overrides` < `sets`. `overrides` maps dotted keys
    to values as the flags do (``{"optim.lr": 1e-4, "data.source": "photos/"}``; None means
    not given; a step budget ``train.max_steps`` replaces the time budget ``train.minutes`` and
    the other way round). `sets` are ``"key=value"`` strings read as YAML, like ``--set``.
    `resume_dir`: a run folder to continue; with neither `preset` nor `config_file` its saved
    config is the base (``fdm train --out DIR --resume``). Raises `UserError` naming what is
    wrong.
    """
    given = _mapping(overrides)
    items = _sets(sets)
    file = Path(config_file) if config_file is not None else None
    run_dir = Path(resume_dir) if resume_dir is not None else None
    saved = None
    if run_dir is not None and file is None and preset is None:
        saved = saved_run_config(run_dir)  # a run folder's config: relative assets inside it
    base_dir = run_dir if saved is not None else None
    return resolve_train_config(file, preset, given, items, saved, base_dir)


def train(
    config: TrainConfig,
    run_dir: PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Train `config` into `run_dir` as `fdm train` does (`fdm_cli.training.loop`): checkpoints,
    sample grids and stage strips, the loss log, and at the end ``model/`` (the EMA weights, a
    MODEL_DIR for `load_model`). `resume` continues from the folder's latest checkpoint (a new
    run when it has none); `overwrite` starts a new run in a folder that holds files. Progress
    lines go to `console` (default: standard output; ``Console(quiet=True)`` silences them), a
    progress bar only with `progress`. Under torchrun every rank calls it (DDP). A SIGINT or
    SIGTERM ends the run at the next step with a checkpoint: ``result.interrupted``.
    """
    if not isinstance(config, TrainConfig):
        raise UserError(
            f"`config`: give a TrainConfig (from train_config), got {type(config).__name__}"
        )
    return run_training(
        config,
        Path(run_dir),
        resume=resume,
        console=console,
        show_progress=progress,
        overwrite=overwrite,
    )


def autoencoder_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    sets: Iterable[str] | str = (),
    resume_dir: PathLike | None = None,
) -> AutoencoderTrainConfig:
    """The `AutoencoderTrainConfig` that ``fdm train-autoencoder <flags> --set ...`` resolves
    (`fdm_cli.config.autoencoder.resolve_autoencoder_config`): its defaults (or the saved
    config of `resume_dir`, a run being continued) < `overrides` (dotted key -> value, e.g.
    ``{"model.factor": 8}``) < `sets` (``"key=value"`` strings)."""
    saved = saved_run_config(Path(resume_dir)) if resume_dir is not None else None
    return resolve_autoencoder_config(_mapping(overrides), _sets(sets), saved)


def train_autoencoder(
    config: AutoencoderTrainConfig,
    run_dir: PathLike = Path("runs") / "autoencoder",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    console: Console | None = None,
) -> AutoencoderResult:
    """Train the autoencoder a latent stage runs in (docs/design.md §5.4) into `run_dir` as
    `fdm train-autoencoder` does (`fdm_cli.training.autoencoder`): ``model/``, the held-out
    PSNR in ``metrics.json`` and ``result.psnr_db``. The default folder is where the fdm-vae
    and ldm presets look. `resume`, `overwrite`, `progress` and `console` as in `train`."""
    if not isinstance(config, AutoencoderTrainConfig):
        raise UserError(
            "`config`: give an AutoencoderTrainConfig (from autoencoder_config), got "
            f"{type(config).__name__}"
        )
    return run_autoencoder_training(
        config, Path(run_dir), resume, console, progress, None, overwrite
    )
