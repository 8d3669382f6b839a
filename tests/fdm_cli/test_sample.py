"""fdm sample / super-resolve / deblur / plugins / env through the CLI (in-process)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fdm_cli.generation.sampling import generate, load_model
from fdm_core import SamplerConfig


def test_sample_grid_and_strip(ds_run: Path, tmp_path: Path, cli) -> None:
    result = cli(
        "sample",
        ds_run,
        "--num",
        "6",
        "--steps",
        "6",
        "--out",
        tmp_path / "g.png",
        "--strip",
        tmp_path / "s.png",
        "--strip-rows",
        "3",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)
    assert np.asarray(grid).std() > 5  # not constant
    assert Image.open(tmp_path / "s.png").size == (3 * 66 + 2, 26 + 3 * 66 + 2)


def test_model_dir_and_checkpoint_file_give_the_same_ema_samples(ds_run: Path) -> None:
    config = SamplerConfig(steps=6)
    a = generate(load_model(ds_run), range(3), 5, config).x
    b = generate(load_model(ds_run / "model"), range(3), 5, config).x
    c = generate(
        load_model(ds_run / "checkpoints" / "step-00000004.safetensors"), range(3), 5, config
    ).x
    assert torch.equal(a, b) and torch.equal(a, c)
    raw = generate(load_model(ds_run, ema=False), range(3), 5, config).x
    assert not torch.equal(a, raw)


def test_samples_do_not_depend_on_batch_size(ds_run: Path, tmp_path: Path, cli) -> None:
    model = load_model(ds_run)
    config = SamplerConfig(steps=6, eta=1.0)
    one = generate(model, range(8), 11, config, batch_size=1).x
    eight = generate(model, range(8), 11, config, batch_size=8).x
    assert torch.allclose(one, eight, atol=1e-5)
    for batch in ("1", "8"):
        result = cli(
            "sample",
            ds_run,
            "--num",
            "8",
            "--steps",
            "6",
            "--sampler",
            "ddpm",
            "--seed",
            "11",
            "--batch-size",
            batch,
            "--out-dir",
            tmp_path / batch,
        )
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert files == [f"sample-{i:05d}.png" for i in range(8)]
    for name in files:
        a = np.asarray(Image.open(tmp_path / "1" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "8" / name)).astype(int)
        assert np.abs(a - b).max() <= 1  # equal up to a rounding flip of 1e-5 differences


def test_stage_seeds_change_only_their_stage(ds_run: Path) -> None:
    model = load_model(ds_run)
    config = SamplerConfig(steps=6)
    base = generate(model, range(4), 0, config)
    shared_coarse = generate(model, range(4), 0, config, stage_seeds={2: 3})
    # stage 2 noise is the same for every sample: identical coarse predictions ...
    coarse = shared_coarse.stage_predictions[2]
    assert all(torch.equal(coarse[0], coarse[i]) for i in range(4))
    # ... but the finer stages keep per-sample noise, so the images still differ
    assert not torch.equal(shared_coarse.x[0], shared_coarse.x[1])
    # and sample 3 (seed 0 + 3) was already drawn with seed 3 for stage 2
    assert torch.equal(coarse[3], base.stage_predictions[2][3])
    fine = generate(model, range(4), 0, config, stage_seeds={0: 7})
    for k in (1, 2):  # stage-0 noise enters only at the 1 -> 0 boundary and after
        assert torch.equal(fine.stage_predictions[k], base.stage_predictions[k])
    assert not torch.equal(fine.x, base.x)


def test_super_resolve_from_each_stage(ds_run: Path, tmp_path: Path, cli) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(tmp_path / "c.png")
    out = tmp_path / "sr"
    result = cli(
        "super-resolve",
        ds_run,
        tmp_path / "a.png",
        tmp_path / "b.png",
        tmp_path / "c.png",
        "--out",
        out,
        "--steps",
        "6",
    )
    assert result.exit_code == 0, result.output
    assert "(stage 2)" in result.output and "(stage 1)" in result.output
    for name in ("a", "b", "c"):
        assert Image.open(out / f"{name}.png").size == (32, 32)
        assert Image.open(out / f"{name}-compare.png").size == (2 * 34 + 2, 34 + 2)
    # the output depends on the input
    assert not np.array_equal(
        np.asarray(Image.open(out / "b.png")), np.asarray(Image.open(out / "c.png"))
    )
    # --resize: any image, any stage
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "big.png")
    result = cli(
        "super-resolve",
        ds_run / "model",
        tmp_path / "big.png",
        "--out",
        out,
        "--from-stage",
        "1",
        "--resize",
        "--start-t",
        "0.5",
        "--steps",
        "6",
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out / "big.png").size == (32, 32)


def test_deblur_blur_model(blur_run: Path, tmp_path: Path, cli) -> None:
    Image.new("L", (32, 32), 90).save(tmp_path / "blurry.png")
    result = cli(
        "deblur", blur_run, tmp_path / "blurry.png", "--out", tmp_path / "out", "--steps", "6"
    )
    assert result.exit_code == 0, result.output
    assert "(stage 2)" in result.output  # default: the most blurred stage
    assert Image.open(tmp_path / "out" / "blurry.png").size == (32, 32)
    result = cli(
        "deblur",
        blur_run,
        tmp_path / "blurry.png",
        "--out",
        tmp_path / "o1",
        "--from-stage",
        "1",
        "--steps",
        "6",
    )
    assert result.exit_code == 0 and "(stage 1)" in result.output


def test_plugins_lists_builtins(cli) -> None:
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    rows = {(r["kind"], r["name"]): r for r in table["components"]}
    assert rows["transform", "downsample"]["distribution"] == "fdm-transforms"
    assert rows["noise_schedule", "cosine"]["distribution"] == "fdm-core"
    assert rows["transform", "blur"]["version"]
    assert table["errors"] == []
    text = cli("plugins")
    assert text.exit_code == 0 and "downsample" in text.stdout and "fdm-transforms" in text.stdout


def test_env_reports_stack(cli) -> None:
    result = cli("env", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["torch"] == torch.__version__
    assert info["attention_backend"]["cpu"] in ("sdpa", "math")
    assert info["ops_backend"]["cpu"] == "torch"  # Triton kernels need CUDA tensors
    assert info["packages"]["fdm-cli"] == "0.1.0"
    assert {"python", "triton", "xformers", "cuda_available"} <= set(info)
    installed = importlib.util.find_spec("tensorboard") is not None
    assert (info["trackers"]["tensorboard"] is not None) == installed
    text = cli("env")
    assert (
        text.exit_code == 0 and "attention" in text.stdout and "blur/resampling ops" in text.stdout
    )
    assert "trackers (--log)" in text.stdout


def test_sample_compile_draws_the_eager_images(
    ds_run: Path, tmp_path: Path, cli, monkeypatch
) -> None:
    """``fdm sample --compile`` (one graph per stage, docs/design.md §7.3) reaches the sampler
    and draws the eager run's images: the flag not passed on would leave the sampler eager (no
    graph compiled), a compiled step that mixed up its numbers would change the images."""
    from torch._dynamo.utils import counters

    from fdm_core import COMPILE_BACKEND_ENV

    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")  # no C++ build: minutes on 2 cores
    torch._dynamo.reset()
    counters.clear()
    grids = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / f"{name}.png"
        args = ["--num", "4", "--steps", "6", "--out", out, "--device", "cpu", *flags]
        result = cli("sample", ds_run, *args)
        assert result.exit_code == 0, result.output
        grids[name] = np.asarray(Image.open(out)).astype(int)
    assert counters["stats"]["unique_graphs"] == 3  # one per stage of the 3-stage model
    assert np.abs(grids["eager"] - grids["compiled"]).max() <= 1  # 8-bit rounding
    torch._dynamo.reset()
