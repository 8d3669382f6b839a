"""The DDIM-family sampler across stages (docs/design.md §7 (E25-E30)).

The time grid contains every boundary tau_k. A step t -> s inside stage k, with the clean
prediction xhat^k of the network:

    xhat_t = M_t xhat^k,  xhat_s = M_s xhat^k,  epshat = (z_t - alpha_t xhat_t) / sigma_t
    c = eta (sigma_s / sigma_t) sqrt(1 - alpha_t^2 / alpha_s^2)
    z_s = alpha_s xhat_s + sqrt(sigma_s^2 - c^2) epshat + c xi

which keeps q(z_s | x) = N(alpha_s x_s, sigma_s^2 I) for any mean path. At tau_k the transform's
up-step takes z to stage k - 1; that stage's first step starts at t = tau_k with delta = 1.
Sampling can start at any stage and time from a given signal (super-resolution, deblurring).

With ``SamplerConfig.compile`` each step (network, clean prediction, (E40)) runs through
``torch.compile`` with static shapes, its numbers passed as one device tensor, so all the steps
of a stage run one graph (docs/design.md §7.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch

from .compiling import compile_options
from .config import SamplerConfig
from .noise import StageNoise
from .process import Denoiser, FDMProcess
from .schedules import apportion
from .transform import Coefficient

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
"""``callback(stage, t, z, clean)``: after each step, stage k, the time t that z has reached,
z_t, and the clean prediction xhat^k that made the step."""


@dataclass
class Start:
    """Start the sampler in stage `stage` at time `t` (default tau_stage) from the stage signal
    `signal` (B, *stage_shapes[stage]): z = alpha_t M_t signal + sigma_t xi."""

    stage: int
    signal: torch.Tensor
    t: float | None = None


@dataclass
class SampleOutput:
    x: torch.Tensor  # the final clean prediction xhat^0, in data space (decoded from a latent)
    z: torch.Tensor  # the final noisy state z_0 (stage 0, t = 0)


def steps_per_stage(process: FDMProcess, config: SamplerConfig) -> list[int]:
    """Steps for stages 0..K: explicit, or `config.steps` split by stage length (>= 1 each)."""
    if config.steps_per_stage is None:
        return apportion(config.steps, process.stage_lengths, minimum=1)
    if len(config.steps_per_stage) != process.num_stages:
        raise ValueError(
            f"steps_per_stage has {len(config.steps_per_stage)} entries; the process has "
            f"{process.num_stages} stages"
        )
    return list(config.steps_per_stage)


def stage_grid(process: FDMProcess, k: int, start: float, steps: int) -> list[float]:
    """Times from `start` down to tau_k inside stage k, uniform with the stage's step size
    (docs/design.md §7.2 (E29))."""
    lo, length = process.boundaries[k], process.stage_lengths[k]
    n = round(steps * (start - lo) / length)
    if start > lo:
        n = max(1, n)
    return [start - (start - lo) * i / n for i in range(n + 1)] if n else [start]


@dataclass(frozen=True)
class StepCoefficients:
    """The scalars of one step t -> s inside stage k (E25-E27), computed once per grid point in
    float64 on the host: the step itself then multiplies tensors by numbers and reads nothing
    back."""

    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    delta_t: float  # interpolation weights of M_t and M_s (E3)
    delta_s: float
    noise: float  # sqrt(sigma_s^2 - c^2), the weight of epshat
    c: float  # eta (sigma_s / sigma_t) sqrt(1 - alpha_t^2 / alpha_s^2), the weight of fresh xi


def step_coefficients(
    process: FDMProcess, k: int, t: float, s: float, eta: float
) -> StepCoefficients:
    """The coefficients of the step t -> s in stage k (docs/design.md §7.1 (E25-E27))."""
    times = torch.tensor([t, s], dtype=torch.float64)
    alpha, sigma = (v.tolist() for v in process.alpha_sigma(times, k))
    delta_t, delta_s = process.delta(times, k).tolist()
    c = 0.0
    if eta > 0:
        c = eta * (sigma[1] / sigma[0]) * math.sqrt(max(0.0, 1.0 - alpha[0] ** 2 / alpha[1] ** 2))
    noise = math.sqrt(max(0.0, sigma[1] ** 2 - c**2))
    return StepCoefficients(
        t, s, *alpha[:1], sigma[0], alpha[1], sigma[1], delta_t, delta_s, noise, c
    )


def mix_coefficients(
    process: FDMProcess, k: int, step: StepCoefficients
) -> tuple[float, float, float]:
    """(keep, project, r) of the step as one combination (E40): z_s = r z + keep xhat +
    project g(f(xhat)) (+ c xi), r = noise / sigma_t. With M = (1 - delta) xhat +
    delta g(f(xhat)), epshat = (z - alpha_t M_t) / sigma_t and z_s = alpha_s M_s + noise epshat,
    keep = alpha_s (1 - delta_s) - r alpha_t (1 - delta_t) and project = alpha_s delta_s -
    r alpha_t delta_t; in a stage that does not interpolate, keep = alpha_s - r alpha_t and
    project = 0."""
    r = step.noise / step.sigma_t
    if not process.interpolates(k):
        return step.alpha_s - r * step.alpha_t, 0.0, r
    keep = step.alpha_s * (1 - step.delta_s) - r * step.alpha_t * (1 - step.delta_t)
    project = step.alpha_s * step.delta_s - r * step.alpha_t * step.delta_t
    return keep, project, r


def combine(
    process: FDMProcess,
    k: int,
    z: torch.Tensor,
    clean: torch.Tensor,
    keep: Coefficient,
    project: Coefficient,
    r: Coefficient,
) -> torch.Tensor:
    """r z + keep xhat + project g(f(xhat)) (E40): inside an interpolating stage one
    `SignalTransform.mix_projection` (one fused pass for down-sampling)."""
    if process.interpolates(k):
        return process.transforms[k].mix_projection(clean, keep, project, z, r)
    return keep * clean + r * z


def apply_step(
    process: FDMProcess,
    z: torch.Tensor,
    clean: torch.Tensor,
    k: int,
    step: StepCoefficients,
    xi: torch.Tensor | None,
) -> torch.Tensor:
    """z_s from z_t and the clean prediction xhat^k (E25-E27) as one combination (E40,
    `mix_coefficients`); no noise is added when c = 0 (eta = 0)."""
    z_s = combine(process, k, z, clean, *mix_coefficients(process, k, step))
    if step.c > 0:
        if xi is None:
            raise ValueError("a step with eta > 0 needs the noise xi")
        z_s = z_s + step.c * xi
    return z_s


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
    """One step t -> s (s < t) inside stage k from the clean prediction xhat^k
    (docs/design.md §7.1 (E25-E27))."""
    return apply_step(process, z, clean, k, step_coefficients(process, k, t, s, eta), xi)


def denoise(
    process: FDMProcess,
    model: Denoiser,
    z: torch.Tensor,
    k: int,
    t: float | torch.Tensor,
    alpha_t: Coefficient,
    sigma_t: Coefficient,
    clip: float | None,
) -> torch.Tensor:
    """The network's clean prediction xhat^k at (z_t, t) in stage k (E19 inverted with alpha_t,
    sigma_t: numbers, or 0-dim tensors in a compiled step), clamped to +-clip."""
    if isinstance(t, torch.Tensor):
        tt = t.to(torch.float32).expand(z.shape[0])
    else:
        tt = torch.full((z.shape[0],), t, dtype=torch.float32, device=z.device)
    output = model(z, tt, k).float()
    clean = process.clean_from_output(output, z, alpha_t, sigma_t)
    return clean if clip is None else clean.clamp(-clip, clip)


def step_numbers(
    process: FDMProcess, k: int, steps: list[StepCoefficients], device: torch.device | str
) -> list[torch.Tensor]:
    """Each step's numbers (t, alpha_t, sigma_t, keep, project, r, c) as a float32 tensor on
    `device`, all of a stage's steps moved there at once: what a compiled step reads instead of
    Python numbers (each new number would be a new constant, and a new graph)."""
    rows = [[st.t, st.alpha_t, st.sigma_t, *mix_coefficients(process, k, st), st.c] for st in steps]
    return list(torch.tensor(rows, dtype=torch.float32, device=device).unbind())


def tensor_step(
    process: FDMProcess,
    model: Denoiser,
    z: torch.Tensor,
    k: int,
    numbers: torch.Tensor,
    clip: float | None,
    xi: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_s, xhat^k): `denoise` and the step (E40) with the step's numbers read from the
    device (`step_numbers`), the step `sample` compiles; c xi is added when `xi` is given."""
    t, alpha_t, sigma_t, keep, project, r, c = numbers.unbind()
    clean = denoise(process, model, z, k, t, alpha_t, sigma_t, clip)
    z_s = combine(process, k, z, clean, keep, project, r)
    return (z_s if xi is None else z_s + c * xi), clean


