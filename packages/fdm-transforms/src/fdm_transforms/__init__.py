"""Built-in f-DM signal transforms, registered through the ``fdm`` entry point (see `plugin`)."""

from .blur import BlurTransform, blur_kernel
from .downsample import DownsampleTransform
from .identity import IdentityTransform

__all__ = ["BlurTransform", "DownsampleTransform", "IdentityTransform", "blur_kernel"]
