"""fdm-vae and ldm through the CLI: train, sample and the stage strip work end to end; the run and
its MODEL_DIR carry the autoencoder (docs/design.md §10.5), so they survive a move and the
original folder's deletion, and a different autoencoder is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fdm_models import Autoencoder, AutoencoderConfig, save_autoencoder

from .conftest import TINY, run_cli


def make_autoencoder(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = Autoencoder(AutoencoderConfig(resolution=32, factor=4, base_channels=8))
    model.fit_latent_scale(torch.rand(32, 1, 32, 32) * 2 - 1)
    save_autoencoder(model, folder)
    return folder


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step fdm-vae run, moved elsewhere after training, its autoencoder deleted."""
    root = tmp_path_factory.mktemp("vae")
    ae = make_autoencoder(root / "ae", seed=0)
    result = run_cli(
        "train", "--preset", "fdm-vae", "--autoencoder", ae, "--out", root / "run",
        "--max-steps", "2", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shutil.rmtree(ae)
    shutil.move(root / "run", root / "moved")
    return root, root / "moved"


def test_a_vae_run_bundles_its_autoencoder(vae_run):
    _, run = vae_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    path = config["process"]["transforms"][0]["path"]
    assert path.startswith("assets/autoencoder-") and (run / path / "model.safetensors").is_file()
    assert (run / "model" / path / "model.safetensors").is_file()
    strip = Image.open(run / "samples" / "final-strip.png")
    assert strip.width >= 2 * 64  # two stage columns of 64 px tiles: the latent shown decoded


@pytest.mark.parametrize("target", ["run", "model"])
def test_a_moved_vae_model_samples_without_the_original_autoencoder(vae_run, target):
    root, run = vae_run
    model = run if target == "run" else run / "model"
    out, strip = root / f"{target}.png", root / f"{target}-strip.png"
    result = run_cli(
        "sample", model, "--num", "2", "--steps", "4", "--out", out, "--strip", strip,
        "--strip-rows", "2", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 32 and Image.open(strip).size[1] >= 64


def test_a_changed_autoencoder_copy_is_refused(vae_run, tmp_path):
    _, run = vae_run
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    (bundled,) = (model / "assets").iterdir()
    make_autoencoder(tmp_path / "other", seed=1)
    shutil.copy(tmp_path / "other" / "model.safetensors", bundled / "model.safetensors")
    result = run_cli("sample", model, "--num", "1", "--steps", "2", "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "changed or replaced" in result.output and "Traceback" not in result.output


def test_resuming_with_a_different_autoencoder_is_refused(tmp_path):
    ae = make_autoencoder(tmp_path / "ae", seed=0)
    args = ["--preset", "fdm-vae", "--out", tmp_path / "run", "--max-steps", "1", *TINY]
    assert run_cli("train", "--autoencoder", ae, *args).exit_code == 0
    other = make_autoencoder(tmp_path / "other", seed=1)
    result = run_cli("train", "--autoencoder", other, "--resume", *args)
    assert result.exit_code == 2
    assert "differs from the checkpoint" in result.output
    assert "process.transforms" in result.output
    same = run_cli("train", "--autoencoder", ae, "--resume", *args[: -len(TINY)], *TINY)
    assert same.exit_code == 0, same.output  # the same content bundles to the same path
    shutil.rmtree(ae)  # resuming from the run's own config needs only its bundled copy
    own = run_cli("train", "--out", tmp_path / "run", "--resume", "--max-steps", "3", *TINY)
    assert own.exit_code == 0, own.output


def test_ldm_trains_and_samples_in_the_latent_and_restoration_is_refused(tmp_path):
    ae = make_autoencoder(tmp_path / "ae", seed=0)
    run = tmp_path / "ldm"
    result = run_cli(
        "train", "--preset", "ldm", "--autoencoder", ae, "--out", run, "--max-steps", "2", *TINY
    )
    assert result.exit_code == 0, result.output
    assert "stages 4x8x8" in result.output.replace("\n", " ")
    grid = tmp_path / "grid.png"
    sampled = run_cli("sample", run, "--num", "2", "--steps", "3", "--out", grid)
    assert sampled.exit_code == 0, sampled.output
    assert Image.open(grid).size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # decoded to 32x32 images
    low = tmp_path / "low.png"
    Image.new("L", (8, 8)).save(low)
    for task in ("super-resolve", "deblur"):
        refused = run_cli(task, run, low, "--out", tmp_path / "out")
        assert refused.exit_code == 2
        assert "latent space (latent diffusion)" in refused.output


def test_super_resolve_on_fdm_vae_says_the_stage_is_a_latent(vae_run, tmp_path):
    _, run = vae_run
    low = tmp_path / "low.png"
    Image.new("L", (8, 8)).save(low)
    result = run_cli("super-resolve", run, low, "--out", tmp_path / "sr")
    assert result.exit_code == 2
    assert "is the latent of its autoencoder transform" in result.output


def test_a_missing_autoencoder_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--preset", "fdm-vae", "--dry-run")
    assert result.exit_code == 2
    assert "runs/autoencoder does not exist" in result.output
    assert "fdm train-autoencoder" in result.output
    result = run_cli("train", "--preset", "fdm-ds", "--autoencoder", tmp_path, "--dry-run")
    assert result.exit_code == 2 and "has no autoencoder transform" in result.output


def test_set_process_autoencoder_is_the_flag(tmp_path):
    """`--set process.autoencoder=DIR` (as the presets' docs say) points every autoencoder
    transform of the chain, or the latent of ldm, at DIR."""
    from fdm_cli.config.train import resolve_train_config

    ae = make_autoencoder(tmp_path / "ae", seed=0)
    vae = resolve_train_config(None, "fdm-vae", overrides=[f"process.autoencoder={ae}"])
    assert vae.process.transforms[0].as_dict()["path"] == str(ae)
    ldm = resolve_train_config(None, "ldm", {"process.autoencoder": str(ae)})
    assert ldm.process.latent.as_dict()["path"] == str(ae)
    assert [list(s) for s in ldm.model.stage_shapes] == [[4, 8, 8]]
