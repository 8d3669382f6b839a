"""The f-DM forward process: stage signals, interpolated means, rescaled log-SNR, boundary steps.

Implements docs/design.md §2-§5. Stage k (0..K) owns t in [tau_k, tau_{k+1}); its signal x^k
has shape `stage_shapes[k]`. Inside stage k < K the mean is the interpolation

    x_t = (1 - delta_t) x^k + delta_t g(f(x^k)) = M_t x^k,
    delta_t = (t - tau_k) / (tau_{k+1} - tau_k)

(delta_t = 0 with interpolation off, and always in stage K), and z_t = alpha_t x_t + sigma_t eps
with the resolution-aware log-SNR lambda_k(t) = lambda(t) + gamma log(d_0 / d_k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

import torch

from .config import ProcessConfig, resolve_components
from .registry import Registry, distribution_of, get_registry
from .transform import Boundary, SignalTransform


class Denoiser(Protocol):
    """The network F(z_t, t, k): a stage-k batch z (B, *stage_shapes[k]), times t (B,) and the
    stage index; returns a tensor shaped like z, read through `FDMProcess.predict_clean`."""

    def __call__(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor: ...


@runtime_checkable
class PackedDenoiser(Protocol):
    """A network that runs every stage's rows in one call (docs/design.md §6.6) and says so with
    ``packs_stages = True``: ``forward_packed(zs, t)`` takes ``zs[k]`` (n_k, *stage_shapes[k]) or
    None per stage and ``t`` (sum n_k,) in stage order, and returns the outputs per stage."""

    packs_stages: bool

    def forward_packed(
        self, zs: Sequence[torch.Tensor | None], t: torch.Tensor
    ) -> list[torch.Tensor | None]: ...


def packs_stages(model: object) -> bool:
    """Whether `model` declares the packed forward (else the loss calls it once per stage)."""
    return isinstance(model, PackedDenoiser) and model.packs_stages is True


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) tensor over the trailing dims of `like`, in `like`'s dtype."""
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class StageBatch:
    """The part of a training batch that falls in one stage (every tensor has B_k rows)."""

    stage: int
    rows: slice  # its rows of the batch, which is ordered by stage
    t: torch.Tensor
    x_stage: torch.Tensor  # x^k
    z: torch.Tensor  # z_t = alpha_t M_t x^k + sigma_t eps
    eps: torch.Tensor
    target: torch.Tensor  # what the network is trained to output (see FDMProcess.target)


