"""A Haar-wavelet low-pass that keeps the resolution (boundary ``identity``, like blur).

f runs `levels` levels of the orthonormal 2-D Haar transform, zeroes every detail band and
synthesises back: f(x) has the shape of x and equals the mean over 2^levels x 2^levels blocks,
broadcast over each block. g is the identity.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fdm_core import Boundary, Shape, SignalTransform, TransformParams

SQRT_HALF = 1.0 / math.sqrt(2.0)


def haar_analysis(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One level along `dim`: pairwise sums (low) and differences (high), scaled by 1/sqrt(2)."""
    even, odd = x.unfold(dim, 2, 2).unbind(-1)  # neighbours (x0, x1), (x2, x3), ... along dim
    return (even + odd) * SQRT_HALF, (even - odd) * SQRT_HALF


def haar_synthesis(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `haar_analysis`: interleave (low + high) / sqrt(2), (low - high) / sqrt(2)."""
    dim = dim % low.dim()
    even, odd = (low + high) * SQRT_HALF, (low - high) * SQRT_HALF
    return torch.stack((even, odd), dim=dim + 1).flatten(dim, dim + 1)


def haar2d(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One level of the 2-D Haar transform of (B, C, H, W): the LL band and (LH, HL, HH)."""
    low, high = haar_analysis(x, -1)  # along W
    ll, lh = haar_analysis(low, -2)  # then along H
    hl, hh = haar_analysis(high, -2)
    return ll, (lh, hl, hh)


def ihaar2d(ll: torch.Tensor, details: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The inverse of `haar2d`."""
    lh, hl, hh = details
    return haar_synthesis(haar_synthesis(ll, lh, -2), haar_synthesis(hl, hh, -2), -1)


class HaarParams(TransformParams):
    levels: int = Field(1, ge=1, description="Haar levels: f keeps 2^levels x 2^levels means")


class HaarLowPass(SignalTransform):
    """f: the image rebuilt from its Haar LL band after `levels` levels; g: the identity."""

    name = "haar"
    boundary = Boundary.IDENTITY
    Params = HaarParams

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        block = 2**self.params.levels
        if height % block or width % block:
            raise ValueError(
                f"haar with levels={self.params.levels} needs height and width to be "
                f"multiples of 2**levels = {block}, got {height}x{width}"
            )
        return (channels, height, width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))  # one clear error for a wrong batch
        ll = x
        for _ in range(self.params.levels):
            ll, _details = haar2d(ll)
        for _ in range(self.params.levels):
            ll = ihaar2d(ll, (torch.zeros_like(ll),) * 3)  # every detail band zeroed
        return ll

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(y))
        return y
