"""Torch reference implementations of the blur and resampling ops.

These define the semantics the Triton kernels must match exactly: separable blur with a 1-D
kernel of odd length and reflect padding, mean down-sampling by an integer factor, nearest
up-sampling by an integer factor, and the fused stage mean built from the last two. Inputs are
(B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blur_separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel with `kernel` (1-D, odd length) along H then W, reflect padding."""
    channels = x.shape[1]
    radius = kernel.numel() // 2
    k = kernel.to(dtype=x.dtype, device=x.device)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def downsample_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over non-overlapping factor x factor blocks (H and W must be divisible by factor)."""
    return F.avg_pool2d(x, factor)


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat every pixel into a factor x factor block."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def mix_block_mean(
    x: torch.Tensor,
    factor: int,
    keep: torch.Tensor,
    project: torch.Tensor,
    extra: torch.Tensor | None = None,
    extra_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """keep x + project P x (+ extra_scale extra), P x = up(down(x)) the block mean broadcast
    back; the coefficients are (B,) tensors, one per sample."""

    def rows(c: torch.Tensor) -> torch.Tensor:
        return c.to(x.dtype).view(-1, 1, 1, 1)

    out = rows(keep) * x + rows(project) * upsample_nearest(downsample_mean(x, factor), factor)
    if extra is not None and extra_scale is not None:
        out = out + rows(extra_scale) * extra
    return out
