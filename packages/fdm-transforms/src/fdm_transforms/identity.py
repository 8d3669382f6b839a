"""The identity transform: f = g = I, boundary ``identity``. With it a chain adds a stage that
only changes the stage embedding (useful as a control and in tests)."""

from __future__ import annotations

import torch

from fdm_core import Boundary, Shape, SignalTransform


class IdentityTransform(SignalTransform):
    name = "identity"
    boundary = Boundary.IDENTITY

    def out_shape(self, shape: Shape) -> Shape:
        return self.validate_shape(shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_batch(x)
        return x

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return y
