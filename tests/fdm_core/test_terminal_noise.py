"""The terminal noise level: the sampler starts stage K from z = sigma_K(1) xi, which assumes
alpha_K(1) = 0. The resolution offset gamma log(d_0 / d_K) would raise the last stage's
terminal log-SNR, so it is annealed to 0 over stage K (docs/design.md §4)."""

import math

import pytest
import torch

from fdm_core import ProcessConfig, StageNoise, get_registry
from fdm_core.sampler import initial_state
from fdm_core.schedules import TERMINAL_ALPHA_MAX

from .helpers import make_process

DS, BLUR = {"name": "downsample"}, {"name": "blur", "sigma": 1.0}
CHAINS = {  # (resolution, transforms)
    "32px-K2": (32, [DS] * 2),
    "128px-K5": (128, [DS] * 5),
    "256px-K6": (256, [DS] * 6),
    "256px-factor4-K3": (256, [{"name": "downsample", "factor": 4}] * 3),
    "blur-ds-K4": (64, [BLUR, DS, BLUR, DS]),
    "ddpm": (32, []),
}
SCHEDULES = get_registry().names("noise_schedule")
ONE = torch.ones(1, dtype=torch.float64)


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_last_stage_ends_at_the_base_terminal_noise_level(schedule, chain):
    resolution, transforms = CHAINS[chain]
    process = make_process(
        transforms, resolution=resolution, channels=3, noise_schedule={"name": schedule}
    )
    top = process.num_stages - 1
    alpha = float(process.alpha_sigma(ONE, top)[0])
    assert alpha <= TERMINAL_ALPHA_MAX
    assert alpha == pytest.approx(process.noise_schedule.terminal_alpha(), rel=1e-9)


def test_without_the_anneal_the_offset_leaves_signal_at_t_1():
    """Control: a constant offset in stage K gives the alpha_K(1) the issue measured."""
    for resolution, k, schedule, expected in [
        (32, 2, "cosine", 0.0022),
        (128, 5, "cosine", 0.018),
        (128, 5, "linear_beta", 0.21),
    ]:
        process = make_process([DS] * k, resolution=resolution, noise_schedule={"name": schedule})
        lam = process.noise_schedule.logsnr(ONE) + process.logsnr_offsets[k]
        assert float(torch.sigmoid(lam).sqrt()) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_anneal_keeps_the_boundaries_exact_and_the_last_stage_monotone(schedule):
    process = make_process([DS] * 3, resolution=32, noise_schedule={"name": schedule})
    top = process.num_stages - 1
    for k in range(top):  # every boundary: lambda_{k+1} - lambda_k = log(d_k / d_{k+1})
        tau = torch.tensor([process.boundaries[k + 1]], dtype=torch.float64)
        jump = float(process.logsnr(tau, k + 1) - process.logsnr(tau, k))
        assert jump == pytest.approx(math.log(4), abs=1e-9)
    t = torch.linspace(process.boundaries[top], 1.0, 201, dtype=torch.float64)
    lam = process.logsnr(t, top)
    assert (lam[1:] < lam[:-1]).all()
    base = process.noise_schedule.logsnr(t)
    assert float(lam[0] - base[0]) == pytest.approx(process.logsnr_offsets[top])
    assert float(lam[-1] - base[-1]) == pytest.approx(0.0, abs=1e-12)
    inner = torch.linspace(0.0, process.boundaries[top], 50, dtype=torch.float64)
    for k in range(top):  # the stages below K keep the constant offset
        assert torch.allclose(
            process.logsnr(inner, k) - process.noise_schedule.logsnr(inner),
            torch.full_like(inner, process.logsnr_offsets[k]),
        )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_training_z_at_t_1_matches_the_samplers_prior(schedule):
    """Training's z_1 = alpha_K(1) x^K + sigma_K(1) eps and the sampler's first z = sigma_K(1) xi
    differ by alpha_K(1) x^K: at most TERMINAL_ALPHA_MAX for data in [-1, 1]."""
    process = make_process([DS] * 6, resolution=256, noise_schedule={"name": schedule})
    top = process.num_stages - 1
    noise = StageNoise(range(8))
    k, t, prior, _ = initial_state(
        process, lambda j: noise.draw(j, process.stage_shapes[j]), None, "cpu"
    )
    assert (k, t) == (top, 1.0)
    noise.reset()
    xi = noise.draw(top, process.stage_shapes[top])
    x = torch.ones(8, 1, 256, 256)  # the worst case: every pixel at full scale
    z_train = process.q_sample(process.stage_signal(x, top), torch.ones(8), top, xi)
    assert float((z_train - prior).abs().max()) <= TERMINAL_ALPHA_MAX


def test_a_schedule_that_leaves_signal_at_t_1_is_refused():
    with pytest.raises(ValueError, match=r"alpha\(1\) = 0.0811 .* at most 0.01"):
        ProcessConfig(noise_schedule={"name": "linear_beta", "num_train_steps": 500})
    with pytest.raises(ValueError, match="logsnr_min"):
        ProcessConfig(noise_schedule={"name": "cosine", "logsnr_min": -5.0})
