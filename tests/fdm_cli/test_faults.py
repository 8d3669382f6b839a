"""Faults during a run: a `latest` pointer that names something else, the temporary files a crash
leaves behind, a loss that becomes NaN."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from fdm_cli import checkpointing as ckpt

from .conftest import stopped


def test_latest_pointer_stays_inside_the_runs_checkpoints(ds_run: Path, tmp_path: Path) -> None:
    """A `latest` file naming "../elsewhere" or an absolute path must not make fdm load (or
    resume from) a file outside the run: catches a pointer joined to the folder unchecked."""
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    newest = ckpt.latest_checkpoint(run)
    outside = tmp_path / "step-00000099.safetensors"
    shutil.copyfile(newest, outside)
    pointer = run / ckpt.CHECKPOINTS / ckpt.LATEST
    for name in ("../../step-00000099.safetensors", str(outside), "config.yaml", "\x00\xff"):
        pointer.write_text(name)
        assert ckpt.latest_checkpoint(run) == newest


def test_a_crashs_temporary_files_are_swept_on_the_next_start(tmp_path: Path, cli, tiny) -> None:
    run_dir = tmp_path / "run"
    assert cli("train", "--out", run_dir, "--max-steps", "2", *tiny).exit_code == 0
    stale = [
        run_dir / "checkpoints" / ".step-00000003.safetensors.k2j4x.tmp",
        run_dir / ".loss.csv.a8f0q.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = run_dir / "notes.tmp"  # not atomic_write's name pattern: the user's
    keep.write_text("mine")
    result = cli("train", "--out", run_dir, "--max-steps", "3", "--resume", *tiny)
    assert result.exit_code == 0, result.output
    assert "removed 2 temporary file(s)" in result.output
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path: Path, cli, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a NaN check after the checkpoint write (the NaN weights would become `latest`)
    and a traceback instead of one line."""
    from fdm_cli import run as run_module

    real, calls = run_module.diffusion_loss, {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(run_module, "diffusion_loss", nan_at_step_3)
    run_dir = tmp_path / "run"
    args = ["train", "--out", run_dir, "--max-steps", "6", "--set", "train.checkpoint_every=1"]
    result = cli(*args, *tiny)
    stopped(result, "the loss is nan at step 3", "step-00000002.safetensors is kept")
    assert ckpt.latest_checkpoint(run_dir).name == "step-00000002.safetensors"
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    assert all(bool(v.isfinite().all()) for v in state["model"].values())


def test_a_second_signal_stops_at_once() -> None:
    """The first Ctrl-C asks for a stop after the step; a second must not be swallowed too
    (a user stuck in a long checkpoint sampling could not stop the run)."""
    import os
    import signal

    from fdm_cli.progress import graceful_stop

    with graceful_stop() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag["signal"] == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(
    tmp_path: Path, cli, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer fails with ENOSPC on the step-4 checkpoint: the run stops with one line that
    names that file (not its temporary), and step 2 stays `latest`, loadable, with no
    temporary file left behind."""
    import errno
    import os

    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if "step-00000004" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    run_dir = tmp_path / "run"
    args = ["train", "--out", run_dir, "--max-steps", "6", "--set", "train.checkpoint_every=2"]
    result = cli(*args, *tiny)
    stopped(result, "step-00000004.safetensors", "No space left on device")
    assert ckpt.latest_checkpoint(run_dir).name == "step-00000002.safetensors"
    ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), ckpt.RESUME_PARTS)
    assert not list(run_dir.rglob("*.tmp"))