def compiled_step() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`tensor_step` under ``torch.compile`` with static shapes (``dynamic=False``): one graph
    per stage (and batch size), whose steps differ only in the numbers tensor; the backend
    $FDM_COMPILE_BACKEND (default inductor) and mode $FDM_COMPILE_MODE, as ``fdm train
    --compile``."""
    return torch.compile(tensor_step, **compile_options())


def initial_state(
    process: FDMProcess,
    draw: Callable[[int], torch.Tensor],
    start: Start | None,
    device: torch.device | str,
) -> tuple[int, float, torch.Tensor, torch.Tensor | None]:
    """(stage, t, z, clean): pure noise z = sigma_K(1) xi at t = 1 of stage K (the terminal noise
    level, docs/design.md §4), or z = alpha_t M_t y + sigma_t xi from the start signal y, which
    then stands as the clean prediction (docs/design.md §7.4 (E30))."""
    if start is None:
        k = process.num_stages - 1
        sigma = float(process.alpha_sigma(torch.ones(1, dtype=torch.float64), k)[1])
        return k, 1.0, sigma * draw(k), None
    k, signal = start.stage, start.signal.to(device=device, dtype=torch.float32)
    t = process.boundaries[k] if start.t is None else float(start.t)
    if not process.boundaries[k] <= t <= process.boundaries[k + 1]:
        raise ValueError(
            f"start t={t} is outside stage {k}, which spans "
            f"[{process.boundaries[k]}, {process.boundaries[k + 1]}]"
        )
    tt = torch.full((signal.shape[0],), t, dtype=torch.float64, device=device)
    return k, t, process.q_sample(signal, tt, k, draw(k)), signal


@torch.no_grad()
def sample(
    process: FDMProcess,
    model: Denoiser,
    config: SamplerConfig,
    noise: StageNoise,
    start: Start | None = None,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
) -> SampleOutput:
    """Generate len(noise) samples, or condition on `start`; `callback` sees every step."""

    def draw(k: int) -> torch.Tensor:
        return noise.draw(k, process.stage_shapes[k], device=device)

    noise.reset()
    steps = steps_per_stage(process, config)
    top, t_top, z, clean = initial_state(process, draw, start, device)
    compiled = compiled_step() if config.compile else None
    for k in range(top, -1, -1):
        t_first = t_top if k == top else process.boundaries[k + 1]
        grid = stage_grid(process, k, t_first, steps[k])
        steps_k = [step_coefficients(process, k, t, s, config.eta) for t, s in pairwise(grid)]
        numbers = step_numbers(process, k, steps_k, z.device) if compiled is not None else []
        for i, step in enumerate(steps_k):
            xi = draw(k) if config.eta else None
            if compiled is not None:
                z, clean = compiled(process, model, z, k, numbers[i], config.clip, xi)
            else:
                clean = denoise(
                    process, model, z, k, step.t, step.alpha_t, step.sigma_t, config.clip
                )
                z = apply_step(process, z, clean, k, step, xi)
            if callback is not None:
                callback(k, step.s, z, clean)
        if k > 0:
            z = process.up_step(z, k - 1, draw(k - 1), clean)
    return SampleOutput(process.to_data_space(clean, 0), z)
