"""Built-in f-DM signal transforms, registered through the ``fdm`` entry point (see `plugin`)."""

from .autoencoder import AutoencoderTransform
from .blur import BlurTransform, blur_kernel
from .downsample import DownsampleTransform
from .identity import IdentityTransform

__all__ = [
    "AutoencoderTransform",
    "BlurTransform",
    "DownsampleTransform",
    "IdentityTransform",
    "blur_kernel",
]
