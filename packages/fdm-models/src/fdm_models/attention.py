"""Attention backends for the UNet's self-attention blocks (docs/design.md §12.2).

``math`` is the reference softmax(Q K^T / sqrt(d)) V, ``sdpa`` is
:func:`torch.nn.functional.scaled_dot_product_attention` (every device), ``xformers`` is
``xformers.ops.memory_efficient_attention`` (CUDA only, optional extra ``fdm-models[xformers]``)
and ``auto`` picks xformers where its kernels run for the device and dtype, sdpa otherwise.
"Run" is checked by one tiny call per (device, dtype): an xformers wheel built for another torch
or CUDA imports fine and fails only at its first call (xformers 0.0.35, built for torch 2.10+cu128,
under torch 2.11+cu130 on an H200, 2026-11-27), and its flash kernels take no fp32. The model
config names the backend; the environment variable ``FDM_ATTENTION`` overrides it. Forcing
``xformers`` where it cannot run is an error, never a silent fallback.
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
    """Whether ``xformers.ops`` imports (it may still be unable to run: see `xformers_failure`)."""
    return _xformers_ops() is not None


def _device_supports_xformers(device: torch.device) -> bool:
    """xformers has no CPU kernels: only CUDA devices qualify."""
    return device.type == "cuda"


@functools.cache
def xformers_failure(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Why xformers cannot run attention on ``device`` in ``dtype``, or None when it can.

    Cached per (device, dtype); the first call on a CUDA device runs one (1, 8, 1, 8) attention.
    """
    xops = _xformers_ops()
    if xops is None:
        return "xformers.ops is not importable (install fdm-models[xformers] with a CUDA torch)"
    if not _device_supports_xformers(device):
        return f"it needs CUDA tensors, got device {device.type!r} (xformers has no CPU kernels)"
    probe = torch.zeros(1, 8, 1, 8, device=device, dtype=dtype)
    try:
        xops.memory_efficient_attention(probe, probe, probe)
    except Exception as error:  # its dispatcher's NotImplementedError, or a CUDA/ABI error
        first_line = next(iter(str(error).strip().splitlines()), "")
        reason = (
            f"xformers cannot run on {device.type} {str(dtype).removeprefix('torch.')} "
            f"tensors ({type(error).__name__}: {first_line})"
        )
        logger.warning("%s; attention 'auto' uses sdpa there", reason)
        return reason
    return None


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


@torch.compiler.assume_constant_result  # under torch.compile: resolved once, the probe not traced
def resolve_attention_backend(
    configured: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> str:
    """The concrete backend (``sdpa``, ``math`` or ``xformers``) that runs on ``device`` in
    ``dtype``.

    ``configured`` is the model config's choice, overridden by ``FDM_ATTENTION``. Raises
    :class:`AttentionBackendError` when ``xformers`` is forced but cannot run here (see
    `xformers_failure`). ``fdm env`` prints this for the current device.
    """
    device = torch.device(device)
    backend = requested_attention_backend(configured)
    if backend == "auto":
        return "sdpa" if xformers_failure(device, dtype) else "xformers"
    if backend == "xformers" and (reason := xformers_failure(device, dtype)):
        raise AttentionBackendError(
            f"attention backend 'xformers' was requested but {reason}; allowed values: "
            f"{', '.join(ATTENTION_BACKENDS)}"
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
    resolved = resolve_attention_backend(backend, q.device, q.dtype)
    if resolved == "math":
        return math_attention(q, k, v)
    if resolved == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    xops = _xformers_ops()
    # xformers takes (B, L, H, D).
    q, k, v = (tensor.transpose(1, 2).contiguous() for tensor in (q, k, v))
    out = xops.memory_efficient_attention(q, k, v)
    return out.transpose(1, 2)
