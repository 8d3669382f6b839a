"""Shared fixtures: tiny models trained for a few steps through the real CLI (in-process)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fdm_cli.cli.app import app

from .fidnet import StandIn

# A UNet of ~0.08M parameters, a handful of steps and a 4-image sample grid: seconds, not minutes.
TINY = (
    "--set model.base_channels=8 --set model.num_heads=2 --set sample.num=4 --set "
    "sample.steps=6 --set sample.strip_rows=2 --set train.log_every=1 --set "
    "optim.warmup_steps=2 --batch-size 6 --device cpu --no-progress"
).split()


def run_cli(*args: str | Path) -> object:
    """Invoke `fdm` in-process; returns the CliRunner result (exit_code, output, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (8-bit gray) and that holds no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def refused(result: object, *phrases: str) -> None:
    """The command stopped with exit code 2 and one `fdm: error:` line containing `phrases`."""
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("fdm: error:") and len(text.splitlines()) == 1, text
    assert "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in text, text


def stopped(result: object, *phrases: str) -> None:
    """A run that had started (and printed progress) stopped with exit code 2 and a last line
    `fdm: error: ...` containing `phrases`, without a traceback."""
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("fdm: error:") and "Traceback" not in result.output, result.output
    for phrase in phrases:
        assert phrase in last, last


@pytest.fixture(scope="session")
def network_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in FID network (`tests/fdm_cli/fidnet.py`) saved as a TorchScript file."""
    path = tmp_path_factory.mktemp("fidnet") / "standin.pt"
    torch.jit.script(StandIn()).save(str(path))
    return path


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
