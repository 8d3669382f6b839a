"""Every user-error path: one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from PIL import Image

from .conftest import png_header_only, refused


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    Image.new("L", (8, 8), 100).save(root / "small8.png")
    Image.new("L", (20, 20), 100).save(root / "odd20.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "red8.png")
    Image.new("L", (32, 32), 100).save(root / "full32.png")
    (root / "fake.png").write_bytes(b"this is not a png")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n")
    (root / "preset.yaml").write_text("preset: fdm-xyz\n")
    (root / "empty_dir").mkdir()
    idx = root / "idx"
    idx.mkdir()
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 4, 4)
    (idx / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + b"\x00" * 5))
    (root / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (root / "no_ckpt").mkdir()
    return {p.name: p for p in root.iterdir()}


TRAIN_ERRORS = [
    (
        ["--preset", "fdm-xyz"],
        "Invalid value for '--preset': 'fdm-xyz' is not one of 'fdm-ds', "
        "'fdm-blur-g', 'fdm-blur-u', 'fdm-vae', 'ldm', 'ddpm', 'fdm-ds-64', 'ddpm-64', "
        "'fdm-ds-256', 'ddpm-256'. (see 'fdm train --help')",
    ),
    (["--set", "process.gamma"], "--set expects key=value"),
    (["--set", "model.nonsense=1"], "model.nonsense: Extra inputs are not permitted"),
    (["--set", "process.gamma=abc"], "process.gamma: Input should be a valid number"),
    (["--set", "process.noise_schedule.name=nope"], "unknown noise_schedule 'nope'; registered:"),
    (["--set", "process.transforms.5.factor=2"], "is not an index of a list of 2 items"),
    (["--max-steps", "3", "--minutes", "1"], "--max-steps and --minutes are alternatives"),
    (["--max-steps", "0"], "train.max_steps: Input should be greater than 0"),
    (["--batch-size", "-2"], "train.batch_size: Input should be greater than 0"),
    (["--lr", "-1"], "optim.lr: Input should be greater than 0"),
    (
        ["--precision", "fp8"],
        "Invalid value for '--precision': 'fp8' is not one of 'fp32', 'bf16', 'fp16'",
    ),
    (
        ["--set", "train.precision=fp8"],
        "train.precision: Input should be 'fp32', 'bf16' or 'fp16'",
    ),
    (["--log", "mlflow"], "train.trackers.0: Input should be 'tensorboard' or 'wandb'"),
    (["--set", "train.keep_best=true"], "train.keep_best needs train.eval_every"),
    (["--device", "tpu"], "train.device: unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N"),
    (["--set", "train.device=cuda:x"], "unknown device 'cuda:x'; allowed: auto, cpu, cuda"),
    (["--resolution", "30"], "cannot take stage"),
    (["--data", "no/such/data"], "data source 'no/such/data' not found: use 'fashion-mnist'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
]


def assert_one_error_line(output: str) -> None:
    assert output.strip().startswith("fdm: error:"), output
    assert len(output.strip().splitlines()) == 1, output
    assert "Traceback" not in output


@pytest.mark.parametrize(("args", "message"), TRAIN_ERRORS)
def test_train_user_errors(args: list[str], message: str, tmp_path: Path, cli) -> None:
    result = cli("train", "--out", tmp_path / "run", "--dry-run", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert_one_error_line(result.output)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad.yaml", "is not valid yaml"),
        ("list.yaml", "must hold a mapping"),
        ("missing.yaml", "config file not found"),
        ("preset.yaml", "unknown preset 'fdm-xyz'; allowed: fdm-ds, fdm-blur-g, fdm-blur-u"),
    ],
)
def test_train_config_file_errors(
    name: str, message: str, files: dict, tmp_path: Path, cli
) -> None:
    path = files.get(name, tmp_path / name)
    result = cli("train", path, "--dry-run")
    assert result.exit_code == 2 and message in result.output
    assert_one_error_line(result.output)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty_dir", "no images found in"),
        ("idx", "truncated or corrupt"),
    ],
)
def test_train_data_errors(name: str, message: str, files: dict, tmp_path: Path, cli) -> None:
    result = cli("train", "--data", files[name], "--out", tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_train_bad_image_in_folder_with_strict(tmp_path: Path, cli, tiny) -> None:
    """--strict refuses a folder holding an unreadable image (without it, the image is skipped:
    tests/fdm_cli/test_data.py::test_fdm_train_on_a_messy_folder)."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("L", (8, 8)).save(data / "ok.png")
    (data / "broken.jpg").write_bytes(b"garbage")
    result = cli("train", "--data", data, "--strict", "--out", tmp_path / "run", "--max-steps",
                 "1", *tiny)  # fmt: skip
    refused(result, "cannot read image", "broken.jpg")


