"""Blur and resampling ops used by the transforms and the UNet (docs/design.md §12.1).

The three public functions keep the signatures of :mod:`fdm_models.ops.reference` and run the
``fdm::`` custom ops: Triton kernels on CUDA tensors when Triton is importable, the torch
reference elsewhere. ``backend`` (keyword-only) or the environment variable ``FDM_OPS_BACKEND``
(``auto`` | ``torch`` | ``triton``) forces a path; the argument wins over the variable.
"""

from __future__ import annotations

import torch

from .custom_ops import (
    OPS_BACKEND_ENV,
    OPS_BACKENDS,
    blur_separable_op,
    default_ops_backend,
    downsample_mean_op,
    ops_summary,
    resolve_ops_backend,
    triton_available,
    upsample_nearest_op,
)


def blur_separable(
    x: torch.Tensor, kernel: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Convolve every channel with ``kernel`` (1-D, odd length) along H then W, reflect padding."""
    return blur_separable_op(x, kernel, backend or default_ops_backend())


def downsample_mean(x: torch.Tensor, factor: int, *, backend: str | None = None) -> torch.Tensor:
    """Mean over non-overlapping factor x factor blocks (H and W must be divisible by factor)."""
    return downsample_mean_op(x, factor, backend or default_ops_backend())


def upsample_nearest(x: torch.Tensor, factor: int, *, backend: str | None = None) -> torch.Tensor:
    """Repeat every pixel into a factor x factor block."""
    return upsample_nearest_op(x, factor, backend or default_ops_backend())


__all__ = [
    "OPS_BACKENDS",
    "OPS_BACKEND_ENV",
    "blur_separable",
    "default_ops_backend",
    "downsample_mean",
    "ops_summary",
    "resolve_ops_backend",
    "triton_available",
    "upsample_nearest",
]
