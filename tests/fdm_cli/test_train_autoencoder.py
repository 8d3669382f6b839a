"""`fdm train-autoencoder`: run-dir contents, metrics, exact resume, refusals, user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.artifacts.pictures import to_uint8
from fdm_cli.cli.app import app
from fdm_cli.config.autoencoder import resolve_autoencoder_config
from fdm_cli.data.dataset import load_dataset
from fdm_cli.training.autoencoder import run_autoencoder_training
from fdm_core import load_state
from fdm_models import is_autoencoder_dir, load_autoencoder

# A ~3k-parameter autoencoder, 4-image batches, 8 held-out images: about a second per run.
TINY_AE = (
    "--base-channels 4 --batch-size 4 --holdout 8 --device cpu --no-progress "
    "--set train.scale_images=16 --set train.show=4 --set train.log_every=1 "
    "--set optim.warmup_steps=2"
).split()
TINY_FLAGS = {
    "model.base_channels": 4,
    "train.batch_size": 4,
    "train.holdout": 8,
    "train.device": "cpu",
    "train.scale_images": 16,
    "train.show": 4,
    "train.log_every": 1,
    "optim.warmup_steps": 2,
}


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny KL autoencoder run: 3 steps, a checkpoint every 2."""
    run_dir = tmp_path_factory.mktemp("runs") / "ae"
    result = CliRunner().invoke(
        app,
        [
            "train-autoencoder",
            "--out",
            str(run_dir),
            "--max-steps",
            "3",
            "--set",
            "train.checkpoint_every=2",
            *TINY_AE,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done: PSNR" in result.output and "3 steps" in result.output
    return run_dir


def test_run_writes_model_reconstructions_and_metrics(ae_run: Path) -> None:
    names = {p.relative_to(ae_run).as_posix() for p in ae_run.rglob("*") if p.is_file()}
    assert names == {
        "config.yaml",
        "loss.csv",
        "loss.png",
        "metrics.json",
        "checkpoints/latest",
        "checkpoints/step-00000002.safetensors",
        "checkpoints/step-00000003.safetensors",
        "model/config.json",
        "model/model.safetensors",
        "samples/reconstructions.png",
    }  # no temporary files, nothing pickled
    metrics = json.loads((ae_run / "metrics.json").read_text())
    assert metrics["holdout"] == 8 and metrics["steps"] == 3
    assert math.isfinite(metrics["psnr_db"]) and metrics["psnr_db"] > 0
    assert metrics["wall_s"] > 0 and metrics["codebook_usage"] is None
    assert is_autoencoder_dir(ae_run / "model")
    model = load_autoencoder(ae_run / "model")
    assert model.config.base_channels == 4 and model.latent_shape == (4, 8, 8)
    assert not torch.equal(model.latent_scale, torch.ones(4))  # the latent scale was fitted
    state, config = load_state(ckpt.latest_checkpoint(ae_run))
    assert set(state) == {"model", "optimizer", "rng", "progress"}
    assert state["progress"]["step"] == 3 and state["progress"]["position"] == 12
    assert config["model"]["bottleneck"] == "kl" and config["train"]["holdout"] == 8
    assert [row[0] for row in read_loss_csv(ae_run / "loss.csv")] == [1, 2, 3]


def test_reconstruction_grid_shows_held_out_originals_above(ae_run: Path) -> None:
    grid = np.asarray(Image.open(ae_run / "samples" / "reconstructions.png"))
    assert grid.shape[:2] == (2 * 34 + 2, 4 * 34 + 2)  # 4 originals, 4 reconstructions below
    dataset = load_dataset("fashion-mnist", 32, 1)
    held = dataset.batch(torch.arange(len(dataset) - 8, len(dataset) - 4))
    for i, tile in enumerate(to_uint8(held)[..., 0]):
        assert np.array_equal(grid[2:34, 2 + 34 * i : 34 + 34 * i], tile)  # the held-out images
    model = load_autoencoder(ae_run / "model")
    with torch.no_grad():
        rec = to_uint8(model(held).clamp(-1, 1))[..., 0]
    assert np.array_equal(grid[36:68, 2:34], rec[0])  # ... and their reconstructions


def test_psnr_is_the_mean_over_held_out_images(ae_run: Path) -> None:
    dataset = load_dataset("fashion-mnist", 32, 1)
    held = dataset.batch(torch.arange(len(dataset) - 8, len(dataset)))
    with torch.no_grad():
        rec = load_autoencoder(ae_run / "model")(held).clamp(-1, 1)
    mse = (rec - held).pow(2).flatten(1).mean(1)
    expected = float((10 * torch.log10(2.0**2 / mse)).mean())  # peak-to-peak 2 in [-1, 1]
    metrics = json.loads((ae_run / "metrics.json").read_text())
    assert metrics["psnr_db"] == pytest.approx(expected, abs=1e-4)


def test_held_out_images_are_never_trained_on(tmp_path: Path, monkeypatch, cli) -> None:
    from fdm_cli.data.dataset import DataOrder

    seen: list[torch.Tensor] = []
    take = DataOrder.take

    def spy(self: DataOrder, position: int, count: int) -> tuple:
        idx, flip = take(self, position, count)
        seen.append(idx)
        return idx, flip

    monkeypatch.setattr(DataOrder, "take", spy)
    args = [*TINY_AE, "--holdout", "9990", "--set", "train.scale_images=4"]
    result = cli("train-autoencoder", "--out", tmp_path / "run", "--max-steps", "4", *args)
    assert result.exit_code == 0, result.output
    assert sorted(set(torch.cat(seen).tolist())) == list(range(10))  # the 10 training images
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["holdout"] == 9990


def test_existing_run_is_refused_without_resume(ae_run: Path, cli) -> None:
    before = {p: p.read_bytes() for p in ae_run.rglob("*") if p.is_file()}
    result = cli("train-autoencoder", "--out", ae_run, "--max-steps", "1", *TINY_AE)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"fdm: error: {ae_run} already holds a run (step-00000003.safetensors); pass --resume "
        "to continue it, or choose another --out"
    )
    assert before == {p: p.read_bytes() for p in ae_run.rglob("*") if p.is_file()}


def _assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = read_loss_csv(a / "loss.csv"), read_loss_csv(b / "loss.csv")
    assert len(rows_a) == len(rows_b) == 4
    assert [r[:-1] for r in rows_a] == [r[:-1] for r in rows_b]  # all but elapsed_s, exactly
    wa, wb = (
        load_file(a / "model" / "model.safetensors"),
        load_file(b / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    sa, _ = load_state(ckpt.latest_checkpoint(a))
    sb, _ = load_state(ckpt.latest_checkpoint(b))
    for key, value in sa["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, sb["optimizer"]["state"][key][name])


def test_cli_resume_continues_bit_exactly(tmp_path: Path, cli) -> None:
    common = ["--set", "optim.decay=constant", *TINY_AE]
    whole = cli("train-autoencoder", "--out", tmp_path / "whole", "--max-steps", "4", *common)
    assert whole.exit_code == 0, whole.output
    first = cli("train-autoencoder", "--out", tmp_path / "split", "--max-steps", "2", *common)
    assert first.exit_code == 0, first.output
    second = cli(
        "train-autoencoder", "--out", tmp_path / "split", "--max-steps", "4", "--resume", *common
    )
    assert second.exit_code == 0, second.output
    assert "resuming from" in second.output and "step 2" in second.output
    _assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_interrupted_vq_run_resumes_exactly(tmp_path: Path) -> None:
    cfg = resolve_autoencoder_config(
        {**TINY_FLAGS, "train.max_steps": 4, "model.bottleneck": "vq"},
        ["model.codebook_size=16"],
    )
    whole = run_autoencoder_training(cfg, tmp_path / "whole", show_progress=False)
    assert whole.codebook_usage is not None and 0 < whole.codebook_usage <= 1
    stopped = run_autoencoder_training(
        cfg, tmp_path / "split", show_progress=False, should_stop=lambda step: step == 2
    )
    assert stopped.interrupted and stopped.step == 2
    assert not (tmp_path / "split" / "model").exists()
    resumed = run_autoencoder_training(cfg, tmp_path / "split", resume=True, show_progress=False)
    assert resumed.step == 4 and resumed.psnr_db == whole.psnr_db
    _assert_same_run(tmp_path / "whole", tmp_path / "split")
    metrics = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert metrics["codebook_usage"] == whole.codebook_usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factor", "3"], "model.factor: Input should be 2, 4 or 8 (got 3)"),
        (["--resolution", "30"], "resolution = 30 is not divisible by factor = 4"),
        (["--bottleneck", "ae"], "model.bottleneck: Input should be 'kl' or 'vq'"),
        (["--holdout", "10000"], "--holdout 10000 leaves no training images"),
        (["--max-steps", "2", "--minutes", "1"], "--max-steps and --minutes are alternatives"),
        (["--batch-size", "0"], "train.batch_size: Input should be greater than 0"),
        (["--set", "model.nonsense=1"], "model.nonsense: Extra inputs are not permitted"),
        (["--data", "no/such/data"], "data source 'no/such/data' not found"),
        (["--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, cli
) -> None:
    result = cli("train-autoencoder", "--out", tmp_path / "run", "--max-steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().startswith("fdm: error:")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dry_run_prints_the_resolved_config(tmp_path: Path, cli) -> None:
    result = cli("train-autoencoder", "--dry-run", "--bottleneck", "vq", "--factor", "8")
    assert result.exit_code == 0, result.output
    assert "bottleneck: vq" in result.output and "minutes: 3.0" in result.output
    assert "latent 4x4x4 (vq); RUN_DIR runs/autoencoder" in result.output
