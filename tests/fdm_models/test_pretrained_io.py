"""save_pretrained / from_pretrained: round trip, extra config, mismatches, atomic files."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from fdm_models import (
    MultiStageUNet,
    UNetConfig,
    WeightsMismatchError,
    from_pretrained,
    load_pretrained_config,
    save_pretrained,
)

SHAPES = [(3, 16, 16), (4, 8, 8)]


@pytest.fixture
def model() -> MultiStageUNet:
    model = MultiStageUNet(UNetConfig.for_stages(SHAPES, size="tiny", base_channels=16)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # no zero heads: outputs differ
    return model


def test_round_trip_gives_identical_outputs(model: MultiStageUNet, tmp_path: Path) -> None:
    process = {"transform": {"name": "downsample", "factor": 2}, "gamma": 1.0}
    save_pretrained(model, tmp_path / "run", extra_config={"process": process})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]  # no temporary files left behind
    loaded = from_pretrained(tmp_path / "run")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        for stage, shape in enumerate(SHAPES):
            z, t = torch.randn(2, *shape), torch.rand(2)
            out = model(z, t, stage)
            assert out.abs().sum() > 0
            torch.testing.assert_close(loaded(z, t, stage), out, rtol=0, atol=0)
    config = load_pretrained_config(tmp_path / "run")
    assert config["process"] == process
    assert config["unet"] == json.loads(model.config.model_dump_json())


def test_config_not_matching_weights(model: MultiStageUNet, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["unet"]["base_channels"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches \[.*input_heads\.0\.weight"):
        from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(model: MultiStageUNet, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["middle.attention.qkv.weight"]
    tensors["middle.extra"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['middle.attention.qkv.weight'\]") as info:
        from_pretrained(tmp_path)
    assert "unexpected keys ['middle.extra']" in str(info.value)


def test_invalid_config_is_a_validation_error(model: MultiStageUNet, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["unet"]["stage_shapes"][1] = [4, 6, 6]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(pydantic.ValidationError, match=r"stage_shapes\[1\]"):
        from_pretrained(tmp_path)


def test_missing_files_and_reserved_keys(model: MultiStageUNet, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="reserved keys"):
        save_pretrained(model, tmp_path, extra_config={"unet": {}})
    save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        from_pretrained(tmp_path)


def test_overwrite_replaces_files(model: MultiStageUNet, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path, extra_config={"step": 1})
    save_pretrained(model, tmp_path, extra_config={"step": 2})
    assert load_pretrained_config(tmp_path)["step"] == 2
    assert len(list(tmp_path.iterdir())) == 2
