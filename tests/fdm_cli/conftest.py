"""Shared fixtures: tiny models trained for a few steps through the real CLI (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fdm_cli.app import app

# A UNet of ~0.08M parameters, a handful of steps and a 4-image sample grid: seconds, not minutes.
TINY = (
    "--set model.base_channels=8 --set model.num_heads=2 --set sample.num=4 --set "
    "sample.steps=6 --set sample.strip_rows=2 --set train.log_every=1 --set "
    "optim.warmup_steps=2 --batch-size 6 --device cpu --no-progress"
).split()


def run_cli(*args: str | Path) -> object:
    """Invoke `fdm` in-process; returns the CliRunner result (exit_code, output, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def ds_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fdm-ds run (4 steps, checkpoints every 2)."""
    run_dir = tmp_path_factory.mktemp("runs") / "ds"
    result = run_cli(
        "train", "--out", run_dir, "--max-steps", "4", "--set", "train.checkpoint_every=2", *TINY
    )
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="session")
def blur_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fdm-blur-g run (2 steps)."""
    run_dir = tmp_path_factory.mktemp("runs") / "blur"
    result = run_cli("train", "--preset", "fdm-blur-g", "--out", run_dir, "--max-steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def cli() -> object:
    """`cli("train", ...)` runs `fdm` in-process and returns the CliRunner result."""
    return run_cli


@pytest.fixture
def tiny() -> list[str]:
    """Flags that make `fdm train` tiny and fast (append after the command's own flags)."""
    return list(TINY)
