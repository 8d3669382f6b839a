"""fdm-grayscale: a template fdm plugin (a transform that averages the colour channels)."""

from .transform import Grayscale, GrayscaleParams

__all__ = ["Grayscale", "GrayscaleParams"]
__version__ = "0.1.0"
