"""K = 0 is a textbook DDPM/DDIM; schedules match their discrete definitions."""

import math

import pytest
import torch

from fdm_core import SamplerConfig, StageNoise, ddim_step, sample

from .helpers import assert_marginal, make_process, oracle

BETA0, BETA1, T = 1e-4, 0.02, 1000


def textbook_alphabar(t: torch.Tensor) -> torch.Tensor:
    """Continuous-time DDPM: alphabar(t) = exp(-int_0^t T beta(u) du), beta linear in t."""
    return torch.exp(-T * (BETA0 * t + 0.5 * (BETA1 - BETA0) * t**2))


def test_linear_beta_matches_the_discrete_ddpm_product():
    process = make_process(noise_schedule={"name": "linear_beta"})
    steps = torch.arange(1, T + 1, dtype=torch.float64)
    discrete = torch.cumprod(1 - torch.linspace(BETA0, BETA1, T, dtype=torch.float64), 0)
    alpha, _ = process.alpha_sigma(steps / T, 0)
    # the continuum limit differs from the product by O(beta^2) per step
    assert torch.allclose(alpha**2, discrete, rtol=2e-2, atol=1e-4)


def test_k0_q_sample_is_ddpm():
    process = make_process(noise_schedule={"name": "linear_beta"})
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    abar = textbook_alphabar(t).view(-1, 1, 1, 1)
    expected = abar.sqrt() * x + (1 - abar).sqrt() * eps
    assert torch.allclose(process.q_sample(x, t, 0, eps), expected, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_k0_ddim_step_is_textbook_ddim(eta):
    process = make_process(
        noise_schedule={"name": "linear_beta"}, parameterization="eps", interpolation=False
    )
    z = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    x0 = torch.randn_like(z)
    xi = torch.randn_like(z)
    t, s = 0.6, 0.45
    at, as_ = (textbook_alphabar(torch.tensor(v, dtype=torch.float64)) for v in (t, s))
    eps_pred = (z - at.sqrt() * x0) / (1 - at).sqrt()
    # Song et al. (2021), eq. 12 and 16
    sig = eta * ((1 - as_) / (1 - at)).sqrt() * (1 - at / as_).sqrt()
    expected = as_.sqrt() * x0 + (1 - as_ - sig**2).sqrt() * eps_pred + sig * xi
    got = ddim_step(process, z, x0, t, s, 0, eta, xi)
    assert torch.allclose(got, expected, atol=1e-10)


def test_cosine_schedule_endpoints_and_monotone():
    process = make_process()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    lam = process.logsnr(t, 0)
    assert lam[0] == pytest.approx(15.0) and lam[-1] == pytest.approx(-15.0)
    assert (lam[1:] < lam[:-1]).all()
    mid = process.logsnr(torch.tensor([0.5], dtype=torch.float64), 0)
    assert abs(float(mid)) < 0.05  # unclipped cosine has lambda(1/2) = 0
    alpha, sigma = process.alpha_sigma(t, 0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t))


def test_shifted_cosine_is_a_constant_log_snr_shift():
    base, shifted = make_process(), make_process(noise_schedule={"name": "shifted_cosine"})
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(
        shifted.logsnr(t, 0) - base.logsnr(t, 0), torch.full_like(t, 2 * math.log(0.5))
    )


def test_zero_blur_chain_is_the_same_model_as_ddpm():
    ddpm = make_process()
    blur = make_process([{"name": "blur", "sigma": 0.0}] * 2)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(blur.stage_signal(x, 2), x)
    # same mean path, same noise levels: only the stage index of the network call differs
    t = torch.linspace(0, 1, 7)
    for k in range(3):
        assert torch.allclose(blur.logsnr(t, k), ddpm.logsnr(t, 0))
    for eta in (0.0, 1.0):
        config = SamplerConfig(steps=9, eta=eta)
        a = sample(ddpm, oracle(ddpm, x[:1]), config, StageNoise(range(1000)))
        b = sample(blur, oracle(blur, x[:1]), config, StageNoise(range(1000)))
        assert torch.allclose(a.x, b.x, atol=1e-5)
        # each stage draws from its own noise stream, so z differs sample by sample; both must
        # end on the same noisy marginal q(z_0 | x)
        assert_marginal(ddpm, a.z, x[:1], 0, 0.0)
        assert_marginal(blur, b.z, x[:1], 0, 0.0)