class FDMProcess:
    """A configured f-DM process. Build it from a `ProcessConfig`; it holds no learned state."""

    def __init__(self, config: ProcessConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or get_registry()
        components = resolve_components(config, self.registry)
        self.transforms: list[SignalTransform] = components.transforms
        self.latent: SignalTransform | None = components.latent
        self.noise_schedule = components.noise_schedule
        self.stage_schedule = components.stage_schedule
        self.stage_shapes: list[tuple[int, ...]] = components.stage_shapes
        self.num_stages = len(self.transforms) + 1
        self.boundaries: list[float] = [0.0, *self.stage_schedule.boundaries(self.num_stages), 1.0]
        self.stage_lengths: list[float] = [hi - lo for lo, hi in pairwise(self.boundaries)]
        dims = [math.prod(s) for s in self.stage_shapes]
        self.logsnr_offsets = [config.gamma * math.log(dims[0] / d) for d in dims]

    # -- time and noise levels --------------------------------------------------------------
    def stage_of(self, t: torch.Tensor) -> torch.Tensor:
        """Stage index k with tau_k <= t < tau_{k+1}; t = 1 is in stage K (docs/design.md (E2))."""
        inner = torch.tensor(self.boundaries[1:-1], dtype=t.dtype, device=t.device)
        return torch.bucketize(t, inner, right=True)

    def delta(self, t: torch.Tensor, k: int) -> torch.Tensor:
        """Interpolation weight delta_t in [0, 1] inside stage k; 0 in stage K or with it off
        (docs/design.md §2 (E3))."""
        if k == self.num_stages - 1 or not self.config.interpolation:
            return torch.zeros_like(t)
        return ((t - self.boundaries[k]) / self.stage_lengths[k]).clamp(0.0, 1.0)

    def logsnr(self, t: torch.Tensor, k: int) -> torch.Tensor:
        """lambda_k(t) = lambda(t) + gamma log(d_0 / d_k), the resolution-aware log-SNR
        (docs/design.md §3.3, §4 (E9, E10)).

        In the last stage K the offset is annealed linearly to 0 at t = 1, so lambda_K(1) =
        lambda(1): the sampler's prior z = sigma xi at t = 1 stays the base schedule's near-pure
        noise whatever the chain (the terminal noise level).
        """
        offset = self.logsnr_offsets[k]
        if k == self.num_stages - 1 and offset:
            tau = self.boundaries[k]
            offset = offset * (1.0 - ((t - tau) / (1.0 - tau)).clamp(0.0, 1.0))
        return self.noise_schedule.logsnr(t) + offset

    def alpha_sigma(self, t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Variance-preserving alpha_t, sigma_t of stage k, in float64 (docs/design.md (E6))."""
        lam = self.logsnr(t.double(), k)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    # -- signals --------------------------------------------------------------------------------
    def stage_signal(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x^k = f_k(...f_1(x^0)) for data x, where x^0 = x, or E(x) in latent diffusion
        (docs/design.md §1, §10.3)."""
        if self.latent is not None:
            x = self.latent.encode(x)
        for i in range(k):
            x = self._encode(i, x)
        return x

    def _encode(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """f_{i+1}(x), its shape checked against the config's promise (metadata: no read)."""
        y = self.transforms[i].encode(x)
        if tuple(y.shape[1:]) != tuple(self.stage_shapes[i + 1]):
            raise ValueError(
                f"{self._name(i)} encoded a batch of {x.shape[0]} to per-sample shape "
                f"{tuple(y.shape[1:])}, but its out_shape promised "
                f"{tuple(self.stage_shapes[i + 1])}: fix the transform or leave it out"
            )
        return y

    def check_stage_signals(self, x: torch.Tensor) -> None:
        """Run every transform once on a real batch (before training: it reads values back):
        a non-finite output from finite input is a ValueError naming the transform and its
        distribution, so a broken plugin is not blamed on the learning rate later."""
        before = self.stage_signal(x, 0)
        for i in range(self.num_stages - 1):
            after = self._encode(i, before)
            if bool(torch.isfinite(before).all()) and not bool(torch.isfinite(after).all()):
                raise ValueError(
                    f"{self._name(i)} returned NaN or infinite values from finite stage-"
                    f"{i} signals: the transform is broken; fix it or leave it out"
                )
            before = after

    def _name(self, i: int) -> str:
        transform = self.transforms[i]
        entry = self.registry.entries["transform"].get(transform.name)
        source = f"{entry.distribution} {entry.version}" if entry else distribution_of(transform)
        return f"transforms[{i}] ({transform.name}, from {source})"

    def to_data_space(self, xk: torch.Tensor, k: int) -> torch.Tensor:
        """g_1(...g_k(x^k)) (then the latent's decoder): a stage-k signal shown in data space,
        e.g. for a stage strip or the sampler's output."""
        for transform in reversed(self.transforms[:k]):
            xk = transform.decode(xk)
        return xk if self.latent is None else self.latent.decode(xk)

    def mean(self, xk: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        """M_t x^k = x^k + delta_t (g(f(x^k)) - x^k) (docs/design.md §2 (E4))."""
        if not self.interpolates(k):
            return xk
        delta = self.delta(t, k)
        return self.transforms[k].mix_projection(xk, 1 - delta, delta)

    def interpolates(self, k: int) -> bool:
        """Whether stage k's mean moves with t: interpolation on and k < K (docs/design.md §2)."""
        return self.config.interpolation and k < self.num_stages - 1

    def q_sample(
        self, x_stage: torch.Tensor, t: torch.Tensor, k: int, eps: torch.Tensor
    ) -> torch.Tensor:
        """z_t = alpha_t M_t x^k + sigma_t eps for stage-k signals (docs/design.md §3.1 (E5))."""
        return self.q_sample_from(x_stage, t, k, eps, *self.alpha_sigma(t, k))

    def q_sample_from(
        self,
        x_stage: torch.Tensor,
        t: torch.Tensor,
        k: int,
        eps: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
    ) -> torch.Tensor:
        """(E5) given the (B,) alpha_t, sigma_t: inside an interpolating stage one pass
        alpha (1 - delta) x^k + alpha delta g(f(x^k)) + sigma eps
        (`SignalTransform.mix_projection`)."""
        if not self.interpolates(k):
            return per_sample(alpha, x_stage) * x_stage + per_sample(sigma, eps) * eps
        delta = self.delta(t, k)
        keep, project = alpha * (1 - delta), alpha * delta
        return self.transforms[k].mix_projection(x_stage, keep, project, eps, sigma)

    # -- parameterization -------------------------------------------------------------------------
    def target(
        self, x_stage: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Training target of the network output F (docs/design.md §6.2 (E19)).

        v: (alpha_t z_t - x^k) / sigma_t (v-prediction against the stage-start signal);
        x0: x^k; eps: eps.
        """
        alpha, sigma = self.alpha_sigma(t, k)
        return self.target_from(x_stage, z, eps, per_sample(alpha, z), per_sample(sigma, z))

    def target_from(
        self,
        x_stage: torch.Tensor,
        z: torch.Tensor,
        eps: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
    ) -> torch.Tensor:
        """The target (E19) given alpha_t, sigma_t (per sample, or one number for the batch)."""
        kind = self.config.parameterization
        if kind == "x0":
            return x_stage
        if kind == "eps":
            return eps
        return (alpha * z - x_stage) / sigma

    def predict_clean(
        self, output: torch.Tensor, z: torch.Tensor, t: torch.Tensor, k: int
    ) -> torch.Tensor:
        """xhat^k from the network output F: the inverse of `target`."""
        alpha, sigma = self.alpha_sigma(t, k)
        return self.clean_from_output(output, z, per_sample(alpha, z), per_sample(sigma, z))

    def clean_from_output(
        self,
        output: torch.Tensor,
        z: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
    ) -> torch.Tensor:
        """xhat^k from F given alpha_t, sigma_t (per sample, or one number for the batch)."""
        kind = self.config.parameterization
        if kind == "x0":
            return output
        if kind == "eps":
            return (z - sigma * output) / alpha
        return alpha * z - sigma * output

    def stage_counts(self, t: torch.Tensor) -> list[int]:
        """Rows per stage of the times `t` (E2). Reads the stages back to the host: the training
        path gets its counts from `stratified_counts` instead."""
        counts = torch.bincount(self.stage_of(t), minlength=self.num_stages)
        return [int(n) for n in counts.tolist()]

    def split_by_stage(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        counts: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        noise: Sequence[torch.Tensor | None] | None = None,
    ) -> list[StageBatch]:
        """Noise a batch ordered by stage, stage k's rows being the next `counts[k]`: one
        `StageBatch` per stage present, each at its own shape (docs/design.md §6.3). Only stage
        k's rows are transformed to x^k; eps is drawn stage after stage. Given `counts`, slicing
        needs no read of the batch's values, so the step stays free of host synchronisation;
        without them they are read from `t`, which must then be ordered by stage. `noise[k]`,
        when given, is stage k's eps (see `fdm_core.loss.draw_noise`)."""
        if counts is None:
            stages = self.stage_of(t)
            if bool((stages[1:] < stages[:-1]).any()):
                raise ValueError("split_by_stage needs the batch ordered by stage (sort t first)")
            counts = self.stage_counts(t)
        groups, start = [], 0
        for k, n in enumerate(counts):
            if n == 0:
                continue
            rows = slice(start, start + n)
            start += n
            x_stage = self.stage_signal(x[rows], k)
            if noise is None:
                eps = torch.randn(
                    x_stage.shape, generator=generator, device=x.device, dtype=x.dtype
                )
            else:
                eps = noise[k]
            tk = t[rows]
            alpha, sigma = self.alpha_sigma(tk, k)
            z = self.q_sample_from(x_stage, tk, k, eps, alpha, sigma)
            target = self.target_from(x_stage, z, eps, per_sample(alpha, z), per_sample(sigma, z))
            groups.append(StageBatch(k, rows, tk, x_stage, z, eps, target))
        return groups

    # -- stage boundaries --------------------------------------------------------------------
    def boundary_scale(self, k: int) -> float:
        """c_k = alpha_k(tau) / alpha_{k+1}(tau) at tau = tau_{k+1}, the boundary between k and k+1
        (docs/design.md §5.1 (E12))."""
        tau = torch.tensor([self.boundaries[k + 1]], dtype=torch.float64)
        return float(self.alpha_sigma(tau, k)[0] / self.alpha_sigma(tau, k + 1)[0])

    def down_step(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Forward crossing at tau_{k+1}: z^(k+1) = f(z^(k)) / c_k (docs/design.md §5.1 (E12))."""
        return self.transforms[k].encode(z) / self.boundary_scale(k)

    def up_step(
        self, z_next: torch.Tensor, k: int, xi: torch.Tensor, clean_next: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reverse crossing at tau = tau_{k+1}, from stage k+1 to stage k (docs/design.md §5,
        (E15)-(E17)).

        projection: z^(k) = c_k g(z^(k+1)) + sigma_k (I - P) xi, the exact conditional;
        identity:   z^(k) = c_k z^(k+1) (c_k = 1 when the dimension does not change);
        renoise:    z^(k) = alpha_k g(xhat^{k+1}) + sigma_k xi (needs `clean_next`).
        `xi` is standard normal noise of stage-k shape.
        """
        transform = self.transforms[k]
        tau = torch.tensor([self.boundaries[k + 1]], dtype=torch.float64)
        alpha, sigma = (float(v) for v in self.alpha_sigma(tau, k))
        if transform.boundary == Boundary.PROJECTION:
            orthogonal = xi - transform.decode(transform.encode(xi))
            return self.boundary_scale(k) * transform.decode(z_next) + sigma * orthogonal
        if transform.boundary == Boundary.IDENTITY:
            return self.boundary_scale(k) * transform.decode(z_next)
        if clean_next is None:
            raise ValueError("a renoise boundary needs the clean prediction of the next stage")
        return alpha * transform.decode(clean_next) + sigma * xi
