"""The DDIM-family sampler across stages (DESIGN.md §2, "Sampler").

The time grid contains every boundary tau_k. A step t -> s inside stage k, with the clean
prediction xhat^k of the network:

    xhat_t = M_t xhat^k,  xhat_s = M_s xhat^k,  epshat = (z_t - alpha_t xhat_t) / sigma_t
    c = eta (sigma_s / sigma_t) sqrt(1 - alpha_t^2 / alpha_s^2)
    z_s = alpha_s xhat_s + sqrt(sigma_s^2 - c^2) epshat + c xi

which keeps q(z_s | x) = N(alpha_s x_s, sigma_s^2 I) for any mean path. At tau_k the transform's
up-step takes z to stage k - 1; that stage's first step starts at t = tau_k with delta = 1.
Sampling can start at any stage and time from a given signal (super-resolution, deblurring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch

from .config import SamplerConfig
from .loss import Denoiser
from .noise import StageNoise
from .process import FDMProcess, _per_sample


@dataclass
class Start:
    """Start the sampler in stage `stage` at time `t` (default tau_stage) from the stage signal
    `signal` (B, *stage_shapes[stage]): z = alpha_t M_t signal + sigma_t xi."""

    stage: int
    signal: torch.Tensor
    t: float | None = None


@dataclass
class SampleOutput:
    x: torch.Tensor  # the final clean prediction xhat^0, in data space
    z: torch.Tensor  # the final noisy state z_0 (stage 0, t = 0)
    stage_predictions: list[torch.Tensor]  # xhat^k at the end of each stage k (stage-k shape)


def steps_per_stage(process: FDMProcess, config: SamplerConfig) -> list[int]:
    """Steps for stages 0..K: explicit, or `config.steps` split by stage length (>= 1 each)."""
    if config.steps_per_stage is not None:
        if len(config.steps_per_stage) != process.num_stages:
            raise ValueError(
                f"steps_per_stage has {len(config.steps_per_stage)} entries; the process has "
                f"{process.num_stages} stages"
            )
        return list(config.steps_per_stage)
    shares = [config.steps * process.stage_length(k) for k in range(process.num_stages)]
    counts = [max(1, int(s)) for s in shares]
    order = sorted(range(len(shares)), key=lambda k: shares[k] - int(shares[k]), reverse=True)
    for k in order[: max(0, config.steps - sum(counts))]:
        counts[k] += 1
    return counts


def stage_grid(process: FDMProcess, k: int, start: float, steps: int) -> list[float]:
    """Times from `start` down to tau_k inside stage k, uniform with the stage's step size."""
    lo, length = process.boundaries[k], process.stage_length(k)
    n = round(steps * (start - lo) / length)
    if start > lo:
        n = max(1, n)
    return [start - (start - lo) * i / n for i in range(n + 1)] if n else [start]


def ddim_step(
    process: FDMProcess,
    z: torch.Tensor,
    clean: torch.Tensor,
    t: float,
    s: float,
    k: int,
    eta: float,
    xi: torch.Tensor | None,
) -> torch.Tensor:
    """One step t -> s (s < t) inside stage k from the clean prediction xhat^k."""
    tt = torch.full((z.shape[0],), t, dtype=torch.float64, device=z.device)
    ss = torch.full_like(tt, s)
    alpha_t, sigma_t = process.alpha_sigma(tt, k)
    alpha_s, sigma_s = process.alpha_sigma(ss, k)
    mean_t, mean_s = process.mean(clean, tt, k), process.mean(clean, ss, k)
    eps = (z - _per_sample(alpha_t, z) * mean_t) / _per_sample(sigma_t, z)
    c = eta * (sigma_s / sigma_t) * (1.0 - alpha_t**2 / alpha_s**2).clamp_min(0.0).sqrt()
    z_s = _per_sample(alpha_s, z) * mean_s
    z_s = z_s + _per_sample((sigma_s**2 - c**2).clamp_min(0.0).sqrt(), z) * eps
    if eta > 0:
        z_s = z_s + _per_sample(c, z) * xi
    return z_s


@torch.no_grad()
def sample(
    process: FDMProcess,
    model: Denoiser,
    config: SamplerConfig,
    noise: StageNoise,
    start: Start | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> SampleOutput:
    """Generate len(noise) samples, or condition on `start`.

    `on_step(done, total)` is called after every network evaluation.
    """
    noise.reset()
    counts = steps_per_stage(process, config)
    top = process.num_stages - 1
    batch = len(noise)

    def draw(k: int) -> torch.Tensor:
        return noise.draw(k, process.stage_shapes[k], device=device)

    if start is None:
        k, t0 = top, 1.0
        sigma = process.alpha_sigma(torch.ones(1, dtype=torch.float64), k)[1]
        z = float(sigma) * draw(k)
        clean = None
    else:
        k, clean = start.stage, start.signal.to(device=device, dtype=torch.float32)
        t0 = process.boundaries[k] if start.t is None else float(start.t)
        if not process.boundaries[k] <= t0 <= process.boundaries[k + 1]:
            raise ValueError(
                f"start t={t0} is outside stage {k}, which spans "
                f"[{process.boundaries[k]}, {process.boundaries[k + 1]}]"
            )
        tt = torch.full((batch,), t0, dtype=torch.float64, device=device)
        alpha, sigma = process.alpha_sigma(tt, k)
        z = _per_sample(alpha, clean) * process.mean(clean, tt, k) + _per_sample(
            sigma, clean
        ) * draw(k)
    grids = {j: stage_grid(process, j, process.boundaries[j + 1], counts[j]) for j in range(k)}
    grids[k] = stage_grid(process, k, t0, counts[k])
    total, done = sum(len(g) - 1 for g in grids.values()), 0
    predictions: list[torch.Tensor | None] = [None] * process.num_stages
    while True:
        grid = grids[k]
        for t, s in pairwise(grid):
            tt = torch.full((batch,), t, dtype=torch.float32, device=device)
            clean = process.predict_clean(model(z, tt, k).float(), z, tt, k)
            if config.clip is not None:
                clean = clean.clamp(-config.clip, config.clip)
            xi = draw(k) if config.eta > 0 else None
            z = ddim_step(process, z, clean, t, s, k, config.eta, xi)
            done += 1
            if on_step is not None:
                on_step(done, total)
        predictions[k] = clean
        if k == 0:
            break
        z = process.up_step(z, k - 1, draw(k - 1), clean)
        k -= 1
    return SampleOutput(clean, z, [p for p in predictions if p is not None])
