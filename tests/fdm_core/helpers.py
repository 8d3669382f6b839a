"""Shared helpers for the fdm-core tests: processes and oracle denoisers."""

from __future__ import annotations

import math

import torch

from fdm_core import FDMProcess, ProcessConfig


def make_process(transforms=(), resolution: int = 8, channels: int = 1, **overrides) -> FDMProcess:
    return FDMProcess(
        ProcessConfig(
            resolution=resolution, channels=channels, transforms=list(transforms), **overrides
        )
    )


def oracle(process: FDMProcess, x: torch.Tensor):
    """The ideal network for a data set of one image x: it outputs exactly the target whose
    clean prediction is x^k, whatever the parameterization."""

    def model(z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        xk = process.stage_signal(x, stage).expand_as(z).to(z.dtype)
        kind = process.config.parameterization
        if kind == "x0":
            return xk
        alpha, sigma = process.alpha_sigma(t, stage)
        a = alpha.to(z.dtype).view(-1, 1, 1, 1)
        s = sigma.to(z.dtype).view(-1, 1, 1, 1)
        if kind == "eps":
            return (z - a * process.mean(xk, t, stage)) / s
        return (a * z - xk) / s

    return model


def stage_ends(process: FDMProcess):
    """A sampler callback that keeps, per stage, the last (t, z, clean) it saw."""
    seen: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def callback(stage: int, t: float, z: torch.Tensor, clean: torch.Tensor) -> None:
        seen[stage] = (t, z, clean)

    return callback, seen


def assert_marginal(
    process: FDMProcess, z: torch.Tensor, x: torch.Tensor, k: int, t: float, tol: float = 5.0
) -> None:
    """z (N samples for one image x) is distributed as q(z_t | x) = N(alpha_t M_t x^k, sigma_t^2 I)
    in stage k: z / alpha_t is close to the mean, and the implied noise
    eps = (z - alpha_t M_t x^k) / sigma_t is white: mean 0 and variance 1 at every pixel, and no
    correlation between horizontal or vertical neighbours at any position (which would show
    block-correlated noise after an up-step). Tolerances are `tol` standard errors."""
    tt = torch.full((1,), t, dtype=torch.float64)
    alpha, sigma = (float(v) for v in process.alpha_sigma(tt, k))
    mean = process.mean(process.stage_signal(x.double(), k), tt, k)
    n = z.shape[0]
    err = float((z.double() / alpha - mean).abs().max())
    assert err < 10 * sigma / alpha, f"stage {k}, t={t}: |z/alpha - M_t x^k| = {err:.3g}"
    eps = (z.double() - alpha * mean) / sigma
    mean_err = float(eps.mean(0).abs().max()) * math.sqrt(n)
    assert mean_err < tol + 1, f"stage {k}, t={t}: noise mean off by {mean_err:.1f} s.e."
    var_err = float((eps.pow(2).mean(0) - 1).abs().max()) / math.sqrt(2 / n)
    assert var_err < tol + 1, f"stage {k}, t={t}: noise variance off by {var_err:.1f} s.e."
    for dim in (-1, -2):
        a, b = eps.narrow(dim, 0, eps.shape[dim] - 1), eps.narrow(dim, 1, eps.shape[dim] - 1)
        per_position = (a * b).mean(0)  # covariance of neighbours at each position
        cov_err = float(per_position.abs().max()) * math.sqrt(n)
        assert cov_err < tol + 1, (
            f"stage {k}, t={t}: neighbouring noise correlated ({cov_err:.1f} s.e.) along dim {dim}"
        )
