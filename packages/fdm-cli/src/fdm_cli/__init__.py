"""fdm-cli: the `fdm` command for f-DM (train, sample, super-resolve, deblur, eval, data pack,
plugins, env) and the same work from Python.

The Python API (docs/api.md) is re-exported here lazily: ``import fdm_cli`` loads no torch, and
the first use of a name imports the module that holds it (`fdm_cli.api`)::

    import fdm_cli

    config = fdm_cli.train_config("fdm-ds", {"train.max_steps": 300})
    fdm_cli.train(config, "runs/python")
    model = fdm_cli.load_model("runs/python")
    fdm_cli.make_grid(fdm_cli.sample(model, 64)).save("grid.png")

The commands live in `fdm_cli.cli` (Typer), over that API; the layers below it in
`fdm_cli.training`, `evaluation`, `generation`, `config`, `data`, `artifacts` and `runtime`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name -> the module that provides it.
_API: dict[str, str] = {
    # training (`fdm train`, `fdm train-autoencoder`)
    "train_config": "fdm_cli.api.train",
    "train": "fdm_cli.api.train",
    "autoencoder_config": "fdm_cli.api.train",
    "train_autoencoder": "fdm_cli.api.train",
    "TrainConfig": "fdm_cli.api.train",
    "AutoencoderTrainConfig": "fdm_cli.api.train",
    "TrainResult": "fdm_cli.api.train",
    "AutoencoderResult": "fdm_cli.api.train",
    "TrainingStep": "fdm_cli.api.step",
    # a trained model (`fdm sample`, `fdm super-resolve`, `fdm deblur`)
    "load_model": "fdm_cli.api.generate",
    "sample": "fdm_cli.api.generate",
    "make_grid": "fdm_cli.api.generate",
    "stage_strip": "fdm_cli.api.generate",
    "super_resolve": "fdm_cli.api.generate",
    "deblur": "fdm_cli.api.generate",
    "LoadedModel": "fdm_cli.api.generate",
    "Samples": "fdm_cli.api.generate",
    "Restored": "fdm_cli.api.generate",
    # scores (`fdm eval`)
    "evaluate": "fdm_cli.api.evaluate",
    "evaluate_real": "fdm_cli.api.evaluate",
    "evaluate_images": "fdm_cli.api.evaluate",
    "load_fid_network": "fdm_cli.api.evaluate",
    # data (`fdm train --data`, `fdm data pack`)
    "open_data": "fdm_cli.api.data",
    "DataStream": "fdm_cli.api.data",
    "pack_shards": "fdm_cli.api.data",
    # errors a user can fix
    "UserError": "fdm_cli.errors",
}

__all__ = [  # the names of `_API` (tests/fdm_cli/test_api.py checks they agree)
    "AutoencoderResult",
    "AutoencoderTrainConfig",
    "DataStream",
    "LoadedModel",
    "Restored",
    "Samples",
    "TrainConfig",
    "TrainResult",
    "TrainingStep",
    "UserError",
    "autoencoder_config",
    "deblur",
    "evaluate",
    "evaluate_images",
    "evaluate_real",
    "load_fid_network",
    "load_model",
    "make_grid",
    "open_data",
    "pack_shards",
    "sample",
    "stage_strip",
    "super_resolve",
    "train",
    "train_autoencoder",
    "train_config",
]


def __getattr__(name: str) -> Any:
    """A public name on first use (then cached in this module); AttributeError for others."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fdm_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and editors; at run time `__getattr__` imports them
    from fdm_cli.api.data import DataStream, open_data, pack_shards
    from fdm_cli.api.evaluate import evaluate, evaluate_images, evaluate_real, load_fid_network
    from fdm_cli.api.generate import (
        LoadedModel,
        Restored,
        Samples,
        deblur,
        load_model,
        make_grid,
        sample,
        stage_strip,
        super_resolve,
    )
    from fdm_cli.api.step import TrainingStep
    from fdm_cli.api.train import (
        AutoencoderResult,
        AutoencoderTrainConfig,
        TrainConfig,
        TrainResult,
        autoencoder_config,
        train,
        train_autoencoder,
        train_config,
    )
    from fdm_cli.errors import UserError
