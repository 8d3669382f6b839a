"""TrainConfig layering: presets < file < flags < --set, through the same pydantic models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fdm_cli.config import (
    TrainConfig,
    apply_override,
    build_layers,
    finalize,
    parse_override,
    read_config_file,
)
from fdm_cli.errors import UserError
from fdm_cli.presets import PRESETS


@pytest.mark.parametrize(
    ("preset", "stage_shapes", "transform"),
    [
        ("fdm-ds", [[1, 32, 32], [1, 16, 16], [1, 8, 8]], "downsample"),
        ("fdm-blur-g", [[1, 32, 32]] * 3, "blur"),
        ("fdm-blur-u", [[1, 32, 32]] * 3, "blur"),
        ("ddpm", [[1, 32, 32]], None),
    ],
)
def test_presets_resolve(preset: str, stage_shapes: list, transform: str | None) -> None:
    cfg = finalize(build_layers(None, preset), data_channels=1)
    assert isinstance(cfg, TrainConfig) and cfg.preset == preset
    assert [list(s) for s in cfg.model.stage_shapes] == stage_shapes
    names = {t.name for t in cfg.process.transforms}
    assert names == ({transform} if transform else set())


def test_all_presets_listed() -> None:
    assert set(PRESETS) == {"fdm-ds", "fdm-blur-g", "fdm-blur-u", "ddpm"}


def test_blur_kinds() -> None:
    gauss = finalize(build_layers(None, "fdm-blur-g"), 1).process.transforms[0].as_dict()
    box = finalize(build_layers(None, "fdm-blur-u"), 1).process.transforms[0].as_dict()
    assert gauss["kind"] == "gaussian" and box["kind"] == "uniform"


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("process.gamma=0") == (["process", "gamma"], 0)
    assert parse_override("process.interpolation=false") == (["process", "interpolation"], False)
    assert parse_override("model.channel_mult=[1, 2]") == (["model", "channel_mult"], [1, 2])
    raw = build_layers(None, "fdm-ds")
    apply_override(raw, ["process", "transforms", "1", "factor"], 4)
    apply_override(raw, *parse_override("model.channel_mult=[1, 2, 2, 2]"))
    cfg = finalize(raw, 1)
    assert [list(s) for s in cfg.model.stage_shapes] == [[1, 32, 32], [1, 16, 16], [1, 4, 4]]


def test_ablation_switches_and_channels_follow_data() -> None:
    raw = build_layers(None, None)
    apply_override(raw, *parse_override("process.gamma=0"))
    apply_override(raw, *parse_override("process.interpolation=false"))
    cfg = finalize(raw, data_channels=3)
    assert cfg.process.gamma == 0 and cfg.process.interpolation is False
    assert cfg.process.channels == 3 and cfg.model.stage_shapes[0][0] == 3


def test_config_file_round_trip(tmp_path: Path) -> None:
    cfg = finalize(build_layers(None, "fdm-blur-u"), 1)
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = finalize(build_layers(path, None), 1)
    assert again == cfg
    (tmp_path / "run.json").write_text('{"preset": "ddpm", "train": {"batch_size": 7}}')
    from_json = finalize(build_layers(tmp_path / "run.json", None), 1)
    assert from_json.preset == "ddpm" and from_json.train.batch_size == 7


def test_saved_config_is_the_base_when_resuming() -> None:
    saved = finalize(build_layers(None, "ddpm"), 1).to_dict()
    assert finalize(build_layers(None, None, saved), 1).preset == "ddpm"
    assert finalize(build_layers(None, "fdm-ds", saved), 1).preset == "fdm-ds"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("process.gamma=abc", "process.gamma"),
        ("process.gamma=2", "process.gamma"),
        ("model.nonsense=1", "model.nonsense"),
        ("train.batch_size=0", "train.batch_size"),
        ("process.noise_schedule.name=nope", "noise_schedule"),
        ("process.parameterization=eps", "parameterization 'eps'"),
        ("model.num_heads=3", "num_heads"),
    ],
)
def test_invalid_values_name_the_field(override: str, message: str) -> None:
    raw = build_layers(None, None)
    apply_override(raw, *parse_override(override))
    with pytest.raises(UserError, match="invalid config") as info:
        finalize(raw, 1)
    assert message in str(info.value)


def test_bad_override_syntax_and_paths() -> None:
    with pytest.raises(UserError, match="key=value"):
        parse_override("process.gamma")
    with pytest.raises(UserError, match="not an index"):
        apply_override(build_layers(None, None), ["process", "transforms", "7", "factor"], 2)
    with pytest.raises(UserError, match="is a value, not a section"):
        apply_override(build_layers(None, None), ["process", "gamma", "x"], 2)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("process: [unclosed")
    with pytest.raises(UserError, match="not valid yaml"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="unknown preset"):
        build_layers(None, "fdm-xyz")


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path: Path, cli) -> None:
    result = cli("train", "--dry-run", "--out", tmp_path / "run", "--preset", "fdm-blur-g",
                     "--set", "process.gamma=0", "--max-steps", "9", "--lr", "0.005")
    assert result.exit_code == 0, result.output
    body = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("#"))
    printed = yaml.safe_load(body)
    assert printed["preset"] == "fdm-blur-g" and printed["process"]["gamma"] == 0
    assert printed["train"]["max_steps"] == 9 and printed["train"]["minutes"] is None
    assert printed["optim"]["lr"] == 0.005
    assert "stages 0: 1x32x32" in result.stdout
    assert not (tmp_path / "run").exists()


def test_default_train_budget_fits_ten_minutes() -> None:
    cfg = finalize(build_layers(None, None), 1)
    assert cfg.preset == "fdm-ds" and cfg.data.source == "fashion-mnist"
    assert cfg.train.minutes is not None and cfg.train.minutes <= 8.5
