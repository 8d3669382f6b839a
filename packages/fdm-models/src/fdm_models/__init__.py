"""fdm-models: multi-stage UNet, latent autoencoder, attention, blur/resampling ops, EMA, I/O.

See docs/design.md §11.1 for where this package sits (cli -> transforms -> models -> core).
"""

from .attention import (
    ATTENTION_BACKENDS,
    ATTENTION_ENV,
    AttentionBackendError,
    dot_product_attention,
    resolve_attention_backend,
    xformers_available,
    xformers_failure,
)
from .autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    AutoencoderLoss,
    is_autoencoder_dir,
    load_autoencoder,
    save_autoencoder,
)
from .config import UNetConfig
from .ema import EMA, unwrap_model
from .pretrained import (
    WeightsMismatchError,
    from_pretrained,
    load_pretrained_config,
    save_pretrained,
)
from .unet import MultiStageUNet

__all__ = [
    "ATTENTION_BACKENDS",
    "ATTENTION_ENV",
    "EMA",
    "AttentionBackendError",
    "Autoencoder",
    "AutoencoderConfig",
    "AutoencoderLoss",
    "MultiStageUNet",
    "UNetConfig",
    "WeightsMismatchError",
    "dot_product_attention",
    "from_pretrained",
    "is_autoencoder_dir",
    "load_autoencoder",
    "load_pretrained_config",
    "resolve_attention_backend",
    "save_autoencoder",
    "save_pretrained",
    "unwrap_model",
    "xformers_available",
    "xformers_failure",
]
