"""The DDIM-family sampler across stages, with oracle denoisers."""

import math

import pytest
import torch

from fdm_core import SamplerConfig, StageNoise, Start, ddim_step, sample, steps_per_stage

from .helpers import make_process, oracle

CHAINS = {
    "ds2": [{"name": "downsample"}],
    "ds3": [{"name": "downsample"}] * 2,
    "blur2": [{"name": "blur", "sigma": 1.0}],
    "blur3": [{"name": "blur", "kind": "uniform", "size": 3}] * 2,
}


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_preserves_the_marginal_under_a_moving_mean(eta):
    """With the true x^k, z_t ~ q(z_t | x) stepped to s is distributed as q(z_s | x)."""
    process = make_process([{"name": "downsample"}] * 2)
    n, k, t, s = 20000, 0, 0.30, 0.12  # inside stage 0, where delta moves from 0.9 to 0.36
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64).expand(n, -1, -1, -1)
    tt, ss = (torch.full((n,), v, dtype=torch.float64) for v in (t, s))
    z_t = process.q_sample(x, tt, k, torch.randn(x.shape, generator=gen, dtype=torch.float64))
    xi = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z_s = ddim_step(process, z_t, x, t, s, k, eta, xi)
    alpha_s, sigma_s = (float(v[0]) for v in process.alpha_sigma(ss[:1], k))
    mean_s = alpha_s * process.mean(x[:1], ss[:1], k)[0]
    assert not torch.allclose(process.mean(x[:1], tt[:1], k), process.mean(x[:1], ss[:1], k))
    mean_err = ((z_s.mean(0) - mean_s).abs() / (sigma_s / math.sqrt(n))).max()
    var_err = ((z_s.var(0) - sigma_s**2).abs() / (sigma_s**2 * math.sqrt(2 / n))).max()
    assert mean_err < 6 and var_err < 6


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("ablation", [{}, {"gamma": 0.0}, {"interpolation": False}])
def test_oracle_sampler_returns_the_training_image(chain, ablation):
    process = make_process(CHAINS[chain], **ablation)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    out = sample(
        process, oracle(process, x), SamplerConfig(steps=30, eta=0.5), StageNoise(range(4))
    )
    assert (out.x - x).abs().max() < 1e-3
    assert [tuple(p.shape[1:]) for p in out.stage_predictions] == process.stage_shapes
    for k, pred in enumerate(out.stage_predictions):
        assert torch.allclose(pred, process.stage_signal(x, k).expand_as(pred), atol=1e-3)


@pytest.mark.parametrize("chain", ["ds2", "ds3", "blur3"])
def test_sampled_noise_stays_white_across_boundaries(chain):
    """The DDIM path (eta=0) with the true x keeps epshat = (z - alpha x_t) / sigma; after the
    up-steps it must still be standard white noise in stage 0."""
    process = make_process(CHAINS[chain])
    n = 4000
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    out = sample(process, oracle(process, x), SamplerConfig(steps=12), StageNoise(range(n)))
    alpha, sigma = (float(v) for v in process.alpha_sigma(torch.zeros(1), 0))
    eps = ((out.z - alpha * x) / sigma).double()
    assert abs(float(eps.pow(2).mean()) - 1) < 5 * math.sqrt(2 / eps.numel())
    neighbours = float((eps[..., 0::2, :] * eps[..., 1::2, :]).mean())  # pairs inside 2x2 blocks
    assert abs(neighbours) < 5 / math.sqrt(n * 32)


def test_without_rescaling_the_sampled_noise_is_not_white():
    process = make_process(CHAINS["ds3"], gamma=0.0)
    x = torch.zeros(1, 1, 8, 8)
    out = sample(process, oracle(process, x), SamplerConfig(steps=12), StageNoise(range(2000)))
    alpha, sigma = (float(v) for v in process.alpha_sigma(torch.zeros(1), 0))
    assert float(((out.z - alpha * x) / sigma).pow(2).mean()) > 1.5


