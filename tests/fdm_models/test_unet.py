"""Multi-stage UNet: shapes, gradient flow per stage, config validation, checkpointing."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from fdm_models import MultiStageUNet, UNetConfig

DOWNSAMPLE = [(1, 32, 32), (1, 16, 16), (1, 8, 8)]
BLUR = [(1, 32, 32)] * 3
LATENT = [(3, 32, 32), (4, 8, 8)]


def _randomise_zero_init(model: nn.Module) -> None:
    """Zero-initialised output convolutions block every gradient but their own: perturb them."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)


def _stage_owned(name: str, config: UNetConfig, stage: int) -> bool:
    """Whether parameter ``name`` is on the compute path of ``stage`` (docs/design.md §6.1)."""
    entry = config.stage_levels[stage]
    parts = name.split(".")
    if parts[0] in ("input_heads", "output_heads"):
        return int(parts[1]) == stage
    if parts[0] in ("encoder", "decoder"):
        level = int(parts[1])
        if parts[0] == "decoder" and level == entry and parts[2] == "upsample":
            return False
        return level >= entry
    return True  # conditioning, middle


@pytest.mark.parametrize("stage_shapes", [DOWNSAMPLE, BLUR, LATENT], ids=["down", "blur", "latent"])
def test_every_stage_has_its_shape_and_gradients(stage_shapes: list) -> None:
    config = UNetConfig.for_stages(stage_shapes, size="tiny", base_channels=16)
    model = MultiStageUNet(config)
    _randomise_zero_init(model)
    for stage, shape in enumerate(stage_shapes):
        model.zero_grad(set_to_none=True)
        z = torch.randn(2, *shape)
        out = model(z, torch.rand(2), stage)
        assert out.shape == z.shape
        (out * torch.randn_like(out)).sum().backward()
        for name, parameter in model.named_parameters():
            if name == "conditioning.stage_embedding.weight":
                rows = parameter.grad.abs().sum(dim=1)
                assert rows[stage] > 0
                assert torch.count_nonzero(rows) == 1, "only the stage's own embedding row moves"
            elif _stage_owned(name, config, stage):
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            else:
                assert parameter.grad is None, f"stage {stage} touched {name}"


def test_zero_initialised_heads_start_at_zero() -> None:
    model = MultiStageUNet(UNetConfig.for_stages(LATENT, size="tiny", base_channels=16))
    for stage, shape in enumerate(LATENT):
        assert not model(torch.randn(2, *shape), torch.rand(2), stage).any()


def test_equal_shape_stages_differ_only_by_embedding_and_heads() -> None:
    config = UNetConfig.for_stages(BLUR, size="tiny", base_channels=16)
    model = MultiStageUNet(config)
    _randomise_zero_init(model)
    assert config.stage_levels == [0, 0, 0]
    z, t = torch.randn(2, *BLUR[0]), torch.rand(2)
    with torch.no_grad():
        model.input_heads[1].load_state_dict(model.input_heads[0].state_dict())
        model.output_heads[1].load_state_dict(model.output_heads[0].state_dict())
        emb = model.conditioning.stage_embedding.weight
        assert not torch.allclose(model(z, t, 0), model(z, t, 1))
        emb[1] = emb[0]
        torch.testing.assert_close(model(z, t, 0), model(z, t, 1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shapes", "channels"), [([(1, 16, 16), (1, 8, 8)], 1), ([(3, 256, 256), (3, 32, 32)], 3)]
)
def test_resolutions_16_to_256(shapes: list, channels: int) -> None:
    config = UNetConfig.for_stages(shapes, size="tiny", base_channels=8, num_heads=2)
    assert config.stage_levels[0] == 0 and config.level_resolutions[-1][0] <= shapes[-1][1]
    model = MultiStageUNet(config).eval()
    with torch.no_grad():
        for stage, shape in enumerate(shapes):
            assert model(torch.randn(1, *shape), torch.rand(1), stage).shape == (1, *shape)


def test_for_stages_depths() -> None:
    assert UNetConfig.for_stages([(1, 16, 16)]).channel_mult == (1, 2, 2)
    assert UNetConfig.for_stages(DOWNSAMPLE).channel_mult == (1, 2, 2, 2)
    assert UNetConfig.for_stages(DOWNSAMPLE).attention_levels == (1, 2)
    assert UNetConfig.for_stages([(3, 64, 64)]).level_resolutions[-1] == (8, 8)
    assert UNetConfig.for_stages([(3, 256, 256)]).channel_mult == (1, 1, 2, 2, 4, 4)
    assert UNetConfig.for_stages([(1, 32, 32), (1, 2, 2)]).level_resolutions[-1] == (2, 2)
    with pytest.raises(ValueError, match="tiny, small, base"):
        UNetConfig.for_stages(DOWNSAMPLE, size="huge")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage_shapes": [(1, 32, 32), (1, 12, 12)]}, r"stage_shapes\[1\].*allowed resolutions"),
        ({"stage_shapes": [(1, 36, 36)]}, r"stage_shapes\[0\].*divisible by"),
        ({"attention_levels": (4,)}, r"attention_levels contains 4.*0\.\.3"),
        ({"num_heads": 3}, r"num_heads = 3 must divide"),
        ({"attention": "flash"}, r"attention\n.*'auto', 'sdpa', 'math' or 'xformers'"),
        ({"unknown_field": 1}, r"unknown_field\n.*Extra inputs are not permitted"),
        ({"stage_shapes": []}, r"stage_shapes\n.*at least 1 item"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, message: str) -> None:
    fields = {"stage_shapes": DOWNSAMPLE, **overrides}
    with pytest.raises(pydantic.ValidationError, match=message):
        UNetConfig(**fields)


def test_config_json_round_trip() -> None:
    config = UNetConfig.for_stages(LATENT, size="tiny", gradient_checkpointing=True)
    assert UNetConfig.model_validate_json(config.model_dump_json()) == config


def test_forward_rejects_wrong_inputs() -> None:
    model = MultiStageUNet(UNetConfig.for_stages(DOWNSAMPLE, size="tiny", base_channels=16))
    with pytest.raises(ValueError, match=r"out of range 0\.\.2"):
        model(torch.randn(1, 1, 8, 8), torch.rand(1), 3)
    with pytest.raises(ValueError, match=r"stage 1 expects z of shape \(B, 1, 16, 16\)"):
        model(torch.randn(1, 1, 8, 8), torch.rand(1), 1)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(torch.randn(2, 1, 8, 8), torch.rand(3), 2)


def test_gradient_checkpointing_matches_plain_backward() -> None:
    config = UNetConfig.for_stages(DOWNSAMPLE, size="tiny", base_channels=16, dropout=0.1)
    plain = MultiStageUNet(config).train()
    _randomise_zero_init(plain)
    checkpointed = MultiStageUNet(config.model_copy(update={"gradient_checkpointing": True}))
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.train()
    z, t = torch.randn(2, *DOWNSAMPLE[1]), torch.rand(2)
    outputs = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks; non-reentrant checkpoint replays the RNG
        out = model(z, t, 1)
        out.square().mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
