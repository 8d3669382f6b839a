"""TrainConfig layering (presets < file < flags < --set) through `resolve_train_config`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from fdm_cli.config.presets import PRESETS
from fdm_cli.config.train import (
    TrainConfig,
    apply_override,
    build_layers,
    parse_override,
    read_config_file,
    resolve_train_config,
)
from fdm_cli.errors import UserError


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
    cfg = resolve_train_config(None, preset)
    assert isinstance(cfg, TrainConfig) and cfg.preset == preset
    assert [list(s) for s in cfg.model.stage_shapes] == stage_shapes
    names = {t.name for t in cfg.process.transforms}
    assert names == ({transform} if transform else set())


def test_all_presets_listed() -> None:
    assert set(PRESETS) == {"fdm-ds", "fdm-blur-g", "fdm-blur-u", "fdm-vae", "ldm", "ddpm"} | {
        "fdm-ds-64",
        "ddpm-64",
        "fdm-ds-256",
        "ddpm-256",
    }


def test_blur_kinds() -> None:
    gauss = resolve_train_config(None, "fdm-blur-g").process.transforms[0].as_dict()
    box = resolve_train_config(None, "fdm-blur-u").process.transforms[0].as_dict()
    assert gauss["kind"] == "gaussian" and box["kind"] == "uniform"


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("process.gamma=0") == (["process", "gamma"], 0)
    assert parse_override("process.interpolation=false") == (["process", "interpolation"], False)
    assert parse_override("model.channel_mult=[1, 2]") == (["model", "channel_mult"], [1, 2])
    cfg = resolve_train_config(
        None,
        "fdm-ds",
        overrides=["process.transforms.1.factor=4", "model.channel_mult=[1, 2, 2, 2]"],
    )
    assert [list(s) for s in cfg.model.stage_shapes] == [[1, 32, 32], [1, 16, 16], [1, 4, 4]]
    assert cfg.process.transforms[0].as_dict()["factor"] == 2  # only the one transform changed


def test_ablation_switches_and_forced_channels() -> None:
    cfg = resolve_train_config(
        overrides=["process.gamma=0", "process.interpolation=false", "data.channels=3"]
    )
    assert cfg.process.gamma == 0 and cfg.process.interpolation is False
    assert cfg.process.channels == 3 and cfg.model.stage_shapes[0][0] == 3


def test_channels_follow_an_image_folder(tmp_path: Path) -> None:
    Image.new("L", (32, 32)).save(tmp_path / "gray.png")
    gray = resolve_train_config(flags={"data.source": str(tmp_path)})
    assert gray.process.channels == 1 and gray.data.channels == "auto"
    Image.new("RGB", (32, 32)).save(tmp_path / "colour.png")
    rgb = resolve_train_config(flags={"data.source": str(tmp_path)})
    assert rgb.process.channels == 3 and rgb.model.stage_shapes[0][0] == 3


def test_layers_file_then_flags_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: fdm-blur-g\noptim: {lr: 0.002}\ntrain: {seed: 5, max_steps: 7}\n")
    cfg = resolve_train_config(
        path, None, {"optim.lr": 0.003, "train.seed": None}, ["optim.lr=0.004"]
    )
    assert cfg.preset == "fdm-blur-g" and cfg.optim.lr == 0.004
    assert cfg.train.seed == 5  # a None flag is "not given"
    assert cfg.train.max_steps == 7 and cfg.train.minutes == 7.5  # the file may set both
    assert resolve_train_config(path, None, {"optim.lr": 0.003}).optim.lr == 0.003
    assert resolve_train_config(path, "ddpm").preset == "ddpm"  # --preset beats the file's


def test_a_budget_flag_replaces_the_other_budget(tmp_path: Path) -> None:
    steps = resolve_train_config(flags={"train.max_steps": 9})
    assert steps.train.max_steps == 9 and steps.train.minutes is None
    (tmp_path / "steps.yaml").write_text("train: {max_steps: 9, minutes: null}\n")
    timed = resolve_train_config(tmp_path / "steps.yaml", flags={"train.minutes": 2.0})
    assert timed.train.minutes == 2.0 and timed.train.max_steps is None
    both = resolve_train_config(flags={"train.minutes": 2.0}, overrides=["train.max_steps=9"])
    assert both.train.minutes == 2.0 and both.train.max_steps == 9  # --set comes last
    with pytest.raises(UserError, match="`max_steps` and `minutes` are alternatives"):
        resolve_train_config(flags={"train.max_steps": 9, "train.minutes": 2.0})


def test_config_file_round_trip(tmp_path: Path) -> None:
    cfg = resolve_train_config(None, "fdm-blur-u")
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = resolve_train_config(path)
    assert again == cfg
    (tmp_path / "run.json").write_text('{"preset": "ddpm", "train": {"batch_size": 7}}')
    from_json = resolve_train_config(tmp_path / "run.json")
    assert from_json.preset == "ddpm" and from_json.train.batch_size == 7


def test_saved_config_is_the_base_when_resuming() -> None:
    saved = resolve_train_config(None, "ddpm", {"optim.lr": 0.01}).to_dict()
    resumed = resolve_train_config(saved=saved)
    assert resumed.preset == "ddpm" and resumed.optim.lr == 0.01
    assert resolve_train_config(None, "fdm-ds", saved=saved).preset == "fdm-ds"


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
        ("train.device=tpu", "train.device: unknown device 'tpu'; allowed: auto, cpu, cuda"),
        ("train.precision=fp8", "train.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        ("train.grad_accum=0", "train.grad_accum: Input should be greater than 0"),
        ("train.eval_num=3", "train.eval_num: Input should be greater than or equal to 4"),
        ("data.fit=stretch", "data.fit: Input should be 'auto', 'pad' or 'resize'"),
    ],
)
def test_invalid_values_name_the_field(override: str, message: str) -> None:
    with pytest.raises(UserError, match="invalid config") as info:
        resolve_train_config(overrides=[override])
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
    with pytest.raises(UserError, match="unknown preset 'fdm-xyz'; allowed: fdm-ds"):
        resolve_train_config(None, "fdm-xyz")
    (tmp_path / "preset.yaml").write_text("preset: nope\n")
    with pytest.raises(UserError, match="unknown preset 'nope'; allowed: fdm-ds"):
        resolve_train_config(tmp_path / "preset.yaml")


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path: Path, cli) -> None:
    result = cli(
        "train",
        "--dry-run",
        "--out",
        tmp_path / "run",
        "--preset",
        "fdm-blur-g",
        "--set",
        "process.gamma=0",
        "--max-steps",
        "9",
        "--lr",
        "0.005",
    )
    assert result.exit_code == 0, result.output
    body = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("#"))
    printed = yaml.safe_load(body)
    assert printed["preset"] == "fdm-blur-g" and printed["process"]["gamma"] == 0
    assert printed["train"]["max_steps"] == 9 and printed["train"]["minutes"] is None
    assert printed["optim"]["lr"] == 0.005
    assert "stages 0: 1x32x32" in result.stdout
    assert not (tmp_path / "run").exists()


def test_default_train_budget_fits_ten_minutes() -> None:
    cfg = resolve_train_config()
    assert cfg.preset == "fdm-ds" and cfg.data.source == "fashion-mnist"
    assert cfg.train.minutes is not None and cfg.train.minutes <= 8.5
