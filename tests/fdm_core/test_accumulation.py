"""Gradient accumulation in the loss (docs/design.md §6.8): a batch's micro-batches give the
batch's loss, per-stage losses and gradient.

Bugs caught: a micro-batch divided by its own size instead of the whole batch's (the losses no
longer add up), eps or times taken from the wrong rows of the batch (the gradient differs), a
micro-batch not ordered by stage or a row lost or repeated, and per-stage means averaged over
micro-batches instead of over rows.
"""

from __future__ import annotations

import pytest
import torch

from fdm_core import (
    FDMProcess,
    ProcessConfig,
    batch_loss,
    draw_loss_batch,
    merge_outputs,
)
from fdm_models import MultiStageUNet, UNetConfig


def _setup() -> tuple[FDMProcess, MultiStageUNet]:
    process = FDMProcess(ProcessConfig(resolution=16, transforms=[{"name": "downsample"}] * 2))
    shapes = [list(s) for s in process.stage_shapes]
    torch.manual_seed(0)
    unet = MultiStageUNet(
        UNetConfig(stage_shapes=shapes, base_channels=8, num_heads=2, channel_mult=[1, 2, 2])
    )
    return process, unet


def _grads(unet: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None])


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_micro_batches_give_the_batch_loss_and_gradient(parts: int) -> None:
    process, unet = _setup()
    x = torch.rand(13, 1, 16, 16) * 2 - 1
    batch = draw_loss_batch(process, x, generator=torch.Generator().manual_seed(5))
    whole = batch_loss(process, unet, batch)
    whole.loss.backward()
    expected = _grads(unet)
    unet.zero_grad(set_to_none=True)

    micro = batch.split(parts)
    assert len(micro) == parts
    # every row once, each micro-batch ordered by stage with the whole batch's normalizer
    assert [sum(c) for c in zip(*(m.counts for m in micro), strict=True)] == batch.counts
    assert torch.equal(
        torch.sort(torch.cat([m.t for m in micro])).values, torch.sort(batch.t).values
    )
    for m in micro:
        stages = process.stage_of(m.t)
        assert bool((stages[1:] >= stages[:-1]).all()) and m.normalizer == 13
    outputs = []
    for m in micro:
        out = batch_loss(process, unet, m)
        out.loss.backward()
        outputs.append(out)
    merged = merge_outputs(outputs)
    torch.testing.assert_close(merged.loss, whole.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(merged.per_stage, whole.per_stage, rtol=1e-5, atol=1e-7)
    assert merged.counts == whole.counts
    torch.testing.assert_close(_grads(unet), expected, rtol=1e-4, atol=1e-7)


def test_a_stage_absent_from_every_micro_batch_stays_nan() -> None:
    process, unet = _setup()
    x = torch.rand(4, 1, 16, 16)
    t = torch.tensor([0.05, 0.1, 0.15, 0.2])  # all in stage 0
    batch = draw_loss_batch(process, x, t, torch.Generator().manual_seed(1))
    merged = merge_outputs([batch_loss(process, unet, m) for m in batch.split(2)])
    whole = batch_loss(process, unet, batch)
    assert merged.counts == [4, 0, 0]
    assert torch.isnan(merged.per_stage[1:]).all() and not torch.isnan(merged.per_stage[0])
    torch.testing.assert_close(merged.loss, whole.loss)


def test_a_batch_cannot_be_split_into_more_parts_than_rows() -> None:
    process, _ = _setup()
    batch = draw_loss_batch(process, torch.rand(3, 1, 16, 16))
    with pytest.raises(ValueError, match="cannot split a batch of 3 into 4 parts"):
        batch.split(4)
