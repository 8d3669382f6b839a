"""Blur (docs/design.md §5.3 (E16), boundary ``identity``): x^{k+1} = G x^k in the same space,
g = identity.

A chain of blur transforms composes: with per-stage sigmas s_1, s_2, ... stage k is the data
blurred by all kernels up to k. ``kind="gaussian"`` uses a sampled, normalised Gaussian of
standard deviation `sigma` (radius ceil(3 sigma)); ``kind="uniform"`` a box of odd length `size`.
sigma = 0 (or size = 1) is the identity, so a zero-blur chain reduces to a plain DDPM.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from fdm_core import Boundary, Shape, SignalTransform, TransformParams
from fdm_models.ops import blur_separable


class BlurParams(TransformParams):
    kind: Literal["gaussian", "uniform"] = "gaussian"
    sigma: float = Field(1.0, ge=0.0, description="gaussian standard deviation in pixels")
    size: int = Field(3, ge=1, description="uniform (box) kernel length, odd")

    @model_validator(mode="after")
    def _odd(self) -> BlurParams:
        if self.kind == "uniform" and self.size % 2 == 0:
            raise ValueError(f"size must be an odd kernel length for kind=uniform, got {self.size}")
        return self


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

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        self.kernel = blur_kernel(p.kind, p.sigma, p.size)

    def out_shape(self, shape: Shape) -> Shape:
        radius = self.kernel.numel() // 2
        if radius >= min(shape[1:]):
            raise ValueError(
                f"blur kernel radius {radius} needs a stage larger than {shape[1]}x{shape[2]} "
                "for reflect padding"
            )
        return tuple(shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel.numel() == 1:
            return x
        return blur_separable(x, self.kernel)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def to_config(self) -> dict[str, object]:
        p = self.params
        extra = {"sigma": p.sigma} if p.kind == "gaussian" else {"size": p.size}
        return {"name": self.name, "kind": p.kind, **extra}
