"""Negative controls of the conformance suite (issue 25, item 1): each deliberately broken
transform fails the check that names its breach. A check that passes them all would let a
plugin that trains wrongly (or not at all) through."""

from __future__ import annotations

import pytest
import torch

from fdm_core.testing import (
    check_batch_independence,
    check_boundary_contract,
    check_differentiable,
    check_mix_projection,
    check_unet_stage_shapes,
    sample_inputs,
)

from .test_contract import Halve

SHAPE = (1, 8, 8)


class Pool(Halve):
    """A correct 2x mean pooling (test_contract's), the base every broken variant changes in
    one place."""

    name = "pool"


class Typo(Pool):
    boundary = "projektion"


class CentredOnTheBatch(Pool):
    def encode(self, x):
        return super().encode(x - x.mean(0, keepdim=True) + x[:1].mean(0, keepdim=True))


class ScaledByTheBatchMax(Pool):
    def encode(self, x):
        return super().encode(x) / x.abs().amax().clamp_min(1.0)


class Detached(Pool):
    def encode(self, x):
        return super().encode(x).detach()


class Rounded(Pool):
    def encode(self, x):
        return torch.round(super().encode(x) * 4) / 4


class WrongFusedMix(Pool):
    def mix_projection(self, x, keep, project, extra=None, extra_scale=None):
        return super().mix_projection(x, project, keep, extra, extra_scale)  # swapped


class NonSquare(Pool):
    def out_shape(self, shape):
        c, h, w = shape
        return (c, h, w // 2)


def test_the_correct_transform_passes_every_check():
    for check in (check_boundary_contract, check_batch_independence, check_differentiable):
        check(Pool(), SHAPE)
    check_mix_projection(Pool(), SHAPE)
    check_unet_stage_shapes(Pool(), (1, 16, 16))


@pytest.mark.parametrize(
    ("transform", "check", "message"),
    [
        (Typo(), check_boundary_contract, "boundary 'projektion' is not a known kind"),
        (CentredOnTheBatch(), check_batch_independence, "one item at a time"),
        (ScaledByTheBatchMax(), check_batch_independence, "one item at a time"),
        (Detached(), check_differentiable, "does not require grad"),
        (Rounded(), check_differentiable, "zero everywhere"),
        (WrongFusedMix(), check_mix_projection, "mix_projection with per-sample coefficients"),
    ],
    ids=["typo-boundary", "batch-centred", "batch-max", "detached", "round", "fused-mix"],
)
def test_each_breach_fails_its_named_check(transform, check, message):
    with pytest.raises(AssertionError, match=message):
        check(transform, SHAPE)


def test_a_stage_shape_the_unet_cannot_train_is_named_with_what_to_do():
    """Catches the refusal that listed sizes without the rule or the fix."""
    with pytest.raises(AssertionError) as info:
        check_unet_stage_shapes(NonSquare(), (1, 16, 16))
    message = str(info.value)
    assert "cannot train the stages [(1, 16, 16), (1, 16, 8)]" in message
    assert "shrunk by 1, 2, 4, ... in both sides" in message
    assert "(16, 16), (8, 8), (4, 4), (2, 2)" in message and "model.channel_mult" in message


def test_a_transform_that_clips_to_the_data_range_is_checked_there():
    """The [-1, 1] inputs reach the range where a clipping transform is exercised."""
    x = sample_inputs(SHAPE, 4, "unit")
    assert x.min() >= -1 and x.max() <= 1 and x.abs().max() > 0.9
    assert set(sample_inputs(SHAPE, 4, "signs").unique().tolist()) == {-1.0, 1.0}
