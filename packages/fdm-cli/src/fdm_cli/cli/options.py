"""Options several `fdm` commands share: one declaration each, with its help text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fdm_cli.config.choices import DEVICE_HELP, check_device

Opt = typer.Option

# Options shared by several commands.
ModelArg = Annotated[Path, typer.Argument(help="RUN_DIR, MODEL_DIR or checkpoint file.")]
EmaOpt = Annotated[bool, Opt("--ema/--no-ema", help="EMA or raw weights.")]
DeviceOpt = Annotated[str, Opt(help=DEVICE_HELP, parser=check_device)]
JsonOpt = Annotated[bool, Opt("--json", help="Machine-readable output.")]
StrictOpt = Annotated[
    bool | None, Opt("--strict/--lenient", help="Refuse (or skip) unreadable images in --data.")
]
OverwriteOpt = Annotated[bool, Opt(help="Replace existing output files (never the inputs).")]
ThreadsOpt = Annotated[
    int | None,
    Opt(help="CPU threads; default: adapted to the machine's load (fdm_cli.runtime.threads)."),
]
OutFolderOpt = Annotated[Path, Opt(help="Output folder.")]
FromStageOpt = Annotated[
    int | None, Opt(help="Stage the input is a signal of (default: by size / most blurred).")
]
StartTOpt = Annotated[
    float | None, Opt(help="Start time in that stage (default tau_k; later = more freedom).")
]
ResizeOpt = Annotated[bool, Opt(help="Resize/convert the input to the stage's size and channels.")]
RestoreStepsOpt = Annotated[int, Opt(help="Sampler steps for the whole range.")]
EtaOpt = Annotated[float, Opt(help="DDIM stochasticity in [0, 1].")]
RestoreSeedOpt = Annotated[int, Opt(help="Image i uses noise seed seed + i.")]

# Options of both training commands (`fdm train`, `fdm train-autoencoder`).
LrOpt = Annotated[float | None, Opt(help="Peak learning rate.")]
MaxStepsOpt = Annotated[int | None, Opt(help="Train this many steps.")]
SeedOpt = Annotated[int | None, Opt(help="Seed of init, data order and noise.")]
TrainDeviceOpt = Annotated[str | None, Opt(help=DEVICE_HELP)]
ResumeOpt = Annotated[bool, Opt(help="Continue from RUN_DIR/checkpoints/latest.")]
OverwriteRunOpt = Annotated[bool, Opt(help="Start a new run in a non-empty RUN_DIR.")]
SetOpt = Annotated[list[str] | None, Opt("--set", help="key=value override, repeatable.")]
DryRunOpt = Annotated[bool, Opt(help="Print the resolved config and exit.")]
ProgressOpt = Annotated[bool, Opt(help="Show the progress bar.")]
LogOpt = Annotated[  # checked by the config (train.trackers): Typer lists take no Literal
    list[str] | None,
    Opt(
        "--log",
        metavar="<tensorboard|wandb>",
        help="Also log to tensorboard or wandb (repeatable; train.trackers).",
    ),
]
