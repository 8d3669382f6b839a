"""fdm-haar: an example fdm plugin with a Haar-wavelet low-pass transform."""

from .transform import HaarLowPass, HaarParams, haar2d, ihaar2d

__all__ = ["HaarLowPass", "HaarParams", "haar2d", "ihaar2d"]
__version__ = "0.1.0"