def test_cuda_requested_without_gpu(tmp_path: Path, cli, tiny) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli("train", "--out", tmp_path / "r", "--max-steps", "1", *tiny, "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_existing_run_is_not_overwritten(ds_run: Path, cli, tiny) -> None:
    before = {p: p.read_bytes() for p in ds_run.rglob("*") if p.is_file()}
    result = cli("train", "--out", ds_run, "--max-steps", "1", *tiny)
    assert result.exit_code == 2
    assert "already holds a run" in result.output and "--resume" in result.output
    after = {p: p.read_bytes() for p in ds_run.rglob("*") if p.is_file()}
    assert before == after  # nothing already written is lost


def test_resume_with_a_different_process_is_refused(
    ds_run: Path, tmp_path: Path, cli, tiny
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ds_run, copy)
    result = cli(
        "train", "--out", copy, "--resume", "--max-steps", "8", *tiny, "--set", "process.gamma=0"
    )
    assert result.exit_code == 2 and "the process config differs" in result.output


@pytest.mark.parametrize(
    "args", [["train", "--no-such-flag"], ["sample", "--bogus"], ["no-such-command"], ["sample"]]
)
def test_usage_errors_are_one_line_too(args: list[str], cli) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert_one_error_line(result.output)
    assert "--help'" in result.output  # where to look for what is allowed


SAMPLE_ERRORS = [
    (["{missing}"], "model not found"),
    (["{no_ckpt}"], "holds no checkpoint"),
    (["{corrupt}"], "is not a readable safetensors file"),
    (["{run}", "--stage-seeds", "2:3"], "--stage-seeds expects stage=seed pairs"),
    (["{run}", "--stage-seeds", "9=1"], "stage 9 does not exist; this model has stages 0..2"),
    (["{run}", "--sampler", "euler"], "'--sampler': 'euler' is not one of 'ddim', 'ddpm'"),
    (["{run}", "--sampler", "ddpm", "--eta", "0.5"], "--sampler ddpm means eta = 1"),
    (["{run}", "--eta", "2"], "eta: Input should be less than or equal to 1 (got 2.0)"),
    (["{run}", "--eta", "-0.5"], "eta: Input should be greater than or equal to 0"),
    (["{run}", "--steps", "0"], "steps: Input should be greater than 0 (got 0)"),
    (["{run}", "--num", "0"], "--num 0: must be positive"),
    (["{run}", "--out", "a.png", "--out-dir", "d"], "are alternatives"),
    (["{model}", "--no-ema"], "MODEL_DIR holding only the EMA weights"),
    (
        ["{run}", "--device", "quantum"],
        "'--device': unknown device 'quantum'; allowed: auto, cpu, cuda, cuda:N",
    ),
]


@pytest.mark.parametrize(("args", "message"), SAMPLE_ERRORS)
def test_sample_user_errors(
    args: list[str], message: str, ds_run: Path, files: dict, tmp_path: Path, cli
) -> None:
    fill = {
        "run": ds_run,
        "model": ds_run / "model",
        "missing": tmp_path / "nope",
        "no_ckpt": files["no_ckpt"],
        "corrupt": files["corrupt.safetensors"],
    }
    argv = [a.format(**fill) for a in args]
    steps = [] if "--steps" in argv else ["--steps", "3"]
    result = cli(
        "sample",
        *argv,
        *steps,
        "--num" if "--num" not in argv else "--seed",
        "1" if "--num" not in argv else "0",
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert_one_error_line(result.output)


RESTORE_ERRORS = [
    ("super-resolve", "ds", ["odd20.png"], [], "is 20x20: no stage has that size"),
    (
        "super-resolve",
        "ds",
        ["small8.png"],
        ["--from-stage", "1"],
        "but stage 1 of this model is 16x16",
    ),
    ("super-resolve", "ds", ["red8.png"], [], "is a colour image but the model is grayscale"),
    ("super-resolve", "ds", ["fake.png"], [], "cannot read image"),
    ("super-resolve", "ds", ["missing.png"], [], "image not found"),
    ("super-resolve", "ds", ["small8.png"], ["--from-stage", "7"], "this model has stages 0..2"),
    ("super-resolve", "ds", ["small8.png"], ["--start-t", "0.1"], "stage 2 spans t in"),
    ("super-resolve", "ds", ["full32.png"], ["--from-stage", "0"], "is the data itself"),
    ("super-resolve", "blur", ["full32.png"], [], "super-resolve needs a down-sampling model"),
    ("deblur", "ds", ["full32.png"], [], "deblur needs a blur model"),
    ("deblur", "blur", ["small8.png"], [], "but stage 2 of this model is 32x32"),
]


@pytest.mark.parametrize(("command", "model", "images", "extra", "message"), RESTORE_ERRORS)
def test_restore_user_errors(
    command: str,
    model: str,
    images: list[str],
    extra: list[str],
    message: str,
    ds_run: Path,
    blur_run: Path,
    files: dict,
    tmp_path: Path,
    cli,
) -> None:
    paths = [files.get(name, tmp_path / name) for name in images]
    model_dir = ds_run if model == "ds" else blur_run
    result = cli(command, model_dir, *paths, "--out", tmp_path / "out", "--steps", "3", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert_one_error_line(result.output)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fdm_cli.cli.app import app
    from fdm_cli.errors import UserError

    result = CliRunner().invoke(app, ["--debug", "train", "--set", "process.gamma", "--dry-run"])
    assert isinstance(result.exception, UserError)


def test_a_name_two_plugins_register_is_one_line_where_it_is_used(cli, monkeypatch) -> None:
    """Two plugins registering one name: a run that uses it says so in one line (exit 2),
    naming both; built-in presets and `fdm plugins` still work."""
    from fdm_core import registry

    clashing = registry.load_registry(load_plugins="")
    clashing.clashes["transform", "twin"] = ["fdm-a", "fdm-b"]
    monkeypatch.setattr(registry, "_default", clashing)
    result = cli("train", "--dry-run", "--set", "process.transforms=[twin]")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "'twin' is registered by 'fdm-a' and by 'fdm-b'" in line and line.startswith("fdm: ")
    assert cli("train", "--dry-run").exit_code == 0
    assert cli("plugins").exit_code == 0


def test_seeds_beyond_int64_are_one_line(ds_run: Path, tmp_path: Path, cli, tiny) -> None:
    """`--seed` past 2^63 - 1 overflowed torch's int64 noise seeds with a traceback."""
    big = str(2**63)
    refused(cli("sample", ds_run, "--seed", big, "--out", tmp_path / "g.png"), "2^63 - 1")
    near = str(2**63 - 2)  # fine for one image, not for 4
    refused(cli("sample", ds_run, "--seed", near, "--num", "4", "--out", tmp_path / "g.png"))
    refused(cli("train", "--out", tmp_path / "r", "--seed", big, "--max-steps", "1", *tiny),
            "train.seed")  # fmt: skip
    refused(cli("sample", ds_run, "--seed", "1e23", "--out", tmp_path / "g.png"), "'--seed'")


def test_a_decompression_bomb_is_one_line(ds_run: Path, tmp_path: Path, cli, tiny) -> None:
    bomb = png_header_only(tmp_path / "data" / "bomb.png", 100_000, 100_000)
    refused(cli("super-resolve", ds_run, bomb, "--out", tmp_path / "sr"), "too large to decode")
    refused(cli("train", "--data", bomb.parent, "--out", tmp_path / "r", "--max-steps", "1",
                *tiny), "too large to decode")  # fmt: skip
