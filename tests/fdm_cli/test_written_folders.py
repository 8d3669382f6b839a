"""Folders written by an earlier fdm (tests/fdm_cli/fixtures/written-by-0a275c7, see its README)
load, sample and resume with today's code: moving code between modules must not change a file
format, a config key or a checkpoint key.

Bugs caught: a renamed config or checkpoint key (the resume is refused, or starts again at step
0), an optimizer or data-order state restored differently (the resumed losses differ from those
the earlier code wrote for the same resume), a model folder the loader no longer recognises.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from fdm_cli.generation.sampling import load_model

from .conftest import run_cli

WRITTEN = Path(__file__).parent / "fixtures" / "written-by-0a275c7"


def _losses(path: Path, column: str = "loss") -> dict[int, float]:
    with path.open() as f:
        return {int(row["step"]): float(row[column]) for row in csv.DictReader(f)}


@pytest.fixture
def copy(tmp_path: Path):
    def make(name: str) -> Path:
        return Path(shutil.copytree(WRITTEN / name, tmp_path / name))

    return make


@pytest.mark.parametrize("source", [".", "model", "checkpoints/latest"])
def test_an_earlier_model_samples(copy, tmp_path: Path, source: str) -> None:
    run = copy("fdm-run")
    path = run / source
    if source.endswith("latest"):
        path = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    out = tmp_path / "grid.png"
    result = run_cli("sample", path, "--num", "4", "--steps", "6", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    loaded = load_model(path)
    assert loaded.process.num_stages == 3


def test_an_earlier_run_resumes_with_the_losses_it_would_have_had(copy) -> None:
    run = copy("fdm-run")
    result = run_cli("train", "--out", run, "--resume", "--max-steps", "4", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    got = _losses(run / "loss.csv")
    want = _losses(WRITTEN / "fdm-run-resumed-to-4-loss.csv")
    assert sorted(got) == [1, 2, 3, 4]
    assert got == pytest.approx(want, rel=1e-5)


def test_an_earlier_autoencoder_run_resumes_with_the_losses_it_would_have_had(copy) -> None:
    run = copy("ae-run")
    result = run_cli(
        "train-autoencoder", "--out", run, "--resume", "--max-steps", "4", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    got = _losses(run / "loss.csv")
    want = _losses(WRITTEN / "ae-run-resumed-to-4-loss.csv")
    assert sorted(got) == [1, 2, 3, 4]
    assert got == pytest.approx(want, rel=1e-5)


def test_an_earlier_autoencoder_folder_is_a_latent_f_dm_asset(copy, tmp_path: Path) -> None:
    """The fdm-vae preset reads an autoencoder folder written by the earlier trainer."""
    run = copy("ae-run")
    result = run_cli(
        "train", "--preset", "fdm-vae", "--autoencoder", run, "--resolution", "16",
        "--out", tmp_path / "vae", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "latent" in result.output
