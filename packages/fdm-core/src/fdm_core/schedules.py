"""Noise schedules lambda(t) and stage schedules tau_1..tau_K (docs/design.md §1, §3.2, §4 (E7, E8,
E11)).

Noise schedules give the base log-SNR lambda(t) on t in [0, 1] (decreasing: t = 0 is clean,
t = 1 is noise). Alpha and sigma are variance preserving: alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda). Stage schedules split [0, 1] into K + 1 stages at boundaries
0 < tau_1 < ... < tau_K < 1. Both are registered through the plugin hooks (see `builtins`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from itertools import pairwise
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TERMINAL_ALPHA_MAX = 0.01
"""The largest alpha(1) a noise schedule may have: the sampler starts from z = sigma(1) xi, which
assumes no signal is left at t = 1."""


class NoiseSchedule(ABC):
    """Base log-SNR lambda(t), t in [0, 1]."""

    name: ClassVar[str]
    Params: ClassVar[type[ScheduleParams]] = ScheduleParams

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    @abstractmethod
    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) for t in [0, 1], elementwise."""

    def terminal_alpha(self) -> float:
        """alpha(1) = sqrt(sigmoid(lambda(1))): the signal left at pure noise."""
        return float(torch.sigmoid(self.logsnr(torch.ones(1, dtype=torch.float64))).sqrt())

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}


class CosineParams(ScheduleParams):
    logsnr_min: float = Field(-15.0, description="lambda(1): the log-SNR at pure noise")
    logsnr_max: float = Field(15.0, description="lambda(0): the log-SNR at the data")
    shift: float = Field(0.0, description="added to lambda everywhere (shifted cosine)")

    @model_validator(mode="after")
    def _ordered(self) -> CosineParams:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max})"
            )
        return self


class CosineSchedule(NoiseSchedule):
    """lambda(t) = -2 log tan(pi t / 2), clipped to [logsnr_min, logsnr_max] by rescaling t.

    t is mapped affinely onto [t_min, t_max] = [atan(e^{-lmax/2}), atan(e^{-lmin/2})] * 2/pi, so the
    clipped schedule stays smooth and hits the limits exactly at t = 0 and t = 1.
    """

    name = "cosine"
    Params = CosineParams

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        a_min = math.atan(math.exp(-0.5 * p.logsnr_max))
        a_max = math.atan(math.exp(-0.5 * p.logsnr_min))
        angle = a_min + t.double() * (a_max - a_min)
        return (-2.0 * torch.log(torch.tan(angle)) + p.shift).to(t.dtype)


class ShiftedCosineParams(CosineParams):
    shift: float = Field(
        2.0 * math.log(0.5),
        description="log-SNR shift; 2 log(base/resolution) as in simple diffusion",
    )


class ShiftedCosineSchedule(CosineSchedule):
    """Cosine schedule shifted by a constant in log-SNR (Hoogeboom et al., simple diffusion)."""

    name = "shifted_cosine"
    Params = ShiftedCosineParams


class LinearBetaParams(ScheduleParams):
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    num_train_steps: int = Field(1000, gt=0, description="T of the discrete DDPM schedule")


class LinearBetaSchedule(NoiseSchedule):
    """DDPM's linear betas on continuous t: log alphabar(t) = -T (b0 t + (b1 - b0) t^2 / 2).

    This is the continuum limit of prod_i (1 - beta_i) with beta linear from b0 to b1 over T steps.
    lambda = log(alphabar / (1 - alphabar)) = -log(expm1(T (b0 t + (b1 - b0) t^2 / 2))).
    """

    name = "linear_beta"
    Params = LinearBetaParams

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        p = self.params
        td = t.double()
        integral = p.num_train_steps * (
            p.beta_start * td + 0.5 * (p.beta_end - p.beta_start) * td**2
        )
        integral = integral.clamp_min(1e-12)
        return (-torch.log(torch.expm1(integral))).to(t.dtype)


class StageSchedule(ABC):
    """Splits t in [0, 1] into `num_stages` stages; stage k owns [tau_k, tau_{k+1})."""

    name: ClassVar[str]
    Params: ClassVar[type[ScheduleParams]] = ScheduleParams

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    @abstractmethod
    def boundaries(self, num_stages: int) -> list[float]:
        """The inner boundaries tau_1 < ... < tau_K (K = num_stages - 1), each in (0, 1)."""

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}


class EqualStages(StageSchedule):
    """tau_k = k / (K + 1): every stage gets the same share of t."""

    name = "equal"

    def boundaries(self, num_stages: int) -> list[float]:
        return [k / num_stages for k in range(1, num_stages)]


class ExplicitParams(ScheduleParams):
    boundaries: list[float] = Field(description="tau_1 < ... < tau_K, each strictly inside (0, 1)")

    @model_validator(mode="after")
    def _increasing(self) -> ExplicitParams:
        b = self.boundaries
        if any(not 0.0 < tau < 1.0 for tau in b):
            raise ValueError(f"boundaries must lie strictly inside (0, 1), got {b}")
        if any(lo >= hi for lo, hi in pairwise(b)):
            raise ValueError(f"boundaries must be strictly increasing, got {b}")
        return self


class ExplicitStages(StageSchedule):
    """Boundaries given by hand."""

    name = "explicit"
    Params = ExplicitParams

    def boundaries(self, num_stages: int) -> list[float]:
        b = list(self.params.boundaries)
        if len(b) != num_stages - 1:
            raise ValueError(
                f"{len(b)} boundaries given but the transform chain makes {num_stages} stages, "
                f"which need {num_stages - 1}"
            )
        return b


def apportion(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """Split `total` into integer counts proportional to `weights` (largest remainder).

    Each entry first gets `minimum`; the rest, max(0, total - minimum * n), is shared in
    proportion to the weights, floors first, then one more to the largest remainders (ties to
    the earlier entry). The loss uses it for samples per stage, the sampler for steps per stage.
    """
    spare = max(0, total - minimum * len(weights))
    shares = [spare * w / sum(weights) for w in weights]
    floors = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda k: floors[k] - shares[k])
    counts = [minimum + f for f in floors]
    for k in by_remainder[: spare - sum(floors)]:
        counts[k] += 1
    return counts
