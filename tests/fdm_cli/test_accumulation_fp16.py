"""Gradient accumulation and fp16 loss scaling in `fdm train` (docs/design.md §6.5, §6.8).

Bugs caught: a run with ``train.grad_accum`` that trains on other data, other noise or another
update than the same run without it (the weights after the run differ); micro-batches whose
gradients are all-reduced or zeroed between micro-batches (the update shrinks to the last
micro-batch's); an fp16 overflow treated as a non-finite loss (the run stops) or not counted; the
loss scaler's state not saved in checkpoints or not restored on resume (the resumed run restarts
at the initial scale); fp16 accepted on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.training import setup as training_setup
from fdm_cli.training.loop import run_training
from fdm_core import load_state

from .conftest import TINY as CLI_TINY
from .conftest import refused, run_cli
from .test_train import tiny_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    return state["model"]


def test_accumulated_steps_train_the_same_weights(tmp_path: Path) -> None:
    whole = run_training(tiny_config(3), tmp_path / "whole", show_progress=False)
    micro = run_training(
        tiny_config(3, **{"train.grad_accum": 4}), tmp_path / "micro", show_progress=False
    )
    assert whole.step == micro.step == 3
    # AdamW moves a weight by about lr = 1e-3 a step whatever its gradient's size, so the
    # summation-order noise of a near-zero gradient can move it by a few 1e-5: allow a tenth of a
    # step. Losing or zeroing a micro-batch's gradient changes the update by a whole step.
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "micro")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-4, msg=name)
    rows_a, rows_b = (
        read_loss_csv(tmp_path / "whole" / "loss.csv"),
        read_loss_csv(tmp_path / "micro" / "loss.csv"),
    )
    for row_a, row_b in zip(rows_a, rows_b, strict=True):  # loss, per-stage, lr, grad norm
        torch.testing.assert_close(
            torch.tensor(row_b[:-1]), torch.tensor(row_a[:-1]), rtol=1e-4, atol=1e-6
        )


def test_grad_accum_larger_than_the_batch_is_refused(tmp_path: Path) -> None:
    result = run_cli("train", "--out", tmp_path / "r", "--max-steps", "1", *CLI_TINY,
                     "--set", "train.grad_accum=7")  # fmt: skip
    refused(result, "train.grad_accum 7 is more than the batch of 6 images")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_is_refused_on_the_cpu(tmp_path: Path) -> None:
    result = run_cli("train", "--out", tmp_path / "r", "--max-steps", "1", *CLI_TINY,
                     "--precision", "fp16")  # fmt: skip
    refused(result, "--precision fp16 needs a CUDA device", "use bf16 or fp32")
    assert not (tmp_path / "r" / "checkpoints").exists()


class OverflowingScaler(torch.amp.GradScaler):
    """fdm's loss scaler on the CPU (fdm refuses fp16 there; the scaling logic is the same),
    never growing, whose scaled loss is inf at the given calls: an fp16 overflow on demand."""

    def __init__(self, overflow_at: set[int]) -> None:
        super().__init__("cpu", init_scale=2.0**16, growth_interval=10**6)
        self.overflow_at, self.calls = overflow_at, 0

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        scaled = super().scale(outputs)
        return scaled * math.inf if self.calls in self.overflow_at else scaled


def test_overflow_steps_are_skipped_counted_and_the_scale_survives_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scalers = iter([OverflowingScaler({2, 3}), OverflowingScaler(set())])
    monkeypatch.setattr(training_setup, "make_scaler", lambda *_: next(scalers))
    run_dir = tmp_path / "run"
    first = run_training(tiny_config(5), run_dir, show_progress=False)
    assert first.step == 5 and not first.interrupted  # an overflow is no non-finite loss
    assert first.overflow_steps == 2
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    assert state["scaler"]["scale"] == 2.0**14  # halved at each overflow
    rows = read_loss_csv(run_dir / "loss.csv")
    assert [r[0] for r in rows if not math.isfinite(r[-2])] == [2, 3]  # their gradient norms
    assert all(math.isfinite(r[1]) for r in rows)  # the losses stayed finite

    resumed = run_training(tiny_config(7), run_dir, resume=True, show_progress=False)
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    assert resumed.step == 7 and resumed.overflow_steps == 0
    assert state["scaler"]["scale"] == 2.0**14  # restored from the checkpoint, not 2**16


CUDA_TINY = ["cuda" if a == "cpu" else a for a in CLI_TINY]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_trains_and_resumes_with_the_scaler(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    result = run_cli("train", "--out", run_dir, "--max-steps", "3", *CUDA_TINY,
                     "--precision", "fp16")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fp16 overflow steps skipped by the loss scaler" in result.output
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    assert 0 < state["scaler"]["scale"] <= 2.0**16
    resumed = run_cli("train", "--out", run_dir, "--resume", "--max-steps", "4", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert load_state(ckpt.latest_checkpoint(run_dir))[0]["scaler"]["scale"] > 0
