"""The training loop: run-dir contents, checkpoints, and exact resume on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.config.train import TrainConfig, resolve_train_config
from fdm_cli.training.loop import run_training
from fdm_cli.training.schedule import learning_rate
from fdm_core import load_state

TINY = {
    "model.base_channels": 8,
    "model.num_heads": 2,
    "train.batch_size": 6,
    "train.device": "cpu",
    "train.checkpoint_every": 1000,
    "sample.num": 2,
    "sample.steps": 3,
    "sample.strip_rows": 2,
    "optim.warmup_steps": 2,
    "train.log_every": 1,
}


def tiny_config(
    steps: int | None, minutes: float | None = None, preset: str = "fdm-ds", **sets: object
) -> TrainConfig:
    """A tiny fdm-ds (or `preset`) trained for `steps` steps or `minutes`; `sets` are further
    dotted-key flags."""
    flags = {**TINY, "train.max_steps": steps, "train.minutes": minutes, **sets}
    return resolve_train_config(None, preset, flags)


def test_run_dir_contents(ds_run: Path) -> None:
    names = {p.relative_to(ds_run).as_posix() for p in ds_run.rglob("*") if p.is_file()}
    expected = {
        "config.yaml",
        "loss.csv",
        "loss.png",
        "checkpoints/latest",
        "checkpoints/step-00000002.safetensors",
        "checkpoints/step-00000004.safetensors",
        "samples/step-00000002.png",
        "samples/strip-00000002.png",
        "samples/step-00000004.png",
        "samples/strip-00000004.png",
        "samples/final.png",
        "samples/final-strip.png",
        "model/config.json",
        "model/model.safetensors",
    }
    assert names == expected  # no temporary files, nothing pickled
    grid = Image.open(ds_run / "samples" / "final.png")
    assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # 4 samples of 32x32, 2 px padding
    tile = np.asarray(grid)[2:34, 2:34]
    assert len(np.unique(tile)) > 10  # not a constant image
    strip = Image.open(ds_run / "samples" / "final-strip.png")
    assert strip.size == (3 * 66 + 2, 26 + 2 * 66 + 2)  # 3 stages x 2 rows of 64 px tiles
    rows = read_loss_csv(ds_run / "loss.csv")
    assert [r[0] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r[1]) for r in rows)


def test_checkpoint_holds_full_training_state(ds_run: Path) -> None:
    latest = ckpt.latest_checkpoint(ds_run)
    assert latest is not None and latest.name == "step-00000004.safetensors"
    assert (ds_run / "checkpoints" / "latest").read_text().strip() == latest.name
    state, config = load_state(latest)
    assert set(state) == {"model", "ema", "optimizer", "rng", "progress"}
    assert state["progress"]["step"] == 4 and state["progress"]["position"] == 4 * 6
    assert config["process"]["transforms"][0]["name"] == "downsample"
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert len(state["optimizer"]["state"]) == len(state["model"])


def test_keep_last_k_checkpoints(tmp_path: Path) -> None:
    cfg = tiny_config(
        5,
        **{
            "train.checkpoint_every": 1,
            "train.keep_checkpoints": 2,
            "sample.num": 1,
            "sample.steps": 3,
        },
    )
    run_training(cfg, tmp_path / "run", show_progress=False)
    kept = [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")]
    assert kept == [4, 5]


def _final_state(run_dir: Path) -> dict:
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    return state


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = _final_state(a), _final_state(b)
    assert sa["progress"]["step"] == sb["progress"]["step"]
    assert sa["progress"]["position"] == sb["progress"]["position"]
    for section in ("model", "ema"):
        assert sa[section].keys() == sb[section].keys()
        for key in sa[section]:
            assert torch.equal(sa[section][key], sb[section][key]), f"{section}.{key}"
    for key, value in sa["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, sb["optimizer"]["state"][key][name])
    rows_a, rows_b = read_loss_csv(a / "loss.csv"), read_loss_csv(b / "loss.csv")
    assert len(rows_a) == len(rows_b) == sa["progress"]["step"]
    for ra, rb in zip(rows_a, rows_b, strict=True):  # every column but elapsed_s, exactly
        assert [x for x in ra[:-1] if not math.isnan(x)] == [
            x for x in rb[:-1] if not math.isnan(x)
        ]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = tiny_config(6, **{"optim.decay": "cosine", "model.dropout": 0.1})
    run_training(cfg, tmp_path / "whole", show_progress=False)
    stopped = run_training(
        cfg, tmp_path / "split", show_progress=False, should_stop=lambda step: step == 3
    )
    assert stopped.interrupted and stopped.step == 3
    assert not (tmp_path / "split" / "samples" / "final.png").exists()
    resumed = run_training(cfg, tmp_path / "split", resume=True, show_progress=False)
    assert resumed.step == 6 and not resumed.interrupted
    _assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_cli_resume_extends_a_finished_run_exactly(tmp_path: Path, cli, tiny) -> None:
    common = [
        "--set",
        "optim.decay=constant",
        "--set",
        "train.checkpoint_every=1000",
        "--set",
        "sample.num=1",
        "--set",
        "sample.steps=3",
        *tiny,
    ]
    assert cli("train", "--out", tmp_path / "whole", "--max-steps", "4", *common).exit_code == 0
    assert cli("train", "--out", tmp_path / "split", "--max-steps", "2", *common).exit_code == 0
    result = cli("train", "--out", tmp_path / "split", "--max-steps", "4", "--resume", *common)
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    _assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    result = run_training(
        tiny_config(1, **{"sample.num": 1}), tmp_path / "new", resume=True, show_progress=False
    )
    assert result.step == 1 and (tmp_path / "new" / "model" / "config.json").is_file()


def test_learning_rate_schedule() -> None:
    cfg = tiny_config(100, **{"optim.warmup_steps": 10, "optim.lr": 1.0})
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 100, 0.0) == pytest.approx(0.1)
    constant = tiny_config(100, **{"optim.decay": "constant", "optim.lr": 1.0})
    assert learning_rate(constant, 99, 0.0) == 1.0


def test_minutes_budget_stops_training(tmp_path: Path) -> None:
    cfg = tiny_config(None, minutes=0.001)  # 60 ms: a step or two
    result = run_training(cfg, tmp_path / "timed", show_progress=False)
    assert 1 <= result.step <= 5 and (tmp_path / "timed" / "samples" / "final.png").is_file()


def test_ablation_and_ddpm_presets_train(tmp_path: Path) -> None:
    cfg = tiny_config(
        1, preset="ddpm", **{"sample.num": 1, "sample.steps": 2, "train.batch_size": 4}
    )
    result = run_training(cfg, tmp_path / "ddpm", show_progress=False)
    assert result.step == 1
    cfg = tiny_config(1, **{"process.gamma": 0, "process.interpolation": False, "sample.num": 1})
    assert run_training(cfg, tmp_path / "ablation", show_progress=False).step == 1
