"""Faults during a run: a `latest` pointer that names something else, the temporary files a crash
leaves behind, a loss that becomes NaN (the run stops, or with train.nonfinite=skip drops the
batch)."""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.config.base import NONFINITE_LIMIT
from fdm_cli.errors import UserError
from fdm_cli.training.nonfinite import NonfiniteGuard

from .conftest import refused, stopped


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
    import fdm_core.loss as loss_module

    real, calls = loss_module.stage_loss, {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        loss, per_stage = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 3 else loss), per_stage

    monkeypatch.setattr(loss_module, "stage_loss", nan_at_step_3)
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

    from fdm_cli.runtime.signals import graceful_stop

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


# ---------------------------------------------------------------------------------------------
# train.nonfinite=skip: a NaN batch is dropped instead of stopping the run
# (fdm_cli.training.nonfinite)


def _copy(state: Any) -> Any:
    return copy.deepcopy(state)


def _same(a: Any, b: Any) -> bool:
    """Exactly equal nested states (tensors bit for bit; NaN is never equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _poison(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]) -> dict[int, dict]:
    """`fdm train`'s loss is NaN at the calls (batches, 1-based) where `bad(n)`; returns the
    weights, EMA and optimizer state as each batch starts, by batch number."""
    import fdm_core.loss as loss_module
    from fdm_cli.training import loop as train_module

    real_loss, real_setup, runs, seen = loss_module.stage_loss, train_module.setup, [], {}

    def spy_setup(*args: Any, **kwargs: Any) -> Any:
        runs.append(real_setup(*args, **kwargs))
        return runs[-1]

    def loss(*args: Any, **kwargs: Any) -> Any:
        n, run = len(seen) + 1, runs[-1]
        state = {"model": run.unet.state_dict(), "ema": run.ema.state_dict()}
        seen[n] = _copy(state | {"optimizer": run.optimizer.state_dict()})
        total, per_stage = real_loss(*args, **kwargs)
        return (total * math.nan if bad(n) else total), per_stage

    monkeypatch.setattr(train_module, "setup", spy_setup)
    monkeypatch.setattr(loss_module, "stage_loss", loss)
    return seen


def _skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fdm_cli.training.nonfinite" and r.levelname == "WARNING"
    ]


def test_skip_drops_a_nan_batch_with_no_update_and_finishes_the_budget(
    tmp_path: Path, cli, tiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Batch 3's loss is NaN: weights, EMA and AdamW state (and the learning rate) are exactly
    those before it; the 5-step budget counts good steps (6 batches); loss.csv holds 5 finite
    rows; one warning names the step. Catches an optimizer step or EMA update on a skipped
    batch, a skipped batch counted as a step or logged as a loss, and a silent skip."""
    seen = _poison(monkeypatch, lambda n: n == 3)
    run_dir = tmp_path / "run"
    args = ["train", "--out", run_dir, "--max-steps", "5", "--set", "train.nonfinite=skip"]
    with caplog.at_level("WARNING", logger="fdm_cli.training.nonfinite"):
        result = cli(*args, *tiny)
    assert result.exit_code == 0, result.output
    assert sorted(seen) == [1, 2, 3, 4, 5, 6] and "done: 5 steps" in result.output
    for part in ("model", "ema", "optimizer"):
        assert _same(seen[3][part], seen[4][part]), f"the skipped batch changed the {part}"
        assert not _same(seen[2][part], seen[3][part]), f"a good step left the {part} unchanged"
    rows = read_loss_csv(run_dir / "loss.csv")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and all(math.isfinite(r[1]) for r in rows)
    warnings = _skip_warnings(caplog)
    assert len(warnings) == 1 and "step 3:" in warnings[0], warnings
    assert "1 skipped so far" in warnings[0], warnings
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), ckpt.RESUME_PARTS)
    assert state["progress"]["step"] == 5 and state["progress"]["position"] == 6 * 6
    assert int(state["ema"]["step"]) == 5


