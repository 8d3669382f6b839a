"""Down-sampling by an integer factor (docs/design.md §5.2 (E14, E15), boundary ``projection``).

f is mean pooling over factor x factor blocks and g nearest up-sampling, so f(g(y)) = y and
P = g f is the orthogonal projection onto block-constant images; f maps white noise to white
noise of variance 1 / factor^2 = d_{k+1} / d_k. `mix_projection` (the stage mean, z_t and the
sampler step) runs as one fused pass, `fdm_models.ops.mix_block_mean`.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fdm_core import Boundary, Coefficient, Shape, SignalTransform, TransformParams
from fdm_models.ops import downsample_mean, mix_block_mean, upsample_nearest


class DownsampleParams(TransformParams):
    factor: int = Field(2, ge=2, description="integer down-sampling factor per side")


class DownsampleTransform(SignalTransform):
    name = "downsample"
    boundary = Boundary.PROJECTION
    Params = DownsampleParams

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        factor = self.params.factor
        if height % factor or width % factor:
            raise ValueError(
                f"downsample factor {factor} must divide the stage size {height}x{width}; "
                f"height and width must be multiples of {factor}"
            )
        return (channels, height // factor, width // factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        return downsample_mean(x, self.params.factor)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return upsample_nearest(y, self.params.factor)

    def mix_projection(
        self,
        x: torch.Tensor,
        keep: Coefficient,
        project: Coefficient,
        extra: torch.Tensor | None = None,
        extra_scale: Coefficient | None = None,
    ) -> torch.Tensor:
        """keep x + project P x (+ extra_scale extra) in one pass (docs/design.md (E4))."""
        self.out_shape(self.validate_batch(x))
        return mix_block_mean(x, self.params.factor, keep, project, extra, extra_scale)
