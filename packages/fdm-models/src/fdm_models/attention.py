"""Attention backends for the UNet's self-attention blocks (docs/design.md §12.2).

``math`` is the reference softmax(Q K^T / sqrt(d)) V, ``sdpa`` is
:func:`torch.nn.functional.scaled_dot_product_attention` (every device), ``xformers`` is
``xformers.ops.memory_efficient_attention`` (CUDA only, optional extra ``fdm-models[xformers]``)
and ``auto`` picks xformers on CUDA when it is importable, sdpa otherwise. The model config names
the backend; the environment variable ``FDM_ATTENTION`` overrides it. Forcing ``xformers`` where
it cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import sys
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F

AttentionBackend = Literal["auto", "sdpa", "math", "xformers"]
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "math", "xformers")
ATTENTION_ENV = "FDM_ATTENTION"

logger = logging.getLogger(__name__)


class AttentionBackendError(RuntimeError):
    """The requested attention backend cannot run here (missing package or wrong device)."""


@functools.cache
def _import_xformers_ops() -> ModuleType | None:
    try:
        return importlib.import_module("xformers.ops")
    except ImportError:
        return None
    except Exception as error:  # a broken install (e.g. built for another torch) is reported
        logger.warning("xformers is installed but does not import: %s", error)
        return None


def _xformers_ops() -> ModuleType | None:
    """``xformers.ops`` if it imports, else None (a None entry in sys.modules blocks it)."""
    if "xformers.ops" in sys.modules:
        return sys.modules["xformers.ops"]
    return _import_xformers_ops()


def xformers_available() -> bool:
    """Whether ``xformers.ops`` imports."""
    return _xformers_ops() is not None


def _device_supports_xformers(device: torch.device) -> bool:
    """xformers has no CPU kernels: only CUDA devices qualify."""
    return device.type == "cuda"


def requested_attention_backend(configured: str = "auto") -> str:
    """The backend asked for: ``FDM_ATTENTION`` when set, else ``configured``; validated."""
    value = os.environ.get(ATTENTION_ENV, "").strip().lower()
    source = f"environment variable {ATTENTION_ENV}" if value else "attention"
    value = value or configured
    if value not in ATTENTION_BACKENDS:
        raise ValueError(
            f"{source}={value!r} is not an attention backend; "
            f"allowed: {', '.join(ATTENTION_BACKENDS)}"
        )
    return value


def resolve_attention_backend(configured: str = "auto", device: torch.device | str = "cpu") -> str:
    """The concrete backend (``sdpa``, ``math`` or ``xformers``) that runs on ``device``.

    ``configured`` is the model config's choice, overridden by ``FDM_ATTENTION``. Raises
    :class:`AttentionBackendError` when ``xformers`` is forced but is not importable or the
    device is not CUDA. ``fdm env`` prints this for the current device.
    """
    device = torch.device(device)
    backend = requested_attention_backend(configured)
    if backend == "auto":
        usable = _device_supports_xformers(device) and xformers_available()
        return "xformers" if usable else "sdpa"
    if backend == "xformers":
        if not xformers_available():
            raise AttentionBackendError(
                "attention backend 'xformers' was requested but xformers.ops is not importable "
                "(install fdm-models[xformers] with a CUDA torch); allowed values: "
                f"{', '.join(ATTENTION_BACKENDS)}"
            )
        if not _device_supports_xformers(device):
            raise AttentionBackendError(
                f"attention backend 'xformers' needs CUDA tensors, got device {device.type!r} "
                f"(xformers has no CPU kernels); allowed values: {', '.join(ATTENTION_BACKENDS)}"
            )
    return backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference softmax(Q K^T / sqrt(d)) V on (B, H, L, D) tensors, softmax in fp32."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype) @ v


def dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Multi-head attention on (B, H, L, D) tensors with the resolved ``backend``."""
    resolved = resolve_attention_backend(backend, q.device)
    if resolved == "math":
        return math_attention(q, k, v)
    if resolved == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    xops = _xformers_ops()
    # xformers takes (B, L, H, D).
    q, k, v = (tensor.transpose(1, 2).contiguous() for tensor in (q, k, v))
    out = xops.memory_efficient_attention(q, k, v)
    return out.transpose(1, 2)
