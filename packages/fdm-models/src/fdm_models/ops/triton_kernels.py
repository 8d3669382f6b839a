"""Triton kernels for the blur and resampling ops and the fused stage mean (docs/design.md §12.1).

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
def _tile(C, OH, OW, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's (batch, channel) plane and its output tile: rows, columns and the mask of
    those inside the OH x OW output."""
    pid_bc = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < OH) & (cols[None, :] < OW)
    return pid_bc // C, pid_bc % C, rows, cols, mask


@triton.jit
def _blur_axis_kernel(
    src_ptr, dst_ptr, weight_ptr, C, H, W,
    s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w,
    RADIUS: tl.constexpr, AXIS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """One pass of the separable blur: correlate along H (AXIS=0) or W (AXIS=1), reflect pad."""
    b, c, rows, cols, mask = _tile(C, H, W, BLOCK_H, BLOCK_W)
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
    b, c, rows, cols, mask = _tile(C, OH, OW, BLOCK_H, BLOCK_W)
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
    b, c, rows, cols, mask = _tile(C, H * FACTOR, W * FACTOR, BLOCK_H, BLOCK_W)
    src = src_ptr + b * s_b + c * s_c
    offsets = (rows // FACTOR)[:, None] * s_h + (cols // FACTOR)[None, :] * s_w
    out = tl.load(src + offsets, mask=mask, other=0.0)
    dst = dst_ptr + b * d_b + c * d_c + rows[:, None] * d_h + cols[None, :] * d_w
    tl.store(dst, out.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mix_block_mean_kernel(
    src_ptr, extra_ptr, dst_ptr, keep_ptr, project_ptr, scale_ptr, C, H, W,
    s_b, s_c, s_h, s_w, e_b, e_c, e_h, e_w, d_b, d_c, d_h, d_w,
    FACTOR: tl.constexpr, HAS_EXTRA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """keep x + project P x (+ scale extra) in one pass: P x, the mean of each pixel's FACTOR x
    FACTOR block, is summed from the block's pixels (read through the cache, not from a
    down-sampled copy), so x is read once from memory and nothing intermediate is written."""
    b, c, rows, cols, mask = _tile(C, H, W, BLOCK_H, BLOCK_W)
    src = src_ptr + b * s_b + c * s_c
    x = tl.load(src + rows[:, None] * s_h + cols[None, :] * s_w, mask=mask, other=0.0)
    x = x.to(tl.float32)
    top, left = (rows // FACTOR) * FACTOR, (cols // FACTOR) * FACTOR
    block = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for i in tl.static_range(FACTOR):
        for j in tl.static_range(FACTOR):
            offsets = (top + i)[:, None] * s_h + (left + j)[None, :] * s_w
            block += tl.load(src + offsets, mask=mask, other=0.0).to(tl.float32)
    keep = tl.load(keep_ptr + b).to(tl.float32)
    project = tl.load(project_ptr + b).to(tl.float32)
    out = keep * x + project * (block / (FACTOR * FACTOR))
    if HAS_EXTRA:
        extra = extra_ptr + b * e_b + c * e_c + rows[:, None] * e_h + cols[None, :] * e_w
        scale = tl.load(scale_ptr + b).to(tl.float32)
        out += scale * tl.load(extra, mask=mask, other=0.0).to(tl.float32)
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


def mix_block_mean(
    x: torch.Tensor,
    factor: int,
    keep: torch.Tensor,
    project: torch.Tensor,
    extra: torch.Tensor | None,
    extra_scale: torch.Tensor | None,
) -> torch.Tensor:
    """keep x + project P x (+ extra_scale extra) with per-sample coefficients, one pass."""
    _, channels, height, width = x.shape
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    has_extra = extra is not None and extra_scale is not None
    coefficients = [
        c.to(device=x.device, dtype=torch.float32).contiguous()
        for c in (keep, project, extra_scale if has_extra else keep)
    ]
    other = extra if has_extra else x
    _mix_block_mean_kernel[_grid(x, height, width)](
        x, other, out, *coefficients, channels, height, width,
        *x.stride(), *other.stride(), *out.stride(),
        FACTOR=factor, HAS_EXTRA=has_extra, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
    )  # fmt: skip
    return out