def test_time_grid_contains_every_boundary_and_splits_by_length():
    process = make_process(
        CHAINS["ds3"], stage_schedule={"name": "explicit", "boundaries": [0.5, 0.75]}
    )
    assert steps_per_stage(process, SamplerConfig(steps=40)) == [20, 10, 10]
    assert steps_per_stage(process, SamplerConfig(steps=2)) == [1, 1, 1]
    assert steps_per_stage(process, SamplerConfig(steps_per_stage=[3, 2, 1])) == [3, 2, 1]
    calls = []

    def model(z, t, stage):
        calls.append((round(float(t[0]), 6), stage, tuple(z.shape[1:])))
        return torch.zeros_like(z)

    sample(process, model, SamplerConfig(steps=8), StageNoise([0]))
    assert [c[1] for c in calls] == [2, 2, 1, 1, 0, 0, 0, 0]
    assert calls[0][0] == 1.0 and calls[2][0] == 0.75 and calls[4][0] == 0.5
    assert {c[2] for c in calls if c[1] == 1} == {(1, 4, 4)}


def test_start_from_a_low_resolution_signal():
    """Super-resolution: the stage-1 signal y is given; stages 1 and 0 run from tau_1."""
    process = make_process(CHAINS["ds3"])
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    y = process.stage_signal(x, 1)
    stages = []

    def model(z, t, stage):  # the oracle for two images, one per batch row
        stages.append(stage)
        xk = process.stage_signal(x, stage).to(z.dtype)
        alpha, sigma = process.alpha_sigma(t, stage)
        return (alpha.float().view(-1, 1, 1, 1) * z - xk) / sigma.float().view(-1, 1, 1, 1)

    out = sample(
        process, model, SamplerConfig(steps=9), StageNoise([0, 1]), Start(stage=1, signal=y)
    )
    assert 2 not in stages and stages[0] == 0  # starts at tau_1: up-step, then stage 0
    assert torch.allclose(out.x, x, atol=1e-3)
    later = sample(
        process, model, SamplerConfig(steps=9), StageNoise([0, 1]), Start(stage=1, signal=y, t=0.5)
    )
    assert torch.allclose(later.x, x, atol=1e-3)
    with pytest.raises(ValueError, match="outside stage 1"):
        sample(process, model, SamplerConfig(steps=9), StageNoise([0, 1]), Start(1, y, t=0.9))


def _noise_model(z, t, stage):
    return 0.3 * z + 0.1 * torch.tanh(z.roll(1, -1))


def test_samples_do_not_depend_on_the_batch_they_are_drawn_in():
    process = make_process(CHAINS["ds3"])
    config = SamplerConfig(steps=6, eta=1.0)
    together = sample(process, _noise_model, config, StageNoise(torch.arange(10, 18)))
    alone = sample(process, _noise_model, config, StageNoise([13]))
    assert torch.allclose(together.x[3:4], alone.x, atol=1e-6)


def test_stage_seeds_fix_one_stage_only():
    process = make_process(CHAINS["ds3"])
    config = SamplerConfig(steps=6, eta=1.0)
    base = sample(process, _noise_model, config, StageNoise([0, 1]))
    fixed = sample(process, _noise_model, config, StageNoise([0, 1], stage_seeds={2: 7}))
    # the coarsest stage's noise is now shared by both samples
    assert torch.allclose(fixed.stage_predictions[2][0], fixed.stage_predictions[2][1])
    assert not torch.allclose(base.stage_predictions[2][0], base.stage_predictions[2][1])
    assert not torch.allclose(fixed.x[0], fixed.x[1])  # finer stages still differ


def test_renoise_boundary_with_an_oracle():
    """A learned-encoder-like transform (boundary renoise): the up-step decodes the clean
    prediction and noises it afresh, so the oracle still recovers the image."""
    from fdm_core import Boundary, FDMProcess, ProcessConfig, registry
    from fdm_core.testing import check_shapes
    from fdm_transforms import DownsampleTransform

    class Encoder(DownsampleTransform):
        name = "test_encoder"
        boundary = Boundary.RENOISE

    reg = registry.load_registry(load_plugins="")
    reg.add("transform", "test_encoder", Encoder, "tests", "0")
    data = {"resolution": 8, "transforms": ["test_encoder"]}
    process = FDMProcess(ProcessConfig.model_validate(data, context={"registry": reg}), reg)
    check_shapes(process.transforms[0], (1, 8, 8))
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    out = sample(
        process, oracle(process, x), SamplerConfig(steps=10, eta=1.0), StageNoise(range(3))
    )
    assert (out.x - x).abs().max() < 1e-3
    with pytest.raises(ValueError, match="renoise boundary needs the clean prediction"):
        process.up_step(torch.zeros(1, 1, 4, 4), 0, torch.zeros(1, 1, 8, 8))
