"""The counter-based per-sample, per-stage noise."""

import math

import torch

from fdm_core import StageNoise


def test_noise_is_standard_normal_and_uncorrelated():
    n = 8192
    noise = StageNoise(torch.arange(n))
    a = noise.draw(0, (40,)).double()
    b = noise.draw(0, (40,)).double()
    c = noise.draw(1, (40,)).double()
    se = 1 / math.sqrt(n)
    assert abs(float(a.mean())) < 5 * se / math.sqrt(40)
    assert abs(float(a.var()) - 1) < 5 * math.sqrt(2 / (n * 40))
    assert abs(float((a**4).mean()) - 3) < 0.1
    for other in (a[:, 1:], b[:, :-1], c[:, :-1]):  # neighbours, next draw, other stage
        corr = (a[:, :-1] * other).mean(0)
        assert corr.abs().max() < 5 * se


def test_noise_depends_only_on_the_sample_seed():
    big = StageNoise(torch.arange(100, 116)).draw(2, (1, 5, 7))
    small = StageNoise([105, 106]).draw(2, (1, 5, 7))
    assert torch.equal(big[5:7], small)
    again = StageNoise([105, 106])
    assert torch.equal(again.draw(2, (1, 5, 7)), small)
    assert not torch.equal(again.draw(2, (1, 5, 7)), small)  # the next draw differs


def test_stage_seed_is_shared_by_every_sample():
    noise = StageNoise([1, 2, 3], stage_seeds={0: 9})
    fixed = noise.draw(0, (4, 4))
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[1], fixed[2])
    free = noise.draw(1, (4, 4))
    assert not torch.equal(free[0], free[1])
