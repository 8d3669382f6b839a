"""The DDIM-family sampler across stages, with oracle denoisers."""

import math

import pytest
import torch

from fdm_core import (
    Boundary,
    FDMProcess,
    ProcessConfig,
    SamplerConfig,
    StageNoise,
    Start,
    ddim_step,
    registry,
    sample,
    steps_per_stage,
)
from fdm_core.testing import check_shapes
from fdm_transforms import DownsampleTransform

from .helpers import assert_marginal, make_process, oracle, stage_ends

_DS, _BLUR = {"name": "downsample"}, {"name": "blur", "sigma": 1.0}
CHAINS = {  # "renoise": two mean-pooling stand-ins for a learned encoder (boundary renoise)
    "ds2": [_DS],
    "ds3": [_DS, _DS],
    "ds-factor3": [{"name": "downsample", "factor": 3}],
    "blur2": [_BLUR],
    "blur3": [{"name": "blur", "kind": "uniform", "size": 3}] * 2,
    "blur-ds-blur": [_BLUR, _DS, _BLUR],
    "renoise": None,
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


class Encoder(DownsampleTransform):
    """A learned-encoder stand-in: mean pooling declared with the `renoise` boundary."""

    name = "test_encoder"
    boundary = Boundary.RENOISE


def chain_process(chain: str, **overrides) -> FDMProcess:
    if chain != "renoise":
        resolution = 9 if chain == "ds-factor3" else 8
        return make_process(CHAINS[chain], resolution=resolution, **overrides)
    reg = registry.load_registry(load_plugins="")
    reg.add("transform", "test_encoder", Encoder, "tests", "0")
    data = {"resolution": 8, "transforms": ["test_encoder"] * 2, **overrides}
    return FDMProcess(ProcessConfig.model_validate(data, context={"registry": reg}), reg)


N = 1000  # samples of one image in the noisy-path tests


@pytest.mark.parametrize("begin", ["noise", "boundary", "mid-stage"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_oracle_noisy_path_is_exact(chain, eta, begin):
    """With the oracle, the clean prediction is right whatever the sampler does to z, so check
    z itself: at the end of every stage (t = tau_k) and at t = 0 it must be distributed as
    q(z_t | x) -- right mean, white noise of unit variance, no block correlation -- whether
    sampling starts from pure noise, from the stage-1 signal at tau_1, or mid-way in stage 1."""
    process = chain_process(chain)
    x = torch.rand(1, *process.stage_shapes[0]) * 2 - 1
    start = None
    if begin != "noise":
        lo, hi = process.boundaries[1], process.boundaries[2]
        signal = process.stage_signal(x, 1).expand(N, -1, -1, -1)
        start = Start(stage=1, signal=signal, t=None if begin == "boundary" else (lo + hi) / 2)
    callback, ends = stage_ends(process)
    out = sample(
        process,
        oracle(process, x),
        SamplerConfig(steps=12, eta=eta),
        StageNoise(range(N)),
        start,
        callback=callback,
    )
    assert (out.x - x).abs().max() < 1e-3
    assert_marginal(process, out.z, x, 0, 0.0)
    top = process.num_stages - 1 if start is None else 1
    assert set(ends) == set(range(top + (begin != "boundary")))
    for k, (t, z, clean) in ends.items():
        assert t == process.boundaries[k]
        assert torch.allclose(clean, process.stage_signal(x, k).expand_as(clean), atol=1e-3)
        assert_marginal(process, z, x, k, t)


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("ablation", [{"gamma": 0.0}, {"interpolation": False}])
def test_ablations_still_recover_the_training_image(chain, ablation):
    """The ablations break the noisy path (see below) but the oracle's clean predictions must
    still be the stage signals, at every stage's shape."""
    process = chain_process(chain, **ablation)
    x = torch.rand(1, *process.stage_shapes[0]) * 2 - 1
    callback, ends = stage_ends(process)
    out = sample(
        process,
        oracle(process, x),
        SamplerConfig(steps=30, eta=0.5),
        StageNoise(range(4)),
        callback=callback,
    )
    assert (out.x - x).abs().max() < 1e-3
    assert sorted(ends) == list(range(process.num_stages))
    for k, (_, _, clean) in ends.items():
        assert tuple(clean.shape[1:]) == process.stage_shapes[k]
        assert torch.allclose(clean, process.stage_signal(x, k).expand_as(clean), atol=1e-3)


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
    """Super-resolution: the stage-1 signal y is given; stages 1 and 0 run from tau_1 (no
    network call in stage 2), and z stays on the noisy path of the image whose stage-1 signal is
    y, whether the start is tau_1 or later in stage 1."""
    process = make_process(CHAINS["ds3"])
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    y = process.stage_signal(x, 1).expand(N, -1, -1, -1)
    stages = []

    def model(z, t, stage):
        stages.append(stage)
        return oracle(process, x)(z, t, stage)

    for t in (None, 0.5):
        stages.clear()
        out = sample(process, model, SamplerConfig(steps=9), StageNoise(range(N)), Start(1, y, t))
        assert 2 not in stages and stages[0] == (0 if t is None else 1)
        assert torch.allclose(out.x, x.expand_as(out.x), atol=1e-3)
        assert_marginal(process, out.z, x, 0, 0.0)
    with pytest.raises(ValueError, match="outside stage 1"):
        sample(process, model, SamplerConfig(steps=9), StageNoise([0, 1]), Start(1, y[:2], t=0.9))


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
    base_callback, base = stage_ends(process)
    fixed_callback, fixed = stage_ends(process)
    sample(process, _noise_model, config, StageNoise([0, 1]), callback=base_callback)
    out = sample(
        process,
        _noise_model,
        config,
        StageNoise([0, 1], stage_seeds={2: 7}),
        callback=fixed_callback,
    )
    # the coarsest stage's noise is now shared by both samples
    assert torch.allclose(fixed[2][1][0], fixed[2][1][1])
    assert not torch.allclose(base[2][1][0], base[2][1][1])
    assert not torch.allclose(out.x[0], out.x[1])  # finer stages still differ


def test_renoise_up_step_needs_the_clean_prediction():
    process = chain_process("renoise")
    check_shapes(process.transforms[0], (1, 8, 8))
    with pytest.raises(ValueError, match="renoise boundary needs the clean prediction"):
        process.up_step(torch.zeros(1, 1, 4, 4), 0, torch.zeros(1, 1, 8, 8))
