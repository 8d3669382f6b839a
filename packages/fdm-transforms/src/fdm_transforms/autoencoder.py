"""The autoencoder transform (f-DM-VAE; docs/design.md §5.4 (E17, E17a), boundary ``renoise``).

f is the encoder of a frozen, pretrained autoencoder followed by the per-channel latent
normalisation; g undoes the normalisation and decodes. The encoder's posterior MEAN is used, never
a sample: f must be a deterministic function of the stage signal, and the mean is the latent the
decoder reconstructs best. ``path`` (an `fdm_core.AssetPath`, so a trained f-DM carries a copy,
docs/design.md §10.5) is either

- an fdm autoencoder folder written by ``fdm train-autoencoder`` (``DIR/model``, or ``DIR``
  itself when it holds ``model/``): normalisation shift and scale are stored with its weights; or
- a diffusers ``AutoencoderKL``, ``AutoencoderTiny`` or ``VQModel`` folder (``save_pretrained``
  layout, loaded from disk only, never the network, and from safetensors weights only, never a
  pickled ``.bin``; needs ``pip install 'fdm-transforms[diffusers]'``): the latent is
  ``(mean - shift_factor) * scaling_factor`` from its config (``shift_factor`` 0 when absent);
  a VQModel encodes to its pre-quantisation latent and quantises when decoding.

No file outside the folder is read: one that leads out of it (a symbolic link) is refused.

The network is frozen (eval mode, no parameter gradients) but encode and decode stay
differentiable in their input, keep dtype and device (a copy of the network is kept per device
and dtype) and treat batch items independently. d_{k+1} follows from the latent shape.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from fdm_core import (
    AssetPath,
    Boundary,
    Shape,
    SignalTransform,
    TransformParams,
    inside_folder,
)

DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderTiny", "VQModel")
EXTRA_HINT = "pip install 'fdm-transforms[diffusers]'"
# Smallest latent side of an fdm autoencoder: its GroupNorms refuse a 1x1 map of one image.
MIN_LATENT = 2


class AutoencoderParams(TransformParams):
    path: AssetPath = Field(
        description="an fdm autoencoder folder (fdm train-autoencoder) or a diffusers "
        "AutoencoderKL / AutoencoderTiny / VQModel folder"
    )


@dataclass
class _Network:
    """A loaded autoencoder: how to encode and decode with it, and its input channels."""

    module: nn.Module
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    decode: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    in_channels: int
    factor: int | None  # spatial factor when known from the config (else probed)
    latent_channels: int | None
    description: str
    copies: dict[tuple[torch.device, torch.dtype], nn.Module] = field(default_factory=dict)
    probed: dict[Shape, Shape] = field(default_factory=dict)  # input -> latent shape (probes)

    def on(self, like: torch.Tensor) -> nn.Module:
        """The frozen network on `like`'s device and dtype (copied once per pair)."""
        key = (like.device, like.dtype)
        if key not in self.copies:
            self.copies[key] = copy.deepcopy(self.module).to(like.device, like.dtype)
        return self.copies[key]


