"""The long reliability cases (issue 10), as real processes: marked ``reliability``, run by
``nox -s reliability`` (and by CI through it), deselected from ``nox -s tests``.

Run alone with::

    pytest -m reliability tests/e2e/test_reliability.py
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdm_cli.artifacts import checkpoints as ckpt

from .test_cli_subprocess import TINY, fdm_command, run

pytestmark = pytest.mark.reliability


def test_a_second_ctrl_c_during_checkpoint_sampling_stops_at_once(tmp_path: Path) -> None:
    """The step-2 checkpoint is followed by a sample grid of 512 images x 200 steps (minutes).
    Ctrl-C there only asks for a stop after that grid; a second Ctrl-C must end the process at
    once (bug caught: a handler that swallowed every signal after the first), with exit 130, one
    line and no traceback, and the step-2 checkpoint intact and `latest`."""
    run_dir = tmp_path / "run"
    slow_grid = ["--set", "train.checkpoint_every=2", "--set", "sample.num=512",
                 "--set", "sample.steps=200", "--set", "sample.batch_size=512"]  # fmt: skip
    args = ["train", "--out", run_dir, "--max-steps", "100", "--no-progress", *TINY, *slow_grid]
    process = subprocess.Popen(
        [*fdm_command(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    checkpoint = run_dir / "checkpoints" / "step-00000002.safetensors"
    deadline = time.monotonic() + 240
    while not (checkpoint.is_file() and (run_dir / "checkpoints" / "latest").is_file()):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no step-2 checkpoint within 240 s"
        time.sleep(0.05)
    time.sleep(1.0)  # inside the grid's sampling now
    assert not (run_dir / "samples" / "step-00000002.png").exists()
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None, "the first Ctrl-C must not stop the run at once"
    second = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    stopped_after = time.monotonic() - second
    assert process.returncode == 130, output
    assert stopped_after < 10, f"the second Ctrl-C took {stopped_after:.1f} s"
    assert output.strip().splitlines()[-1] == "fdm: interrupted", output
    assert "Traceback" not in output, output
    assert not (run_dir / "samples" / "step-00000002.png").exists()
    assert ckpt.latest_checkpoint(run_dir) == checkpoint
    state, _ = ckpt.load_checkpoint(checkpoint, ckpt.RESUME_PARTS)
    assert state["progress"]["step"] == 2


def _photo_folder(folder: Path, count: int) -> Path:
    """`count` photos: PNG, JPEG and WebP; gray, RGB and RGBA; 24 to 400 px a side, some in
    subfolders; then a corrupt PNG, an empty JPEG and a text file."""
    rng = np.random.default_rng(0)
    modes, formats = ("L", "RGB", "RGBA"), ("png", "jpg", "webp")
    for i in range(count):
        width, height = (int(v) for v in rng.integers(24, 400, size=2))
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        mode, ext = modes[i % 3], formats[(i // 3) % 3]
        where = folder / f"set{i % 4}"
        where.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels, "RGB").convert(mode)
        if ext == "jpg" and mode == "RGBA":
            image = image.convert("RGB")  # JPEG has no alpha
        image.save(where / f"photo{i:03d}.{ext}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_fdm_train_on_a_folder_of_360_mixed_photos(tmp_path: Path) -> None:
    """The issue's case: 360 mixed-size PNG/JPEG/WebP photos (gray, RGB, RGBA), one corrupt PNG,
    one empty JPEG and a text file: `fdm train` trains, and one warning counts and names the two
    unreadable files. With --strict it refuses with one line before any training."""
    folder = _photo_folder(tmp_path / "photos", 360)
    run_dir = tmp_path / "run"
    done = run(["train", "--data", folder, "--out", run_dir, "--max-steps", "2", *TINY])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "skipped 2 unreadable file(s) of 362" in output, output
    assert "broken.png" in output and "empty.jpg" in output, output
    assert (run_dir / "model" / "model.safetensors").is_file()
    strict = run(["train", "--data", folder, "--strict", "--out", tmp_path / "r2", *TINY])
    lines = (strict.stdout + strict.stderr).strip().splitlines()
    assert strict.returncode == 2 and len(lines) == 1 and lines[0].startswith("fdm: error:"), lines
    assert not (tmp_path / "r2" / "checkpoints").exists()
