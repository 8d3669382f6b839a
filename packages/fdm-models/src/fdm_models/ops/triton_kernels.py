"""Triton kernels for the blur and resampling ops (docs/design.md §12.1).

Every kernel works on (B, C, H, W) tensors addressed through their four strides, so
non-contiguous inputs need no copy, accumulates in fp32 and writes a contiguous output in the
output tensor's dtype. The grid is (B * C, row tiles, column tiles). The semantics are those of
:mod:`fdm_models.ops.reference`; the launchers here assume the arguments were validated there.

This module imports ``triton``: import it only when Triton is installed. ``TRITON_INTERPRET=1``
must be set before the import for the kernels to run on CPU tensors (the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_H = 32
BLOCK_W = 64


@triton.jit
def _blur_axis_kernel(
    src_ptr, dst_ptr, weight_ptr, C, H, W,
    s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w,
    RADIUS: tl.constexpr, AXIS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """One pass of the separable blur: correlate along H (AXIS=0) or W (AXIS=1), reflect pad."""
    pid_bc = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < H) & (cols[None, :] < W)
    b = pid_bc // C
    c = pid_bc % C
    src = src_ptr + b * s_b + c * s_c
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for k in tl.static_range(2 * RADIUS + 1):
        weight = tl.load(weight_ptr + k).to(tl.float32)
        if AXIS == 0:
            r = rows + (k - RADIUS)
            r = tl.where(r < 0, -r, r)
            r = tl.where(r >= H, 2 * (H - 1) - r, r)
            offsets = r[:, None] * s_h + cols[None, :] * s_w
        else:
            q = cols + (k - RADIUS)
            q = tl.where(q < 0, -q, q)
            q = tl.where(q >= W, 2 * (W - 1) - q, q)
            offsets = rows[:, None] * s_h + q[None, :] * s_w
        acc += weight * tl.load(src + offsets, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + b * d_b + c * d_c + rows[:, None] * d_h + cols[None, :] * d_w
    tl.store(dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _downsample_mean_kernel(
    src_ptr, dst_ptr, C, OH, OW,
    s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w,
    FACTOR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Mean over FACTOR x FACTOR blocks; one program per output tile."""
    pid_bc = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < OH) & (cols[None, :] < OW)
    b = pid_bc // C
    c = pid_bc % C
    src = src_ptr + b * s_b + c * s_c
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for i in tl.static_range(FACTOR):
        for j in tl.static_range(FACTOR):
            offsets = (rows * FACTOR + i)[:, None] * s_h + (cols * FACTOR + j)[None, :] * s_w
            acc += tl.load(src + offsets, mask=mask, other=0.0).to(tl.float32)
    acc = acc / (FACTOR * FACTOR)
    dst = dst_ptr + b * d_b + c * d_c + rows[:, None] * d_h + cols[None, :] * d_w
    tl.store(dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_nearest_kernel(
    src_ptr, dst_ptr, C, H, W,
    s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w,
    FACTOR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Nearest up-sampling: every pixel into a FACTOR x FACTOR block; one program per tile."""
    pid_bc = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < H * FACTOR) & (cols[None, :] < W * FACTOR)
    b = pid_bc // C
    c = pid_bc % C
    src = src_ptr + b * s_b + c * s_c
    offsets = (rows // FACTOR)[:, None] * s_h + (cols // FACTOR)[None, :] * s_w
    out = tl.load(src + offsets, mask=mask, other=0.0)
    dst = dst_ptr + b * d_b + c * d_c + rows[:, None] * d_h + cols[None, :] * d_w
    tl.store(dst, out.to(dst_ptr.dtype.element_ty), mask=mask)


def _grid(x: torch.Tensor, out_h: int, out_w: int) -> tuple[int, int, int]:
    return (x.shape[0] * x.shape[1], triton.cdiv(out_h, BLOCK_H), triton.cdiv(out_w, BLOCK_W))


def blur_separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable reflect-padded blur: an H pass into an fp32 buffer, then a W pass."""
    _, channels, height, width = x.shape
    weight = kernel.to(device=x.device, dtype=torch.float32).contiguous()
    radius = kernel.numel() // 2
    tmp = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    grid = _grid(x, height, width)
    for axis, (src, dst) in enumerate(((x, tmp), (tmp, out))):
        _blur_axis_kernel[grid](
            src, dst, weight, channels, height, width, *src.stride(), *dst.stride(),
            RADIUS=radius, AXIS=axis, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
        )  # fmt: skip
    return out


def downsample_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over non-overlapping factor x factor blocks."""
    batch, channels, height, width = x.shape
    out = torch.empty(
        (batch, channels, height // factor, width // factor), device=x.device, dtype=x.dtype
    )
    _downsample_mean_kernel[_grid(x, out.shape[2], out.shape[3])](
        x, out, channels, out.shape[2], out.shape[3], *x.stride(), *out.stride(),
        FACTOR=factor, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
    )  # fmt: skip
    return out


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat every pixel into a factor x factor block."""
    batch, channels, height, width = x.shape
    out = torch.empty(
        (batch, channels, height * factor, width * factor), device=x.device, dtype=x.dtype
    )
    _upsample_nearest_kernel[_grid(x, out.shape[2], out.shape[3])](
        x, out, channels, height, width, *x.stride(), *out.stride(),
        FACTOR=factor, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
    )  # fmt: skip
    return out