class AutoencoderTransform(SignalTransform):
    name = "autoencoder"
    boundary = Boundary.RENOISE
    Params = AutoencoderParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        path = Path(self.params.path)
        folder = _model_folder(path)
        inside_folder(folder, path)  # DIR/model: not a link out of DIR
        self.network = _load(str(folder.resolve()), _stamp(folder))

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        net = self.network
        if channels != net.in_channels:
            raise ValueError(
                f"{net.description} takes {net.in_channels}-channel images, got {channels}"
            )
        if net.factor is not None and net.latent_channels is not None:
            if height % net.factor or width % net.factor:
                raise ValueError(
                    f"{net.description} down-samples by {net.factor}, which must divide the "
                    f"stage size {height}x{width}"
                )
            side = MIN_LATENT * net.factor
            if min(height, width) < side:
                raise ValueError(
                    f"{net.description} needs images of at least {side}x{side} (a latent of at "
                    f"least {MIN_LATENT}x{MIN_LATENT}), got {height}x{width}"
                )
            return (net.latent_channels, height // net.factor, width // net.factor)
        return _probe(net, (channels, height, width))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        return self.network.encode(self.network.on(x), x).to(x.dtype)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.validate_batch(y)
        net = self.network
        if net.latent_channels is not None and channels != net.latent_channels:
            raise ValueError(
                f"{net.description} decodes {net.latent_channels}-channel latents, got {channels}"
            )
        if net.factor is not None and min(height, width) < MIN_LATENT:
            raise ValueError(
                f"{net.description} decodes latents of at least {MIN_LATENT}x{MIN_LATENT}, "
                f"got {height}x{width}"
            )
        return net.decode(net.on(y), y).to(y.dtype)

    def __repr__(self) -> str:
        return f"AutoencoderTransform({self.network.description})"


def _probe(net: _Network, shape: Shape) -> Shape:
    """The latent shape of a `shape` image, found by encoding and decoding zeros (once per
    shape); ValueError if the network fails on it or does not give that shape back."""
    if shape not in net.probed:
        channels, height, width = shape
        zeros = torch.zeros(1, *shape, dtype=next(net.module.parameters()).dtype)
        try:
            with torch.no_grad():
                latent = net.encode(net.module, zeros)
                back = net.decode(net.module, latent)
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(
                f"{net.description} cannot take a {channels}x{height}x{width} image: {reason}"
            ) from None
        if tuple(back.shape[1:]) != shape:
            got = "x".join(map(str, back.shape[1:]))
            raise ValueError(
                f"{net.description} decodes the latent of a {channels}x{height}x{width} image "
                f"to {got}: height and width must be multiples of its down-sampling factor"
            )
        net.probed[shape] = tuple(latent.shape[1:])
    return net.probed[shape]


def _model_folder(path: Path) -> Path:
    """`path`, or its ``model/`` sub-folder when `path` is a train-autoencoder run folder."""
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} holds no config.json: give the folder written by fdm train-autoencoder "
            f"(DIR or DIR/model) or a diffusers {', '.join(DIFFUSERS_CLASSES)} folder"
        )
    return path


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What the cache of loaded networks is keyed on besides the path: each file's size and
    modification time, so a replaced file is loaded again. A file that leads outside `folder`
    (a symbolic link out of it) is refused: a model folder never makes fdm read another file."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for file in files:
        inside_folder(file, folder)
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=8)
def _load(folder: str, stamp: tuple) -> _Network:
    path = Path(folder)
    from fdm_models.pretrained import read_json

    try:
        class_name = read_json(path, "config.json").get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}/config.json cannot be read as JSON: {exc}") from None
    if class_name in DIFFUSERS_CLASSES:
        net = _load_diffusers(path, class_name)
    else:
        net = _load_fdm(path)
    net.module.eval().requires_grad_(False)
    net.copies[(torch.device("cpu"), next(net.module.parameters()).dtype)] = net.module
    return net


def _load_fdm(path: Path) -> _Network:
    from fdm_models import is_autoencoder_dir, load_autoencoder

    if not is_autoencoder_dir(path):
        raise ValueError(
            f"{path} is not an autoencoder folder (its config.json names no Autoencoder; "
            f"diffusers folders must be one of {', '.join(DIFFUSERS_CLASSES)})"
        )
    model = load_autoencoder(path)
    cfg = model.config
    return _Network(
        model,
        lambda m, x: m.encode_latent(x),
        lambda m, y: m.decode_latent(y),
        cfg.in_channels,
        cfg.factor,
        cfg.latent_channels,
        f"the fdm autoencoder {path}",
    )


def _load_diffusers(path: Path, class_name: str) -> _Network:
    try:
        import diffusers
    except ImportError:
        raise ValueError(
            f"{path} is a diffusers {class_name}, which needs the optional extra: {EXTRA_HINT}"
        ) from None
    try:  # safetensors only: a .bin file would go through pickle, which can run code
        model = getattr(diffusers, class_name).from_pretrained(
            path, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"cannot load the diffusers {class_name} in {path} (only safetensors weights are "
            f"loaded, never pickled .bin files): {first}"
        ) from None
    cfg = model.config
    scale = float(getattr(cfg, "scaling_factor", None) or 1.0)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    if class_name == "AutoencoderKL":

        def encode(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return (m.encode(x).latent_dist.mean - shift) * scale  # the posterior mean
    else:

        def encode(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return (m.encode(x).latents - shift) * scale

    def decode(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
        return m.decode(y / scale + shift).sample

    latent_channels = getattr(cfg, "latent_channels", None)
    if class_name == "VQModel":  # its latent is the quant_conv output
        latent_channels = getattr(cfg, "vq_embed_dim", None) or latent_channels
    return _Network(
        model,
        encode,
        decode,
        int(cfg.in_channels),
        None,
        None if latent_channels is None else int(latent_channels),
        f"the {class_name} {path}",
    )
