"""Blur (docs/design.md §5.3 (E16), boundary ``identity``): x^{k+1} = G x^k in the same space,
g = identity.

A chain of blur transforms composes: with per-stage sigmas s_1, s_2, ... stage k is the data
blurred by all kernels up to k. ``kind="gaussian"`` uses a sampled, normalised Gaussian of
standard deviation `sigma` (radius ceil(3 sigma)); ``kind="uniform"`` a box of odd length `size`.
sigma = 0 (or size = 1) is the identity, so a zero-blur chain reduces to a plain DDPM.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from fdm_core import Boundary, Shape, SignalTransform, TransformParams
from fdm_models.ops import blur_separable


class BlurParams(TransformParams):
    kind: Literal["gaussian", "uniform"] = "gaussian"
    sigma: float = Field(
        1.0, ge=0.0, allow_inf_nan=False, description="gaussian standard deviation in pixels"
    )
    size: int = Field(3, ge=1, description="uniform (box) kernel length, odd")

    @model_validator(mode="after")
    def _check(self) -> BlurParams:
        if self.kind == "uniform" and self.size % 2 == 0:
            raise ValueError(f"size must be an odd kernel length for kind=uniform, got {self.size}")
        if not math.isfinite(3.0 * self.sigma):
            raise ValueError(
                f"sigma = {self.sigma:g} is too large: the kernel radius 3 sigma must be finite"
            )
        return self

    @property
    def radius(self) -> int:
        """Half the kernel length, known without building the kernel."""
        if self.kind == "uniform":
            return self.size // 2
        return math.ceil(3.0 * self.sigma) if self.sigma > 0.0 else 0


def blur_kernel(kind: str, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """The normalised 1-D kernel (float64) of a separable blur."""
    if kind == "uniform":
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    if sigma == 0.0:
        return torch.ones(1, dtype=torch.float64)
    radius = math.ceil(3.0 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


class BlurTransform(SignalTransform):
    name = "blur"
    boundary = Boundary.IDENTITY
    Params = BlurParams

    @functools.cached_property
    def kernel(self) -> torch.Tensor:
        """The 1-D kernel, built on first use (out_shape refuses one larger than the stage)."""
        p = self.params
        return blur_kernel(p.kind, p.sigma, p.size)

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        radius = self.params.radius
        if radius >= min(height, width):
            raise ValueError(
                f"blur kernel radius {radius} needs a stage larger than {radius}x{radius} for "
                f"reflect padding (height and width at least {radius + 1}), got {height}x{width}"
            )
        return (channels, height, width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        if self.params.radius == 0:
            return x
        return blur_separable(x, self.kernel)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return y

    def to_config(self) -> dict[str, object]:
        p = self.params
        extra = {"sigma": p.sigma} if p.kind == "gaussian" else {"size": p.size}
        return {"name": self.name, "kind": p.kind, **extra}
