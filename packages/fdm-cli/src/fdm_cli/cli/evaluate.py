"""`fdm eval`: FID, KID, precision and recall of a model's samples, or of two real sets
(`fdm_cli.evaluation`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fdm_cli.cli.console import cli_errors
from fdm_cli.cli.options import DeviceOpt, EmaOpt, EtaOpt, Opt, OverwriteOpt, ThreadsOpt
from fdm_cli.errors import UserError


@cli_errors
def eval_(
    model: Annotated[Path | None, typer.Argument(help="RUN_DIR, MODEL_DIR or checkpoint.")] = None,
    num: Annotated[int | None, Opt(help="Images per set (MODEL: required; --real: 2000).")] = None,
    steps: Annotated[int, Opt(help="Sampler steps (split across stages).")] = 100,
    eta: EtaOpt = 0.0,
    seed: Annotated[int, Opt(help="Sample i uses noise seed seed + i.")] = 0,
    batch_size: Annotated[int, Opt(help="Images per sampler / network call.")] = 64,
    ref: Annotated[str, Opt(help="fashion-mnist, IDX files or an image folder.")] = "fashion-mnist",
    ref_split: Annotated[str, Opt(help="test or train: split of --ref and --real.")] = "test",
    real: Annotated[list[str] | None, Opt(help="Two real sets instead of MODEL.")] = None,
    out: Annotated[Path, Opt(help="Metrics JSON file.")] = Path("metrics.json"),
    ema: EmaOpt = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
    progress: Annotated[bool, Opt(help="Show progress bars.")] = True,
) -> None:
    """FID, KID, precision and recall of samples against real images, or of two real sets."""
    options = dict(locals())  # the options above, by name
    _evaluate(**options)


def _evaluate(
    model: Path | None,
    num: int | None,
    steps: int,
    eta: float,
    seed: int,
    batch_size: int,
    ref: str,
    ref_split: str,
    real: list[str] | None,
    out: Path,
    ema: bool,
    device: str,
    threads: int | None,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    """`fdm eval`: check the flags, evaluate (`fdm_cli.api.evaluate`), print one line, write
    `out`."""
    from fdm_cli.api import evaluate as api
    from fdm_cli.artifacts.outputs import check_outputs, model_inputs
    from fdm_cli.evaluation.evaluate import DEFAULT_REAL_NUM, check_num, summary, write_metrics
    from fdm_cli.runtime.device import resolve_device
    from fdm_cli.seeding import check_seeds

    if num is not None:
        check_num(num)  # before anything is loaded; without --num, --real scores 2000
    check_outputs([out], overwrite, model_inputs(model) if model is not None else [])
    dev = resolve_device(device)

    if real:
        if model is not None or len(real) != 2:
            raise UserError("--real takes exactly two image sets (--real A --real B) and no MODEL")
        _check_positive(("--batch-size", batch_size))
        metrics = api.evaluate_real(
            real[0],
            real[1],
            DEFAULT_REAL_NUM if num is None else num,
            split=ref_split,
            batch_size=batch_size,
            device=dev,
            progress=progress,
            threads=threads,
        )
    else:
        if model is None:
            raise UserError("give a MODEL (RUN_DIR, MODEL_DIR or checkpoint) or --real A --real B")
        if num is None:
            raise UserError("--num is required: the number of samples to score (FID depends on it)")
        check_seeds(seed, num)
        if not 0.0 <= eta <= 1.0 or math.isnan(eta):
            raise UserError(f"--eta {eta}: must be in [0, 1]")
        _check_positive(("--steps", steps), ("--batch-size", batch_size))
        metrics = api.evaluate(
            model,
            num,
            steps=steps,
            eta=eta,
            seed=seed,
            batch_size=batch_size,
            ref=ref,
            ref_split=ref_split,
            ema=ema,
            device=dev,
            threads=threads,
            progress=progress,
        )
    write_metrics(metrics, out)
    Console(highlight=False, soft_wrap=True).print(f"{summary(metrics)}; wrote {out}", markup=False)
    return metrics


def _check_positive(*flags: tuple[str, int]) -> None:
    for name, value in flags:
        if value <= 0:
            raise UserError(f"{name} {value}: must be positive")
