"""Encoder, decoder and vector quantizer of :class:`fdm_models.autoencoder.Autoencoder`.

Every block normalises with GroupNorm (never BatchNorm), so each image of a batch is encoded and
decoded independently of the others. The down- and up-sampling layers and the self-attention
block are the UNet's (:mod:`fdm_models.blocks`); the residual block here is the UNet's without
the time/stage conditioning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock, Downsample, Upsample, group_norm, zero_init


class PlainResBlock(nn.Module):
    """GN-SiLU-conv, GN-SiLU-zero-init conv, plus a (1x1 conv) skip: starts as the skip map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _middle(channels: int, attention: bool, num_heads: int, backend: str) -> nn.Sequential:
    """Residual block, optional self-attention, residual block (at the lowest resolution)."""
    return nn.Sequential(
        PlainResBlock(channels, channels),
        AttentionBlock(channels, num_heads, backend) if attention else nn.Identity(),
        PlainResBlock(channels, channels),
    )


class Encoder(nn.Module):
    """conv in; per level: residual blocks then a stride-2 convolution; middle; GN-SiLU-conv out.

    ``channels[l]`` is the width at level l (level 0 = full resolution); there are
    ``len(channels) - 1`` down-sampling levels and the middle runs at ``channels[-1]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        num_heads: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        levels: list[nn.Module] = []
        width = channels[0]
        for level in range(len(channels) - 1):
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks):
                blocks.append(PlainResBlock(width, channels[level]))
                width = channels[level]
            blocks.append(Downsample(width))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.widen = PlainResBlock(width, channels[-1])
        self.middle = _middle(channels[-1], attention, num_heads, backend)
        self.norm_out = group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.widen(self.levels(self.conv_in(x))))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """The encoder mirrored: conv in, middle, per level: 2x up-sampling then residual blocks,
    GN-SiLU-conv out to the data channels (no final squashing: the output is in data units)."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        num_heads: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, channels[-1], 3, padding=1)
        self.middle = _middle(channels[-1], attention, num_heads, backend)
        levels: list[nn.Module] = []
        width = channels[-1]
        for level in reversed(range(len(channels) - 1)):
            blocks: list[nn.Module] = [Upsample(width)]
            for _ in range(num_res_blocks):
                blocks.append(PlainResBlock(width, channels[level]))
                width = channels[level]
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.levels(self.middle(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantization of (B, C, h, w) latents (VQ-VAE, van den Oord et al. 2017).

    Each position's C-vector is replaced by its nearest code (squared Euclidean distance). The
    codebook is learned by the codebook loss ``||sg[z_e] - z_q||^2`` and the encoder is held to it
    by the commitment loss ``||z_e - sg[z_q]||^2`` (both means over elements).
    """

    def __init__(self, codebook_size: int, channels: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, channels)
        bound = 1.0 / math.sqrt(channels)
        nn.init.uniform_(self.codebook.weight, -bound, bound)

    @property
    def codebook_size(self) -> int:
        return self.codebook.num_embeddings

    def indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, h, w) index of the nearest code at every position (ties: the lowest index)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        codes = self.codebook.weight
        distances = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None, :]
        )
        batch, _, height, width = z_e.shape
        return distances.argmin(dim=1).view(batch, height, width)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for (B, h, w) indices as (B, C, h, w)."""
        return self.codebook(indices).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(straight-through quantized latent, indices).

        The value is exactly the code ``z_q``; the gradient w.r.t. ``z_e`` is the identity
        (``z_q.detach() + (z_e - z_e.detach())``: the bracket is exactly zero in value).
        """
        indices = self.indices(z_e.detach())
        z_q = self.lookup(indices)
        return z_q.detach() + (z_e - z_e.detach()), indices

    def losses(self, z_e: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codebook loss, commitment loss) for the encoder output and its code indices."""
        z_q = self.lookup(indices)
        return F.mse_loss(z_q, z_e.detach()), F.mse_loss(z_e, z_q.detach())

    def usage(self, indices: torch.Tensor) -> tuple[float, float]:
        """(fraction of the codebook used, perplexity exp(entropy of the code histogram))."""
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).double()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        return float((counts > 0).double().mean()), float(entropy.exp())
