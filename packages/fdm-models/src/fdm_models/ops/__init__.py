"""Blur and resampling ops used by the transforms and the UNet (docs/design.md §12.1).

The public functions keep the signatures of :mod:`fdm_models.ops.reference` and run the
``fdm::`` custom ops: Triton kernels on CUDA tensors when Triton is importable, the torch
reference elsewhere. ``backend`` (keyword-only) or the environment variable ``FDM_OPS_BACKEND``
(``auto`` | ``torch`` | ``triton``) forces a path; the argument wins over the variable.
"""

from __future__ import annotations

import torch

from . import reference
from .custom_ops import (
    OPS_BACKEND_ENV,
    OPS_BACKENDS,
    blur_separable_op,
    default_ops_backend,
    downsample_mean_op,
    mix_block_mean_op,
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


def mix_block_mean(
    x: torch.Tensor,
    factor: int,
    keep: torch.Tensor | float,
    project: torch.Tensor | float,
    extra: torch.Tensor | None = None,
    extra_scale: torch.Tensor | float | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """keep x + project P x (+ extra_scale extra) in one pass, P x = up(down(x)) the mean of
    each factor x factor block broadcast back: the stage mean M_t x = (1 - delta) x + delta P x
    of down-sampling (docs/design.md (E4)), z_t with extra = eps (E5), or a sampler step
    (E40): docs/design.md §12.1 (E41).

    Coefficients are numbers or (B,) tensors, one per sample. Under torch.compile, and where the
    backend resolves to torch, the reference runs as plain torch ops (inductor fuses them); the
    Triton kernel runs as the opaque ``fdm::mix_block_mean`` op otherwise.
    """
    batch = x.shape[0]

    def per_sample(c: torch.Tensor | float) -> torch.Tensor:
        c = torch.as_tensor(c, dtype=torch.float32, device=x.device)
        return c.expand(batch) if c.dim() == 0 else c

    keep_, project_ = per_sample(keep), per_sample(project)
    scale = per_sample(extra_scale) if extra is not None and extra_scale is not None else None
    chosen = backend or default_ops_backend()
    if torch.compiler.is_compiling() or (
        resolve_ops_backend(chosen, x.device, op="mix_block_mean") == "torch"
    ):
        return reference.mix_block_mean(x, factor, keep_, project_, extra, scale)
    return mix_block_mean_op(x, factor, keep_, project_, extra, scale, chosen)


__all__ = [
    "OPS_BACKENDS",
    "OPS_BACKEND_ENV",
    "blur_separable",
    "default_ops_backend",
    "downsample_mean",
    "mix_block_mean",
    "ops_summary",
    "resolve_ops_backend",
    "triton_available",
    "upsample_nearest",
]
