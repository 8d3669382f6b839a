"""The multi-stage UNet F(z_t, t, k) shared by every f-DM stage (docs/design.md §6.1).

One trunk of ``len(channel_mult)`` levels serves all stages. Stage k enters the encoder at the
level whose resolution equals its spatial size, through its own input convolution, and leaves
the decoder at the same level through its own zero-initialised output head. Levels above that
resolution are not run for that stage, which is where f-DM saves compute on its coarse stages.
Stages of equal shape (blur chains) share the whole trunk and differ by the stage embedding and
their heads; latent stages with other channel counts simply get heads of their own width.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import (
    AttentionBlock,
    Conditioning,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    zero_init,
)
from .config import UNetConfig


class EncoderLevel(nn.Module):
    """Residual (+ attention) blocks at one resolution, then a stride-2 down-sampling."""

    def __init__(self, in_channels: int, config: UNetConfig, level: int, cond_dim: int) -> None:
        super().__init__()
        channels = config.level_channels(level)
        has_attention = level in config.attention_levels
        self.res_blocks = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for i in range(config.num_res_blocks):
            self.res_blocks.append(
                ResBlock(in_channels if i == 0 else channels, channels, cond_dim, config.dropout)
            )
            self.attentions.append(
                AttentionBlock(channels, config.num_heads, config.attention)
                if has_attention
                else nn.Identity()
            )
        last = level == config.num_levels - 1
        self.downsample = None if last else Downsample(channels)


class DecoderLevel(nn.Module):
    """Residual (+ attention) blocks reading the encoder's skips, then a 2x up-sampling."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: list[int],
        config: UNetConfig,
        level: int,
        cond_dim: int,
    ) -> None:
        super().__init__()
        channels = config.level_channels(level)
        has_attention = level in config.attention_levels
        self.res_blocks = nn.ModuleList()
        self.attentions = nn.ModuleList()
        for i, skip in enumerate(skip_channels):
            block_in = (in_channels if i == 0 else channels) + skip
            self.res_blocks.append(ResBlock(block_in, channels, cond_dim, config.dropout))
            self.attentions.append(
                AttentionBlock(channels, config.num_heads, config.attention)
                if has_attention
                else nn.Identity()
            )
        self.upsample = Upsample(channels) if level > 0 else None


class MiddleBlock(nn.Module):
    """ResBlock, attention, ResBlock at the lowest resolution."""

    def __init__(self, channels: int, config: UNetConfig, cond_dim: int) -> None:
        super().__init__()
        self.res_in = ResBlock(channels, channels, cond_dim, config.dropout)
        self.attention = AttentionBlock(channels, config.num_heads, config.attention)
        self.res_out = ResBlock(channels, channels, cond_dim, config.dropout)


class OutputHead(nn.Module):
    """GN, SiLU and a zero-initialised 3x3 convolution to the stage's channel count."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = group_norm(in_channels)
        self.conv = zero_init(nn.Conv2d(in_channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.silu(self.norm(x)))


class MultiStageUNet(nn.Module):
    """F(z, t, k): one UNet for every stage of an f-DM, each stage run at its own resolution."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stage_levels = config.stage_levels
        base = config.base_channels
        cond_dim = 4 * base
        levels = config.num_levels
        self.conditioning = Conditioning(base, cond_dim, config.num_stages)

        # Channels entering level l: the input head's width there, or the previous level's.
        level_inputs = [base] + [config.level_channels(lv) for lv in range(levels - 1)]
        self.encoder = nn.ModuleList(
            EncoderLevel(level_inputs[level], config, level, cond_dim) for level in range(levels)
        )
        deepest = config.level_channels(levels - 1)
        self.middle = MiddleBlock(deepest, config, cond_dim)
        # Decoder level l pops the skips of encoder level l's residual blocks, then its entry
        # skip: the input head (entry level) or level l - 1's down-sampling output.
        decoder = []
        channels = deepest
        for level in reversed(range(levels)):
            skips = [config.level_channels(level)] * config.num_res_blocks + [level_inputs[level]]
            decoder.append(DecoderLevel(channels, skips, config, level, cond_dim))
            channels = config.level_channels(level)
        self.decoder = nn.ModuleList(reversed(decoder))

        self.input_heads = nn.ModuleList()
        self.output_heads = nn.ModuleList()
        for shape, level in zip(config.stage_shapes, config.stage_levels, strict=True):
            self.input_heads.append(nn.Conv2d(shape[0], level_inputs[level], 3, padding=1))
            self.output_heads.append(OutputHead(config.level_channels(level), shape[0]))

    def _run(self, module: nn.Module, *args: Any) -> torch.Tensor:
        if isinstance(module, nn.Identity):
            return args[0]
        use_checkpoint = (
            self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        if use_checkpoint:
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        """Network output for a batch ``z`` of stage-``stage`` signals at times ``t`` (B,)."""
        config = self.config
        stage = operator.index(stage)
        if not 0 <= stage < config.num_stages:
            raise ValueError(f"stage {stage} is out of range 0..{config.num_stages - 1}")
        expected = tuple(config.stage_shapes[stage])
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(
                f"stage {stage} expects z of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(z.shape)}"
            )
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        if t.shape != (z.shape[0],):
            raise ValueError(f"t must have shape ({z.shape[0]},), got {tuple(t.shape)}")

        entry = self.stage_levels[stage]
        cond = self.conditioning(t, stage)
        h = self.input_heads[stage](z)
        skips = [h]
        for level in range(entry, config.num_levels):
            block = self.encoder[level]
            for res, attn in zip(block.res_blocks, block.attentions, strict=True):
                h = self._run(attn, self._run(res, h, cond))
                skips.append(h)
            if block.downsample is not None:
                h = self._run(block.downsample, h)
                skips.append(h)
        h = self._run(self.middle.res_in, h, cond)
        h = self._run(self.middle.attention, h)
        h = self._run(self.middle.res_out, h, cond)
        for level in reversed(range(entry, config.num_levels)):
            block = self.decoder[level]
            for res, attn in zip(block.res_blocks, block.attentions, strict=True):
                h = self._run(attn, self._run(res, torch.cat([h, skips.pop()], dim=1), cond))
            if level > entry:
                h = self._run(block.upsample, h)
        return self.output_heads[stage](h)
