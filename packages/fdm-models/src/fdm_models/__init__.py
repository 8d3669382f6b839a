"""fdm-models: the multi-stage UNet, attention backends, blur/resampling ops, EMA, model I/O.

See docs/design.md §11.1 for where this package sits (cli -> transforms -> models -> core).
"""

from .attention import (
    ATTENTION_BACKENDS,
    ATTENTION_ENV,
    AttentionBackendError,
    dot_product_attention,
    resolve_attention_backend,
    xformers_available,
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
    "MultiStageUNet",
    "UNetConfig",
    "WeightsMismatchError",
    "dot_product_attention",
    "from_pretrained",
    "load_pretrained_config",
    "resolve_attention_backend",
    "save_pretrained",
    "unwrap_model",
    "xformers_available",
]
