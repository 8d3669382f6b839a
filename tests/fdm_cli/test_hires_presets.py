"""The higher-resolution RGB presets (fdm-ds-64, fdm-ds-256 and their ddpm baselines): they need
--data, their structure matches the paper's 64 -> 8 and 256 -> 8 cascades, they train on CPU
(with a narrow UNet), and the per-stage FLOP ratios the preset docs quote are what the UNet
costs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdm_cli.config import presets
from fdm_cli.config.train import resolve_train_config
from fdm_cli.errors import UserError
from fdm_models import MultiStageUNet

from .conftest import refused

HIRES = ["fdm-ds-64", "ddpm-64", "fdm-ds-256", "ddpm-256"]


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("name", HIRES)
def test_a_hires_preset_without_data_is_one_line(name: str, cli, tmp_path: Path) -> None:
    refused(cli("train", "--preset", name, "--out", tmp_path / "r", "--dry-run"), "--data")
    with pytest.raises(UserError, match=f"preset {name} has no default data"):
        resolve_train_config(preset=name)


@pytest.mark.parametrize(
    ("name", "sizes", "attention_px"),
    [
        ("fdm-ds-64", [64, 32, 16, 8], [16, 8]),
        ("ddpm-64", [64], [16, 8]),
        ("fdm-ds-256", [256, 128, 64, 32, 16, 8], [16, 8]),
        ("ddpm-256", [256], [16, 8]),
    ],
)
def test_hires_presets_resolve_to_the_paper_cascades(
    name: str, sizes: list[int], attention_px: list[int], rgb_folder: Path
) -> None:
    cfg = resolve_train_config(preset=name, overrides=[f"data.source={rgb_folder}"])
    assert [tuple(s) for s in cfg.model.stage_shapes] == [(3, s, s) for s in sizes]
    levels = len(cfg.model.channel_mult)
    assert [sizes[0] >> lv for lv in cfg.model.attention_levels] == attention_px
    assert levels >= len(sizes)  # stage k enters the UNet at level k
    assert cfg.train.max_steps and cfg.train.minutes is None


@pytest.mark.parametrize("name", ["fdm-ds-64", "fdm-ds-256"])
def test_hires_presets_train_on_cpu(name: str, rgb_folder: Path, tmp_path: Path, cli) -> None:
    narrow = ["--set", "model.base_channels=8", "--set", "model.num_heads=2"]
    args = ["train", "--preset", name, "--data", rgb_folder, "--out", tmp_path / "run",
            "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--no-progress",
            "--set", "sample.num=2", "--set", "sample.steps=6", *narrow]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    size = 64 if name.endswith("64") else 256
    grid = Image.open(tmp_path / "run" / "samples" / "final.png")
    assert grid.mode == "RGB" and grid.size[0] > size


def _documented_ratios(name: str) -> list[float]:
    """The FLOP ratios the presets module docstring gives for `name`."""
    text = " ".join(presets.__doc__.split())
    listed = text.split(f"``{name}`` (", 1)[1].split("at stage 0): ", 1)[1].split("; mean", 1)[0]
    return [float(value) for value in listed.split(", ")]


@pytest.mark.parametrize("name", ["fdm-ds-64", "fdm-ds-256"])
def test_the_documented_flop_ratios_are_what_the_unet_costs(
    name: str, rgb_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted on the meta device (no memory, no arithmetic): catches a preset changed without
    its cost table."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setenv("FDM_ATTENTION", "math")  # SDPA has no FLOP formula on every backend
    cfg = resolve_train_config(preset=name, overrides=[f"data.source={rgb_folder}"])
    with torch.device("meta"):
        unet = MultiStageUNet(cfg.model)
    flops = []
    for stage, shape in enumerate(cfg.model.stage_shapes):
        with FlopCounterMode(display=False) as counter:
            unet(torch.zeros(1, *shape, device="meta"), torch.zeros(1, device="meta"), stage)
        flops.append(counter.get_total_flops())
    measured = [f / flops[0] for f in flops]
    assert measured == pytest.approx(_documented_ratios(name), abs=6e-4)
    assert os.environ["FDM_ATTENTION"] == "math"
