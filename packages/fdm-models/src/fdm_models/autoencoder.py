"""A small convolutional autoencoder (KL-VAE or VQ-VAE) whose latent an f-DM stage can run in.

The f-DM-VAE of Gu et al. (ICLR 2023) runs its last diffusion stage in the latent of a frozen
autoencoder: the signal transform is ``f = encode_latent`` and its inverse ``g = decode_latent``.
That transform has no exact boundary crossing, so the sampler uses the ``renoise`` boundary of
docs/design.md §5.4: decode the last clean prediction of the latent stage and noise it afresh.

Architecture (:mod:`fdm_models.autoencoder_blocks`)
    Encoder: 3x3 conv in; ``log2(factor)`` levels of residual blocks (GroupNorm + SiLU), each
    ended by a stride-2 convolution; at the lowest resolution a residual block, optional
    self-attention and another residual block; GroupNorm-SiLU-conv to ``2 * latent_channels``
    (KL: posterior mean and log-variance) or ``latent_channels`` (VQ: then nearest-code
    quantization with a straight-through gradient). The decoder mirrors it (nearest 2x
    up-sampling + conv per level) and outputs data units directly (data lie in [-1, 1]; no tanh).
    GroupNorm everywhere: every image is processed independently of the rest of its batch.

Losses (:meth:`Autoencoder.loss`)
    ``total = reconstruction + weight * regularization``. ``reconstruction`` is the per-value
    mean of ``|x - x_rec| + (x - x_rec)^2`` (L1 for sharp edges, MSE for the PSNR that is
    reported; ``reconstruction_loss="mse"`` keeps only the square). KL: ``regularization`` is
    ``KL(q(z|x) || N(0, I))`` summed over the latent and divided by the number of data values
    per image, decoded from one posterior sample drawn with the caller's ``generator``; the
    weight ``kl_weight`` (1e-6) therefore plays the role it has in latent diffusion, where the
    reconstruction and the KL are both sums per image. VQ: ``regularization`` is the codebook
    loss plus ``commitment`` times the commitment loss; the batch's codebook usage and
    perplexity are reported too.

Latent normalisation
    A KL latent with a tiny KL weight has an arbitrary scale and offset, and diffusion assumes
    unit-variance data. The buffers ``latent_shift`` and ``latent_scale`` (per channel, saved
    with the weights; default 0 and 1) map the raw latent ``r`` to ``(r - shift) * scale``.
    :meth:`Autoencoder.fit_latent_scale` sets them to the per-channel mean and inverse standard
    deviation of the raw latents of some training images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from .attention import AttentionBackend
from .autoencoder_blocks import Decoder, Encoder, VectorQuantizer
from .pretrained import CONFIG_NAME, load_weights, read_json, read_model_config, write_model_dir

AUTOENCODER_KEY = "autoencoder"
CLASS_NAME = "Autoencoder"
_DEFAULT_MULT = (1, 2, 2, 4)


class AutoencoderConfig(BaseModel):
    """Architecture and loss weights of :class:`Autoencoder` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: PositiveInt = Field(1, description="channels of the images (1 gray, 3 RGB)")
    resolution: PositiveInt = Field(32, description="height and width of the square images")
    factor: Literal[2, 4, 8] = Field(
        4, description="spatial down-sampling factor: the latent is resolution / factor square"
    )
    latent_channels: PositiveInt = Field(4, description="channels of the latent")
    base_channels: PositiveInt = Field(32, description="width of the full-resolution level")
    channel_mult: tuple[PositiveInt, ...] | None = Field(
        None,
        description="width multiplier per level, full resolution first, log2(factor) + 1 "
        "entries; default (1, 2, 2, 4) cut to that length",
    )
    num_res_blocks: PositiveInt = Field(1, description="residual blocks per level")
    attention: bool = Field(
        False, description="self-attention at the lowest resolution in encoder and decoder"
    )
    num_heads: PositiveInt = Field(1, description="attention heads (must divide the width)")
    attention_backend: AttentionBackend = Field(
        "auto", description="attention implementation (FDM_ATTENTION overrides it)"
    )
    bottleneck: Literal["kl", "vq"] = Field(
        "kl", description="kl: Gaussian posterior (KL-VAE); vq: nearest-codebook quantization"
    )
    codebook_size: PositiveInt = Field(256, description="number of codes (vq)")
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term (kl)")
    commitment: float = Field(0.25, ge=0, description="commitment loss weight beta (vq)")
    reconstruction_loss: Literal["l1+mse", "mse"] = Field(
        "l1+mse", description="per-value L1 + squared error, or squared error only"
    )

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if self.resolution % self.factor:
            raise ValueError(
                f"resolution = {self.resolution} is not divisible by factor = {self.factor}: "
                f"the encoder halves the image log2(factor) = {self.num_levels} times; use a "
                f"resolution that is a multiple of {self.factor} or another factor (2, 4, 8)"
            )
        if self.channel_mult is not None and len(self.channel_mult) != self.num_levels + 1:
            raise ValueError(
                f"channel_mult has {len(self.channel_mult)} entries; factor = {self.factor} "
                f"needs log2(factor) + 1 = {self.num_levels + 1} (one per resolution)"
            )
        if self.attention and self.level_channels[-1] % self.num_heads:
            raise ValueError(
                f"num_heads = {self.num_heads} must divide the {self.level_channels[-1]} "
                "channels of the lowest level, where the attention runs"
            )
        return self

    @property
    def num_levels(self) -> int:
        """Down-sampling levels: log2(factor)."""
        return int(math.log2(self.factor))

    @property
    def level_channels(self) -> list[int]:
        """Width of every resolution level, full resolution first."""
        mult = self.channel_mult or _DEFAULT_MULT[: self.num_levels + 1]
        return [self.base_channels * m for m in mult]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(latent_channels, resolution // factor, resolution // factor)."""
        side = self.resolution // self.factor
        return (self.latent_channels, side, side)


@dataclass
class AutoencoderLoss:
    """What :meth:`Autoencoder.loss` returns (tensors keep their graph; the rest are floats)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    regularization: torch.Tensor  # KL per data value (kl) or codebook + beta * commitment (vq)
    codebook_usage: float | None = None  # vq: fraction of the codes used in the batch
    perplexity: float | None = None  # vq: exp(entropy of the batch's code histogram)


def _channel_view(v: torch.Tensor) -> torch.Tensor:
    return v[None, :, None, None]


class Autoencoder(nn.Module):
    """The autoencoder built from ``config`` (see the module docstring)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = c.level_channels
        out = 2 * c.latent_channels if c.bottleneck == "kl" else c.latent_channels
        common = (widths, c.num_res_blocks, c.attention, c.num_heads, c.attention_backend)
        self.encoder = Encoder(c.in_channels, out, *common)
        self.decoder = Decoder(c.latent_channels, c.in_channels, *common)
        self.quantizer = (
            VectorQuantizer(c.codebook_size, c.latent_channels) if c.bottleneck == "vq" else None
        )
        self.register_buffer("latent_shift", torch.zeros(c.latent_channels))
        self.register_buffer("latent_scale", torch.ones(c.latent_channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_scale.dtype

    # -- the raw latent ---------------------------------------------------------------------

    def _raw_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (kl) or quantized code with straight-through gradient (vq)."""
        h = self.encoder(x)
        if self.quantizer is None:
            return h[:, : self.config.latent_channels]
        return self.quantizer(h)[0]

    # -- the deterministic transform pair ---------------------------------------------------

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised latent ``(r - latent_shift) * latent_scale`` of images ``x``.

        ``r`` is the posterior MEAN (kl), not a sample: the f-DM transform must be a
        deterministic function f of the data (docs/design.md §5.4), so the same image always
        has the same latent. For vq ``r`` is the quantized code (gradient: straight-through).
        Inputs of another floating dtype are computed in the weights' dtype and returned in
        their own; the map is differentiable and per-sample independent.
        """
        r = self._raw_latent(x.to(self.dtype))
        z = (r - _channel_view(self.latent_shift)) * _channel_view(self.latent_scale)
        return z.to(x.dtype)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Images from normalised latents: ``decoder(z / latent_scale + latent_shift)``.

        For vq the latent is decoded as given, without quantizing it again (a diffusion model's
        prediction lies between codes). Dtypes as in :meth:`encode_latent`.
        """
        r = z.to(self.dtype) / _channel_view(self.latent_scale) + _channel_view(self.latent_shift)
        return self.decoder(r).to(z.dtype)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """vq only: the (B, h, w) codebook index of every latent position."""
        if self.quantizer is None:
            raise ValueError("encode_indices needs a vq autoencoder (bottleneck='vq')")
        return self.quantizer.indices(self.encoder(x.to(self.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction ``decode_latent(encode_latent(x))``."""
        return self.decode_latent(self.encode_latent(x))

    reconstruct = forward

    # -- training ---------------------------------------------------------------------------

    def _reconstruction_loss(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        mse = F.mse_loss(rec, x)
        if self.config.reconstruction_loss == "mse":
            return mse
        return mse + F.l1_loss(rec, x)

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AutoencoderLoss:
        """Reconstruction and regularization losses on images ``x`` in [-1, 1].

        kl: decodes one posterior sample ``mean + std * eps`` (``eps`` from ``generator``, so a
        seeded generator makes the loss reproducible). vq: decodes the straight-through code.
        """
        x = x.to(self.dtype)
        h = self.encoder(x)
        if self.quantizer is None:
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            rec = self.decoder(mean + torch.exp(0.5 * logvar) * eps)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
            regularization = kl.flatten(1).sum(1).mean() / x[0].numel()
            reconstruction = self._reconstruction_loss(x, rec)
            total = reconstruction + self.config.kl_weight * regularization
            return AutoencoderLoss(total, reconstruction, regularization)
        z_q, indices = self.quantizer(h)
        codebook, commitment = self.quantizer.losses(h, indices)
        regularization = codebook + self.config.commitment * commitment
        reconstruction = self._reconstruction_loss(x, self.decoder(z_q))
        usage, perplexity = self.quantizer.usage(indices)
        return AutoencoderLoss(
            reconstruction + regularization, reconstruction, regularization, usage, perplexity
        )

    @torch.no_grad()
    def fit_latent_scale(
        self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``latent_shift`` / ``latent_scale`` from the raw latents of ``images``.

        ``images`` is a tensor (encoded ``batch_size`` at a time) or an iterable of batches.
        shift = per-channel mean, scale = 1 / per-channel standard deviation (over images and
        positions, population variance), so the normalised latents of these images have zero
        mean and unit variance per channel. A channel that is constant keeps scale 1. Returns
        (shift, scale).
        """
        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        device = self.latent_scale.device
        total = torch.zeros(self.config.latent_channels, dtype=torch.float64, device=device)
        squares, count = torch.zeros_like(total), 0
        for batch in batches:
            r = self._raw_latent(batch.to(device=device, dtype=self.dtype)).double()
            total += r.sum(dim=(0, 2, 3))
            squares += r.pow(2).sum(dim=(0, 2, 3))
            count += r.shape[0] * r.shape[2] * r.shape[3]
        if count == 0:
            raise ValueError("fit_latent_scale needs at least one image")
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(0.0).sqrt()
        scale = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
        self.latent_shift.copy_(mean)
        self.latent_scale.copy_(scale)
        return self.latent_shift.clone(), self.latent_scale.clone()

    # -- I/O ----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """:func:`save_autoencoder` of this model."""
        return save_autoencoder(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: torch.device | str = "cpu"
    ) -> Autoencoder:
        """:func:`load_autoencoder`."""
        return load_autoencoder(directory, device)


def save_autoencoder(model: Autoencoder, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` ({"_class_name": "Autoencoder", "_fdm_models_version",
    "autoencoder": <AutoencoderConfig>}) and ``model.safetensors`` (every parameter and buffer,
    latent shift and scale included) into ``directory``, atomically. Returns the directory."""
    config = model.config.model_dump(mode="json")
    return write_model_dir(directory, CLASS_NAME, AUTOENCODER_KEY, config, model.state_dict())


def load_autoencoder(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> Autoencoder:
    """Build the autoencoder from ``config.json`` and load ``model.safetensors`` (eval mode).

    Raises ``pydantic.ValidationError`` (a ValueError) for an invalid config, ValueError for a
    directory of another model, :class:`~fdm_models.WeightsMismatchError` when the weights do
    not fit the config. Parameters keep ``requires_grad``: the caller freezes them. Never
    unpickles anything.
    """
    directory = Path(directory)
    document = read_model_config(directory, AUTOENCODER_KEY, "save_autoencoder")
    if document.get("_class_name", CLASS_NAME) != CLASS_NAME:
        raise ValueError(
            f"{directory / CONFIG_NAME} describes a {document['_class_name']!r}, not an "
            f"{CLASS_NAME}"
        )
    config = AutoencoderConfig.model_validate(document[AUTOENCODER_KEY])
    return load_weights(lambda: Autoencoder(config), directory, device, CLASS_NAME)


def is_autoencoder_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` names the class ``Autoencoder``."""
    try:
        document: Any = read_json(path, CONFIG_NAME)
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("_class_name") == CLASS_NAME