def test_skip_stops_after_the_limit_of_nan_batches_in_a_row(
    tmp_path: Path, cli, tiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every batch from the third on is NaN: after NONFINITE_LIMIT of them in a row the run stops
    with one line naming step 3, keeping step 2's checkpoint (not burning the whole budget)."""
    seen = _poison(monkeypatch, lambda n: n >= 3)
    run_dir = tmp_path / "run"
    args = ["train", "--out", run_dir, "--max-steps", "100", "--set", "train.checkpoint_every=1"]
    with caplog.at_level("WARNING", logger="fdm_cli.training.nonfinite"):
        result = cli(*args, "--set", "train.nonfinite=skip", *tiny)
    stopped(
        result,
        f"the loss is nan at step 3 for {NONFINITE_LIMIT} batches in a row",
        "step-00000002.safetensors is kept",
    )
    assert len(seen) == 2 + NONFINITE_LIMIT
    assert len(_skip_warnings(caplog)) == NONFINITE_LIMIT - 1
    assert ckpt.latest_checkpoint(run_dir).name == "step-00000002.safetensors"
    assert [r[0] for r in read_loss_csv(run_dir / "loss.csv")] == [1, 2]


def test_skip_counts_only_nonfinite_batches_in_a_row(tmp_path: Path) -> None:
    """One good step resets the count (a run with a NaN batch now and then is not stopped); a
    non-finite gradient norm with a finite loss is skipped too."""
    guard = NonfiniteGuard("skip", tmp_path)
    nan, good = (torch.tensor(math.nan), torch.tensor(1.0)), (torch.tensor(0.5), torch.tensor(1.0))
    for _ in range(NONFINITE_LIMIT - 1):
        assert not guard.keep(*nan, step=7)
    assert guard.keep(*good, step=7)
    assert not guard.keep(torch.tensor(0.5), torch.tensor(math.inf), step=8)
    for _ in range(NONFINITE_LIMIT - 2):
        assert not guard.keep(*nan, step=8)
    with pytest.raises(UserError, match=f"nan at step 8 for {NONFINITE_LIMIT} batches in a row"):
        guard.keep(*nan, step=8)
    assert guard.skipped == 2 * NONFINITE_LIMIT - 1
    assert NonfiniteGuard("stop", tmp_path).keep(*nan, step=1)  # the loop's own check stops


def test_skip_decides_on_the_values_of_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP a NaN on another rank must make this rank skip too (else the ranks' weights
    part): the decision reads the all-reduced loss and gradient norm, not this rank's."""
    from fdm_cli.runtime import distributed as dist_

    other = torch.tensor([math.nan, 1.0], dtype=torch.float64)  # rank 1's loss, gradient norm
    monkeypatch.setattr(dist_, "sum_over_ranks", lambda ctx, values: values + other)
    for rank in (0, 1):
        guard = NonfiniteGuard("skip", tmp_path, dist_.DistContext(rank=rank, world_size=2))
        assert not guard.keep(torch.tensor(0.5), torch.tensor(1.0), step=4)
    other[0] = 0.25
    assert guard.keep(torch.tensor(0.5), torch.tensor(1.0), step=5)


@pytest.mark.parametrize("command", ["train", "train-autoencoder"])
def test_an_unknown_nonfinite_mode_is_one_line_with_the_choices(cli, command: str) -> None:
    result = cli(command, "--dry-run", "--set", "train.nonfinite=bogus")
    refused(result, "train.nonfinite", "'stop'", "'skip'", "bogus")


def test_autoencoder_training_skips_a_nan_batch_too(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`fdm train-autoencoder` shares the option: batch 3's NaN leaves the weights as they were,
    AdamW takes 4 steps for the 4-step budget, loss.csv holds 4 finite rows."""
    from fdm_models import Autoencoder

    from .test_train_autoencoder import TINY_AE

    real, seen = Autoencoder.loss, {}

    def loss(self: Autoencoder, x: torch.Tensor, generator: Any = None) -> Any:
        seen[len(seen) + 1] = _copy(self.state_dict())
        out = real(self, x, generator)
        if len(seen) == 3:
            out.total = out.total * math.nan
        return out

    monkeypatch.setattr(Autoencoder, "loss", loss)
    run_dir = tmp_path / "ae"
    args = ["train-autoencoder", "--out", run_dir, "--max-steps", "4"]
    with caplog.at_level("WARNING", logger="fdm_cli.training.nonfinite"):
        result = cli(*args, "--set", "train.nonfinite=skip", *TINY_AE)
    assert result.exit_code == 0, result.output
    assert len(seen) == 5 and _same(seen[3], seen[4]) and not _same(seen[2], seen[3])
    rows = read_loss_csv(run_dir / "loss.csv")
    assert [r[0] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r[1]) for r in rows)
    assert ["step 3:" in w for w in _skip_warnings(caplog)] == [True]
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), ("optimizer", "progress"))
    adam = ckpt.optimizer_from_tree(state["optimizer"])["state"]
    assert {float(s["step"]) for s in adam.values()} == {4.0}
    assert state["progress"]["position"] == 5 * 4
