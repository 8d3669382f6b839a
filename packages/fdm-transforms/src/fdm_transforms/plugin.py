"""fdm-transforms' plugin module: registers the built-in transforms through the same ``fdm``
entry point and hook a third-party package uses (docs/design.md §10.2)."""

from __future__ import annotations

from fdm_core import Register, hookimpl

from .autoencoder import AutoencoderTransform
from .blur import BlurTransform
from .downsample import DownsampleTransform
from .identity import IdentityTransform


@hookimpl
def fdm_register_transforms(register: Register) -> None:
    for transform in (IdentityTransform, DownsampleTransform, BlurTransform, AutoencoderTransform):
        register(transform.name, transform)
