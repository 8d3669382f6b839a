"""A coarse stage costs only the inner levels of the UNet (docs/design.md §6.1).

FLOPs are attributed to the blocks MultiStageUNet.forward calls directly. For a stage entering at
level e, the trunk blocks it runs cost exactly what they cost in stage 0 (same resolution, same
batch); the blocks of levels < e and level e's up-sampling are not run at all. So

    FLOPs(stage e) = FLOPs(stage 0) - FLOPs(levels < e, level e up-sampling, stage-0 heads)
                     + FLOPs(stage-e heads).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fdm_models import MultiStageUNet, UNetConfig

UNIT = re.compile(
    r"^MultiStageUNet\.(conditioning|(input|output)_heads\.\d+|middle\.\w+"
    r"|(encoder|decoder)\.\d+\.(res_blocks\.\d+|attentions\.\d+|downsample|upsample))$"
)
BATCH = 4


def _unit_flops(model: MultiStageUNet, stage: int) -> tuple[dict[str, int], int]:
    shape = model.config.stage_shapes[stage]
    with FlopCounterMode(display=False, depth=None) as counter:
        model(torch.randn(BATCH, *shape), torch.rand(BATCH), stage)
    counts = {
        name.removeprefix("MultiStageUNet."): sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if UNIT.match(name)
    }
    return counts, counter.get_total_flops()


def _is_outer(unit: str, entry: int) -> bool:
    parts = unit.split(".")
    if parts[0] not in ("encoder", "decoder"):
        return False
    level = int(parts[1])
    return level < entry or (parts[0] == "decoder" and level == entry and parts[2] == "upsample")


@pytest.fixture(scope="module")
def flops() -> tuple[UNetConfig, list[tuple[dict[str, int], int]]]:
    config = UNetConfig.for_stages(
        [(1, 32, 32), (1, 16, 16), (1, 8, 8)], size="tiny", base_channels=16, attention="math"
    )
    model = MultiStageUNet(config).eval()
    with torch.no_grad():
        return config, [_unit_flops(model, stage) for stage in range(config.num_stages)]


def test_units_cover_every_flop(flops) -> None:
    _, per_stage = flops
    for units, total in per_stage:
        assert sum(units.values()) == total


@pytest.mark.parametrize("stage", [1, 2])
def test_coarse_stage_costs_the_inner_levels_only(flops, stage: int) -> None:
    config, per_stage = flops
    entry = config.stage_levels[stage]
    assert entry == stage  # 32 -> 16 -> 8 px: stage k enters at level k
    full_units, full_total = per_stage[0]
    units, total = per_stage[stage]

    assert not [unit for unit in units if _is_outer(unit, entry)], "outer levels must not run"
    heads = {f"input_heads.{stage}", f"output_heads.{stage}"}
    for unit, count in units.items():
        if unit not in heads:
            assert count == full_units[unit], f"{unit} costs differently at stage {stage}"

    outer = sum(count for unit, count in full_units.items() if _is_outer(unit, entry))
    full_heads = full_units["input_heads.0"] + full_units["output_heads.0"]
    own_heads = sum(units[unit] for unit in heads)
    assert total == full_total - outer - full_heads + own_heads
    # And that share is large: with channel_mult (1, 2, 2, 2) the 32 px level holds about 42% of
    # stage 0's FLOPs and the 32 and 16 px levels together about 88%.
    assert total / full_total < {1: 0.62, 2: 0.15}[stage]
