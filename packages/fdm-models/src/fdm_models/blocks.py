"""Building blocks of the multi-stage UNet: conditioning, residual and attention blocks.

The conditioning vector of F(z_t, t, k) (docs/design.md §6.1 (E18)) is an MLP of sinusoidal
features of 1000 t plus a learned embedding of the stage index k; residual blocks read it through
an adaptive group-norm scale and shift.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import dot_product_attention
from .ops import upsample_nearest


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (cos | sin) of 1000 t for t in [0, 1], shape (B, dim); periods up to
    10000."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = 1000.0 * t.float()[:, None] * freqs[None, :]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        features = F.pad(features, (0, 1))
    return features


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 32 groups (the largest divisor of ``channels`` not above 32)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` so that it starts as the zero map."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class Conditioning(nn.Module):
    """cond(t, k) = MLP(sinusoidal(1000 t)) + stage_embedding[k]."""

    def __init__(self, base_channels: int, cond_dim: int, num_stages: int) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )
        self.stage_embedding = nn.Embedding(num_stages, cond_dim)
        nn.init.normal_(self.stage_embedding.weight, std=0.02)

    def forward(self, t: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """cond for rows in stage order: the first counts[0] rows are stage 0's, and so on."""
        weight = self.stage_embedding.weight
        features = timestep_embedding(t, self.base_channels).to(weight.dtype)
        stage_rows = [weight[k].expand(n, -1) for k, n in enumerate(counts) if n]
        embedding = stage_rows[0] if len(stage_rows) == 1 else torch.cat(stage_rows)
        return self.time_mlp(features) + embedding


class ResBlock(nn.Module):
    """GN-SiLU-conv, adaptive GN (scale, shift from cond), SiLU, dropout, zero-init conv, skip."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.cond_proj = nn.Linear(cond_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.cond_proj(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, zero-initialised output projection.

    Q, K and V come out of one linear map of the (B, L, C) tokens, so each is a (B, heads, L,
    head_dim) view with unit stride on head_dim, the layout the fused SDPA kernels accept.
    """

    def __init__(self, channels: int, num_heads: int, backend: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        length = height * width
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        qkv = self.qkv(tokens).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = dot_product_attention(qkv[0], qkv[1], qkv[2], self.backend)  # (B, heads, L, head_dim)
        out = self.proj(out.transpose(1, 2).reshape(batch, length, channels))
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (level l -> l + 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x up-sampling (the ``fdm::upsample_nearest`` op) then a 3x3 convolution
    (level l -> l - 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest(x, 2))
