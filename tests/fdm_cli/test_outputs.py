"""No command overwrites a user's file unless asked (--overwrite), and none writes over one of its
own inputs even then (fdm_cli.artifacts.outputs). Every refusal is one line, exit 2, before any
work."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .conftest import refused


def test_sample_keeps_an_existing_grid_unless_told(ds_run: Path, tmp_path: Path, cli) -> None:
    """Catches `fdm sample --out` silently replacing a file (the bug in the issue)."""
    grid = tmp_path / "mine.png"
    grid.write_bytes(b"the user's picture")
    args = ["sample", ds_run, "--num", "2", "--steps", "4", "--out", grid]
    refused(cli(*args), f"{grid} already exists", "--overwrite")
    assert grid.read_bytes() == b"the user's picture"
    strip = tmp_path / "strip.png"
    strip.write_bytes(b"old strip")
    refused(cli(*args[:-2], "--out", tmp_path / "new.png", "--strip", strip), "strip.png")
    assert not (tmp_path / "new.png").exists()  # refused before anything was written
    result = cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size[0] > 0


def test_sample_out_dir_names_the_first_existing_file(ds_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "each"
    out.mkdir()
    (out / "sample-00001.png").write_bytes(b"keep")
    (out / "sample-00002.png").write_bytes(b"keep")
    args = ["sample", ds_run, "--num", "3", "--steps", "4", "--out-dir", out]
    refused(cli(*args), "sample-00001.png already exists (and 1 more)")
    assert sorted(p.name for p in out.iterdir()) == ["sample-00001.png", "sample-00002.png"]


def test_sample_never_writes_over_the_model_it_reads(ds_run: Path, tmp_path: Path, cli) -> None:
    """Even with --overwrite: the issue's `sample --out model.safetensors` destroyed the model."""
    weights = ds_run / "model" / "model.safetensors"
    before = weights.read_bytes()
    args = ["sample", ds_run / "model", "--num", "2", "--steps", "4", "--out", weights]
    refused(cli(*args, "--overwrite"), "is one of this command's inputs")
    assert weights.read_bytes() == before


def test_restore_never_writes_over_its_input_images(ds_run: Path, tmp_path: Path, cli) -> None:
    """`super-resolve IMG --out FOLDER_OF_IMG` would replace IMG with its result."""
    low = tmp_path / "low.png"
    Image.new("L", (8, 8), 120).save(low)
    before = low.read_bytes()
    args = ["super-resolve", ds_run, low, "--out", tmp_path, "--steps", "4"]
    refused(cli(*args), "low.png is one of this command's inputs")
    refused(cli(*args, "--overwrite"), "is one of this command's inputs")
    assert low.read_bytes() == before
    out = tmp_path / "sr"
    out.mkdir()
    (out / "low-compare.png").write_bytes(b"keep")
    refused(cli("super-resolve", ds_run, low, "--out", out, "--steps", "4"), "already exists")
    assert not (out / "low.png").exists()
    result = cli("super-resolve", ds_run, low, "--out", out, "--steps", "4", "--overwrite")
    assert result.exit_code == 0, result.output


def test_train_refuses_a_non_empty_folder_without_a_checkpoint(tmp_path: Path, cli, tiny) -> None:
    """A finished run whose checkpoints/ was deleted still holds its model/ and samples: a new
    run there would silently replace them."""
    run_dir = tmp_path / "finished"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "model.safetensors").write_bytes(b"weights of a finished run")
    refused(cli("train", "--out", run_dir, "--max-steps", "1", *tiny), "holds no checkpoint")
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"weights of a finished run"
    result = cli("train", "--out", run_dir, "--max-steps", "1", "--overwrite", *tiny)
    assert result.exit_code == 0, result.output
    assert (run_dir / "model" / "model.safetensors").read_bytes() != b"weights of a finished run"


def test_train_overwrite_starts_over_without_old_checkpoints(tmp_path: Path, cli, tiny) -> None:
    run_dir = tmp_path / "run"
    assert cli("train", "--out", run_dir, "--max-steps", "3", *tiny).exit_code == 0
    refused(cli("train", "--out", run_dir, "--max-steps", "1", *tiny), "--resume")
    result = cli("train", "--out", run_dir, "--max-steps", "1", "--overwrite", *tiny)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.safetensors"))
    assert names == ["step-00000001.safetensors"], names  # the 3-step run's are gone


def test_eval_keeps_an_existing_metrics_file(ds_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "metrics.json"
    out.write_text('{"fid": 12.3}')
    refused(cli("eval", ds_run, "--num", "8", "--out", out), "already exists", "--overwrite")
    assert out.read_text() == '{"fid": 12.3}'
