"""Down- and up-steps at stage boundaries (docs/design.md §5 (E12-E15)): Monte-Carlo checks with
tolerances of several standard errors at the sample size used."""

import math

import pytest
import torch

from .helpers import make_process

N = 20000  # Monte-Carlo samples
TOL = 5.0  # standard errors


def _stage_sample(process, x, k, t, n, gen):
    xk = process.stage_signal(x, k).expand(n, -1, -1, -1)
    eps = torch.randn(xk.shape, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    return process.q_sample(xk, tt, k, eps), tt


def _marginal_errors(process, z, x, k, t):
    """Max |mean error| and |variance error| of z against q(z^k_t | x), in standard errors."""
    tt = torch.full((1,), t, dtype=torch.float64)
    alpha, sigma = (float(v) for v in process.alpha_sigma(tt, k))
    mean = alpha * process.mean(process.stage_signal(x, k), tt, k)[0]
    n = z.shape[0]
    mean_err = ((z.mean(0) - mean).abs() / (sigma / math.sqrt(n))).max()
    var_err = ((z.var(0) - sigma**2).abs() / (sigma**2 * math.sqrt(2 / n))).max()
    return float(mean_err), float(var_err)


@pytest.mark.parametrize("factor", [2, 3])
def test_down_step_gives_the_next_stage_marginal(factor):
    process = make_process(
        [{"name": "downsample", "factor": factor}] * 2, resolution=18 if factor == 3 else 8
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, process.config.resolution, process.config.resolution, dtype=torch.float64)
    tau = process.boundaries[1]
    z0, _ = _stage_sample(process, x, 0, tau, N, gen)
    z1 = process.down_step(z0, 0)
    mean_err, var_err = _marginal_errors(process, z1, x, 1, tau)
    assert mean_err < TOL + 1 and var_err < TOL + 1


def test_down_step_mismatch_is_detected_without_rescaling():
    process = make_process([{"name": "downsample"}] * 2, gamma=0.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    tau = process.boundaries[1]
    z1 = process.down_step(_stage_sample(process, x, 0, tau, N, gen)[0], 0)
    _, var_err = _marginal_errors(process, z1, x, 1, tau)
    assert var_err > 50  # gamma = 0 leaves the noise at 1/4 of the stage-1 variance


def test_up_step_noise_is_isotropic_and_recovers_the_stage_marginal():
    process = make_process([{"name": "downsample"}] * 2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    tau = process.boundaries[1]
    z1, _ = _stage_sample(process, x, 1, tau, N, gen)
    xi = torch.randn((N, 1, 8, 8), generator=gen, dtype=torch.float64)
    z0 = process.up_step(z1, 0, xi)
    mean_err, var_err = _marginal_errors(process, z0, x, 0, tau)
    assert mean_err < TOL + 1 and var_err < TOL + 1
    sigma = float(process.alpha_sigma(torch.tensor([tau], dtype=torch.float64), 0)[1])
    alpha = float(process.alpha_sigma(torch.tensor([tau], dtype=torch.float64), 0)[0])
    tt = torch.full((1,), tau, dtype=torch.float64)
    noise = (z0 - alpha * process.mean(x, tt, 0)) / sigma
    se = math.sqrt(1 / N)
    # within a 2x2 block (pixels (0,0),(0,1),(1,0),(1,1)) and across blocks
    for a, b in [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((0, 0), (1, 1)), ((0, 1), (0, 2))]:
        cov = float((noise[:, 0, a[0], a[1]] * noise[:, 0, b[0], b[1]]).mean())
        assert abs(cov) < TOL * se, f"covariance between {a} and {b} is {cov:.4f}"
    assert abs(float(noise.pow(2).mean()) - 1) < TOL * math.sqrt(2 / (N * 64))


def test_plain_upsampling_would_leave_block_correlated_noise():
    """Control for the test above: without the (I - P) term the within-block covariance is 1."""
    process = make_process([{"name": "downsample"}] * 2)
    gen = torch.Generator().manual_seed(4)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    tau = process.boundaries[1]
    z1, _ = _stage_sample(process, x, 1, tau, 4000, gen)
    z0 = process.up_step(z1, 0, torch.zeros(4000, 1, 8, 8, dtype=torch.float64))
    within = float((z0[:, 0, 0, 0] * z0[:, 0, 0, 1]).mean() / z0[:, 0, 0, 0].pow(2).mean())
    assert within > 0.95


def test_identity_boundary_is_continuous():
    process = make_process([{"name": "blur", "sigma": 1.0}] * 2)
    z = torch.randn(3, 1, 8, 8)
    assert torch.equal(process.up_step(z, 0, torch.randn_like(z)), z)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    tau = torch.full((2,), process.boundaries[1], dtype=torch.float64)
    below = process.mean(process.stage_signal(x, 0), tau, 0)
    above = process.mean(process.stage_signal(x, 1), tau, 1)
    assert torch.allclose(below, above)
    assert torch.allclose(process.logsnr(tau, 0), process.logsnr(tau, 1))


def test_resolution_rescaling_offsets():
    process = make_process([{"name": "downsample"}] * 2, resolution=16)
    assert process.logsnr_offsets == pytest.approx([0.0, math.log(4), math.log(16)])
    ablation = make_process([{"name": "downsample"}] * 2, resolution=16, gamma=0.0)
    assert ablation.logsnr_offsets == [0.0, 0.0, 0.0]


def test_interpolation_weight_is_clamped_to_its_stage():
    """delta_t is 0 at and below tau_k and 1 at and above tau_{k+1}: a time a hair outside the
    stage (rounding in a time grid, a start time at a boundary) must not extrapolate the mean
    beyond x^k or g(f(x^k))."""
    process = make_process([{"name": "downsample"}] * 2)
    lo, hi = process.boundaries[1], process.boundaries[2]
    t = torch.tensor([-0.5, lo - 1e-9, lo, (lo + hi) / 2, hi, hi + 1e-9, 1.5], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(process.delta(t, 1), expected, rtol=0, atol=1e-12)
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    blocky = process.transforms[1].decode(process.transforms[1].encode(x))
    mean = process.mean(x, t, 1)
    assert torch.equal(mean[:3], x[:3])
    assert torch.allclose(mean[4:], blocky[4:])
