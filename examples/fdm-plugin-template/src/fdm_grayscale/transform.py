"""Colour to gray and back: a transform that changes the channel count (boundary
``projection``).

f averages the C channels of every pixel, (C, H, W) -> (1, H, W); g copies the gray value back
into each of the C channels. Then f(g(y)) = y, P = g f (each pixel's channel mean, broadcast) is
an orthogonal projection, and f maps white noise to white noise of variance 1 / C =
d_{k+1} / d_k: the three properties a ``projection`` boundary promises (docs/plugins.md,
"Boundary kinds"). A chain such as RGB -> gray -> half-size gray trains with the built-in UNet,
which gives every stage its own input and output head.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fdm_core import Boundary, Shape, SignalTransform, TransformParams


class GrayscaleParams(TransformParams):
    channels: int = Field(3, ge=2, description="colour channels of the input stage")


class Grayscale(SignalTransform):
    name = "grayscale"
    boundary = Boundary.PROJECTION
    Params = GrayscaleParams

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        if channels != self.params.channels:
            raise ValueError(
                f"grayscale takes {self.params.channels} channels (its `channels` parameter), "
                f"got a stage of shape {tuple(shape)}"
            )
        return (1, height, width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        return x.mean(dim=1, keepdim=True)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return y.expand(-1, self.params.channels, -1, -1).contiguous()
