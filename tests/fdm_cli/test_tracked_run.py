"""A tracked, evaluated run end to end: `fdm train --log tensorboard --set train.eval_every=...`
writes TensorBoard event files with the loss, per-stage, learning-rate, gradient-norm, speed and
evaluation scalars and the checkpoint images, and a metrics.csv; resumed through the Python API,
both continue at the checkpoint's step with nothing logged twice. `fdm train-autoencoder --log`
sends its own losses, its PSNR and its reconstructions.

Bugs caught: a scalar or image the run promises that never reaches the tracker; points logged
twice at a step (the last read of the loop, the final images at a checkpoint's step); the
evaluation not run at its steps, or its time counted in the training budget; a resumed run that
restarts the tracker's steps or keeps the points after the checkpoint.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fdm_cli
from fdm_cli.training.evaluation import METRICS_FILE, read_metrics

from .conftest import TINY, run_cli
from .test_eval import env  # noqa: F401  (a fixture: the stand-in FID network, a fresh cache)
from .test_tracking import events, points
from .test_train_autoencoder import TINY_AE

pytest.importorskip("tensorboard")

EVAL = ["--set", "train.eval_every=2", "--set", "train.eval_num=8", "--set", "train.eval_steps=4"]


def _steps(acc: object, tag: str) -> list[int]:
    return [step for step, _ in points(acc, tag)]


def test_a_tracked_evaluated_run_logs_everything_once_and_resumes(
    env: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", "--out", run_dir, "--max-steps", "4", "--log", "tensorboard", *EVAL,
        "--set", "train.checkpoint_every=2", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step 2: FID" in result.output and "not in the budget" in result.output
    acc = events(run_dir)
    tags = set(acc.Tags()["scalars"])
    stages = {f"train/loss_stage{k}" for k in range(3)}
    assert {"train/loss", "train/lr", "train/grad_norm", *stages} <= tags
    assert {"perf/images_per_s", "perf/data_share", "perf/backward_share"} <= tags
    assert {"eval/fid", "eval/kid", "eval/precision", "eval/recall", "eval/seconds"} <= tags
    assert "perf/gpu_mem_gib" not in tags  # CUDA only
    assert _steps(acc, "train/loss") == [1, 2, 3, 4]
    assert _steps(acc, "perf/images_per_s") == [1, 2, 3, 4]  # no second point at the end
    assert _steps(acc, "eval/fid") == [2, 4]
    images = acc.Tags()["images"]
    assert {"samples/grid", "samples/strip"} <= set(images)
    assert [e.step for e in acc.Images("samples/grid")] == [2, 4]  # final = step 4's, once
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [int(r["step"]) for r in rows] == [2, 4]
    fids = [v for _, v in points(acc, "eval/fid")]
    assert fids == pytest.approx([r["fid"] for r in rows])

    # Resumed from the step-4 checkpoint through the Python API: both continue at step 5. (Its
    # event file is named later, as a new process's would be: files are read in name order.)
    writer = pytest.importorskip("tensorboard.summary.writer.event_file_writer")
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: time.time() + 3600))
    config = fdm_cli.train_config(overrides={"train.max_steps": 6}, resume_dir=run_dir)
    assert config.train.trackers == ["tensorboard"] and config.train.eval_every == 2
    fdm_cli.train(config, run_dir, resume=True)
    acc = events(run_dir)
    counts = Counter(_steps(acc, "train/loss"))
    assert sorted(counts) == [1, 2, 3, 4, 5, 6] and set(counts.values()) == {1}
    assert _steps(acc, "eval/fid") == [2, 4, 6]
    assert [int(r["step"]) for r in read_metrics(run_dir / METRICS_FILE)] == [2, 4, 6]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_peak_gpu_memory_reaches_the_tracker(tmp_path: Path) -> None:
    cuda = ["cuda" if a == "cpu" else a for a in TINY]
    run_dir = tmp_path / "run"
    result = run_cli("train", "--out", run_dir, "--max-steps", "3", "--log", "tensorboard", *cuda)
    assert result.exit_code == 0, result.output
    memory = points(events(run_dir), "perf/gpu_mem_gib")
    assert [step for step, _ in memory] == [1, 2, 3]
    assert all(
        0 < gib < torch.cuda.get_device_properties(0).total_memory / 2**30 for _, gib in memory
    )


def test_the_autoencoder_trainer_logs_its_losses_psnr_and_reconstructions(tmp_path: Path) -> None:
    run_dir = tmp_path / "ae"
    args = ["train-autoencoder", "--out", run_dir, "--max-steps", "3", "--log", "tensorboard"]
    result = run_cli(*args, *TINY_AE)
    assert result.exit_code == 0, result.output
    acc = events(run_dir)
    for tag in ("train/loss", "train/reconstruction", "train/regularization", "train/lr"):
        assert _steps(acc, tag) == [1, 2, 3], tag
    assert _steps(acc, "eval/psnr_db") == [3]
    assert [e.step for e in acc.Images("samples/reconstructions")] == [3]
