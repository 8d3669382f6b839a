"""End to end through the installed console script and ``python -m fdm_cli`` (real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = (
    "--set model.base_channels=8 --set model.num_heads=2 --set sample.num=4 --set "
    "sample.steps=4 --set sample.strip_rows=2 --batch-size 6 --device cpu --set "
    "train.log_every=1"
).split()


def fdm_command() -> list[str]:
    script = Path(sys.executable).with_name("fdm")
    if script.is_file():
        return [str(script)]
    found = shutil.which("fdm")
    return [found] if found else [sys.executable, "-m", "fdm_cli"]


def run(
    args: list[str | Path], module: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "fdm_cli"] if module else fdm_command()
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*base, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_train_sample_super_resolve_as_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run(["train", "--out", run_dir, "--max-steps", "2", *TINY])
    assert done.returncode == 0, done.stderr + done.stdout
    assert Image.open(run_dir / "samples" / "final.png").size == (2 * 34 + 2, 2 * 34 + 2)
    assert (run_dir / "samples" / "final-strip.png").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()

    grid = tmp_path / "grid.png"
    done = run(
        [
            "sample",
            run_dir / "model",
            "--num",
            "9",
            "--steps",
            "6",
            "--out",
            grid,
            "--strip",
            tmp_path / "strip.png",
        ],
        module=True,
    )
    assert done.returncode == 0, done.stderr
    image = np.asarray(Image.open(grid))
    assert image.shape == (3 * 34 + 2, 3 * 34 + 2) and image[2:34, 2:34].std() > 1

    low = tmp_path / "low.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)).save(low)
    done = run(["super-resolve", run_dir, low, "--out", tmp_path / "sr", "--steps", "6"])
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "sr" / "low.png").size == (32, 32)


@pytest.mark.slow
def test_blur_preset_and_deblur_as_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "blur"
    done = run(["train", "--preset", "fdm-blur-u", "--out", run_dir, "--max-steps", "1", *TINY])
    assert done.returncode == 0, done.stderr + done.stdout
    blurry = tmp_path / "blurry.png"
    Image.new("L", (32, 32), 128).save(blurry)
    done = run(["deblur", run_dir, blurry, "--out", tmp_path / "out", "--steps", "6"])
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out" / "blurry.png").size == (32, 32)


def test_user_error_is_one_line_with_status_2(tmp_path: Path) -> None:
    done = run(["train", "--set", "process.gamma", "--dry-run"])
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fdm: error: --set expects key=value with a dotted key "
        "(e.g. process.gamma=0), got 'process.gamma'"
    )
    assert done.stdout == ""
    debug = run(["train", "--set", "process.gamma", "--dry-run", "--debug"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr
    choice = run(["train", "--preset", "nope", "--dry-run"])
    assert choice.returncode == 2 and choice.stdout == ""
    assert choice.stderr.strip() == (
        "fdm: error: Invalid value for '--preset': 'nope' is not one of 'fdm-ds', 'fdm-blur-g', "
        "'fdm-blur-u', 'fdm-vae', 'ldm', 'ddpm', 'fdm-ds-64', 'ddpm-64', 'fdm-ds-256', "
        "'ddpm-256'. (see 'fdm train --help')"
    )
    bad_flag = run(["sample", "--bogus"])
    assert bad_flag.returncode == 2 and "No such option" in bad_flag.stderr
    assert bad_flag.stderr.strip().startswith("fdm: error:")
    assert len(bad_flag.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigint_stops_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [
        *fdm_command(),
        "train",
        "--out",
        str(run_dir),
        "--max-steps",
        "100000",
        *TINY,
        "--set",
        "train.checkpoint_every=100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        csv = run_dir / "loss.csv"
        while time.monotonic() < deadline:
            if csv.is_file() and len(csv.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint written" in out and "--resume" in out
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.removeprefix("step-").removesuffix(".safetensors"))
    assert stopped_at >= 2
    done = run(["train", "--out", run_dir, "--resume", "--max-steps", str(stopped_at + 1), *TINY])
    assert done.returncode == 0, done.stderr
    assert f"(step {stopped_at})" in done.stdout
    assert (run_dir / "samples" / "final.png").is_file()
