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
from collections.abc import Sequence
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

    packs_stages = True
    """Capability read by `fdm_core.diffusion_loss`: `forward_packed` runs every stage at once."""

    def forward(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        """Network output for a batch ``z`` of stage-``stage`` signals at times ``t`` (B,)."""
        stage = operator.index(stage)
        if not 0 <= stage < self.config.num_stages:
            raise ValueError(f"stage {stage} is out of range 0..{self.config.num_stages - 1}")
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        zs = [z if k == stage else None for k in range(self.config.num_stages)]
        return self.forward_packed(zs, t)[stage]

    def forward_packed(
        self, zs: Sequence[torch.Tensor | None], t: torch.Tensor
    ) -> list[torch.Tensor | None]:
        """Every stage in one call (docs/design.md §6.6): ``zs[k]`` holds stage k's rows
        (n_k, *stage_shapes[k]) or is None, ``t`` (sum n_k,) their times in stage order; returns
        the outputs per stage (None where ``zs[k]`` is None).

        Rows are packed by entry level: at encoder level l the rows coming down from finer
        stages are joined (along the batch) by the input-head output of the stages entering at l;
        the middle block sees every row; in the decoder each stage's rows, the last ones at its
        entry level, leave through its own output head and the rest go up. GroupNorm,
        convolutions and attention act per sample, so every row gets the output a separate
        per-stage call gives it."""
        config = self.config
        if len(zs) != config.num_stages:
            raise ValueError(f"expected {config.num_stages} stage batches, got {len(zs)}")
        counts = [0 if z is None else self._check_stage_batch(z, k) for k, z in enumerate(zs)]
        if t.shape != (sum(counts),):
            raise ValueError(f"t must have shape ({sum(counts)},), got {tuple(t.shape)}")
        present = [k for k in self._packing_order if zs[k] is not None]
        if not present:
            raise ValueError("forward_packed needs at least one stage batch")
        levels = self.stage_levels
        cond = self.conditioning(t, counts)
        if present != sorted(present):  # entry levels not in stage order: reorder the rows
            offsets = [sum(counts[:k]) for k in range(config.num_stages)]
            cond = torch.cat([cond[offsets[k] : offsets[k] + counts[k]] for k in present])
        lowest = levels[present[0]]
        rows_to = {  # rows alive at each level: the stages entering at or above it
            level: sum(counts[k] for k in present if levels[k] <= level)
            for level in range(lowest - 1, config.num_levels)
        }

        h: torch.Tensor | None = None
        skips = []
        for level in range(lowest, config.num_levels):
            heads = [self.input_heads[k](zs[k]) for k in present if levels[k] == level]
            if heads:
                h = torch.cat(heads if h is None else [h, *heads])
            skips.append(h)  # the entry skip: input heads and the level above's down-sampling
            block, c = self.encoder[level], cond[: rows_to[level]]
            for res, attn in zip(block.res_blocks, block.attentions, strict=True):
                h = self._run(attn, self._run(res, h, c))
                skips.append(h)
            if block.downsample is not None:
                h = self._run(block.downsample, h)
        h = self._run(self.middle.res_in, h, cond)
        h = self._run(self.middle.attention, h)
        h = self._run(self.middle.res_out, h, cond)
        outputs: list[torch.Tensor | None] = [None] * config.num_stages
        for level in reversed(range(lowest, config.num_levels)):
            block, c = self.decoder[level], cond[: rows_to[level]]
            for res, attn in zip(block.res_blocks, block.attentions, strict=True):
                h = self._run(attn, self._run(res, torch.cat([h, skips.pop()], dim=1), c))
            row = rows_to[level - 1]  # the stages entering here are the last rows: they leave
            for k in (k for k in present if levels[k] == level):
                outputs[k] = self.output_heads[k](h[row : row + counts[k]])
                row += counts[k]
            if level > lowest:
                h = self._run(block.upsample, h[: rows_to[level - 1]])
        return outputs

    @property
    def _packing_order(self) -> list[int]:
        """Stages sorted by entry level (stable): the row order inside `forward_packed`."""
        return sorted(range(self.config.num_stages), key=lambda k: self.stage_levels[k])

    def _check_stage_batch(self, z: torch.Tensor, stage: int) -> int:
        """The number of rows of a stage-``stage`` batch ``z``; ValueError for a wrong shape."""
        expected = tuple(self.config.stage_shapes[stage])
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(
                f"stage {stage} expects z of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(z.shape)}"
            )
        return z.shape[0]
