"""The blur and resampling ops as ``torch.library`` custom ops in the ``fdm`` namespace.

Each op takes a ``backend`` string: ``"triton"`` runs the Triton kernel, ``"torch"`` the
reference in :mod:`fdm_models.ops.reference`, ``"auto"`` picks, for CUDA tensors with Triton
importable, whichever path measured faster on an H200 (BENCHMARKS.md, "On a GPU: NVIDIA
H200"): Triton for nearest up-sampling and for blurs of at most ``AUTO_TRITON_MAX_TAPS`` taps,
torch for mean down-sampling and longer blurs; torch everywhere else. The public wrappers read
the default from the environment variable ``FDM_OPS_BACKEND`` (``auto`` when unset). Forcing
``triton`` on CPU tensors works only under the Triton interpreter (``TRITON_INTERPRET=1``, used
by the tests).

Every op has a fake (meta) implementation and an autograd formula (docs/design.md §12.1 (E34)):
the backward of mean down-sampling is nearest up-sampling / factor², that of nearest up-sampling
is down-sampling * factor², and the blur backward is its exact adjoint (transposed convolutions,
then the adjoint of reflect padding). The fused stage mean is self-adjoint in x (P is an
orthogonal projection).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType

import torch
import torch.nn.functional as F

from . import reference

OPS_BACKENDS = ("auto", "torch", "triton")
OPS_BACKEND_ENV = "FDM_OPS_BACKEND"
# ``auto`` on CUDA, from the H200 kernel table (64x3x256x256): a 5-tap blur ran at 1.03-1.26x of
# torch, a 13-tap blur at 0.72-0.80x; nearest up-sampling at 1.41-1.61x; mean down-sampling at
# 0.38-0.58x (torch's pooling kernel is bandwidth-bound and hard to beat).
AUTO_TRITON_MAX_TAPS = 5
# The fused stage mean (`mix_block_mean`) is one pass over memory where torch makes five, so
# ``auto`` picks its kernel on CUDA in eager mode; it has no H200 timing yet (bench/gpu_check.sh
# times both paths). Under torch.compile the torch path runs instead, for inductor to fuse.
AUTO_TRITON_OPS = ("blur_separable", "upsample_nearest", "mix_block_mean")

logger = logging.getLogger(__name__)


@functools.cache
def triton_available() -> bool:
    """Whether the optional ``triton`` package imports (extra ``fdm-models[triton]``)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    except Exception as error:  # e.g. a triton built for another torch / driver
        logger.warning("triton is installed but does not import: %s", error)
        return False
    return True


def _kernels() -> ModuleType:
    """The Triton kernel module, imported on first use so that triton stays optional."""
    return importlib.import_module("fdm_models.ops.triton_kernels")


def default_ops_backend() -> str:
    """The backend named by ``FDM_OPS_BACKEND`` (``auto`` when unset), validated."""
    backend = os.environ.get(OPS_BACKEND_ENV, "").strip().lower() or "auto"
    if backend not in OPS_BACKENDS:
        raise ValueError(f"{OPS_BACKEND_ENV}={backend!r} is not one of {', '.join(OPS_BACKENDS)}")
    return backend


def _auto_picks_triton(op: str, taps: int) -> bool:
    """Whether Triton measured faster than torch for ``op`` on CUDA (see AUTO_TRITON_OPS)."""
    return op in AUTO_TRITON_OPS and (op != "blur_separable" or taps <= AUTO_TRITON_MAX_TAPS)


def resolve_ops_backend(backend: str, device: torch.device | str, *, op: str, taps: int = 0) -> str:
    """The concrete backend (``torch`` or ``triton``) that runs ``op`` on ``device``.

    ``op`` is ``blur_separable``, ``downsample_mean`` or ``upsample_nearest``; ``taps`` is the
    blur kernel's length. Both only matter for ``auto`` on CUDA.
    """
    device = torch.device(device)
    if backend not in OPS_BACKENDS:
        raise ValueError(f"ops backend {backend!r} is not one of {', '.join(OPS_BACKENDS)}")
    if backend == "auto":
        if device.type != "cuda" or not triton_available():
            return "torch"
        return "triton" if _auto_picks_triton(op, taps) else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "ops backend 'triton' needs the triton package (pip install fdm-models[triton]); "
                f"allowed backends: {', '.join(OPS_BACKENDS)}"
            )
        interpreted = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
        if device.type != "cuda" and not interpreted:
            raise RuntimeError(
                f"ops backend 'triton' needs CUDA tensors (got {device.type}); on CPU it runs "
                "only under the Triton interpreter (TRITON_INTERPRET=1 before import)"
            )
    return backend


def ops_summary(device: torch.device | str) -> str:
    """Which backend runs each op on `device` under ``FDM_OPS_BACKEND`` (for ``fdm env``):
    one backend name, or ``triton: ...; torch: ...`` when ``auto`` splits the ops."""
    backend = default_ops_backend()
    cases = {
        "upsample_nearest": ("upsample_nearest", 0),
        f"blur <= {AUTO_TRITON_MAX_TAPS} taps": ("blur_separable", AUTO_TRITON_MAX_TAPS),
        "downsample_mean": ("downsample_mean", 0),
        "longer blurs": ("blur_separable", AUTO_TRITON_MAX_TAPS + 2),
    }
    picks: dict[str, list[str]] = {}
    for label, (op, taps) in cases.items():
        picks.setdefault(resolve_ops_backend(backend, device, op=op, taps=taps), []).append(label)
    if len(picks) == 1:
        return next(iter(picks))
    return "; ".join(f"{name}: {', '.join(labels)}" for name, labels in picks.items())


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def _check_factor(factor: int, name: str) -> None:
    if factor < 1:
        raise ValueError(f"{name} needs an integer factor >= 1, got {factor}")


def _check_blur(x: torch.Tensor, kernel: torch.Tensor) -> None:
    _check_image(x, "blur_separable")
    if kernel.dim() != 1 or kernel.numel() % 2 == 0:
        raise ValueError(
            f"blur_separable needs a 1-D kernel of odd length, got shape {tuple(kernel.shape)}"
        )
    radius = kernel.numel() // 2
    if radius >= x.shape[-2] or radius >= x.shape[-1]:
        raise ValueError(
            f"blur_separable: kernel radius {radius} must be smaller than H and W for reflect "
            f"padding, got H={x.shape[-2]}, W={x.shape[-1]}"
        )


def _check_downsample(x: torch.Tensor, factor: int) -> None:
    _check_image(x, "downsample_mean")
    _check_factor(factor, "downsample_mean")
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"downsample_mean: H={x.shape[-2]} and W={x.shape[-1]} must be divisible by "
            f"factor {factor}"
        )


def _check_upsample(x: torch.Tensor, factor: int) -> None:
    _check_image(x, "upsample_nearest")
    _check_factor(factor, "upsample_nearest")


# --- blur -------------------------------------------------------------------------------------


@torch.library.custom_op("fdm::blur_separable", mutates_args=())
def blur_separable_op(x: torch.Tensor, kernel: torch.Tensor, backend: str) -> torch.Tensor:
    """Separable blur with reflect padding (see :func:`fdm_models.ops.reference.blur_separable`)."""
    _check_blur(x, kernel)
    if resolve_ops_backend(backend, x.device, op="blur_separable", taps=kernel.numel()) == "triton":
        return _kernels().blur_separable(x, kernel)
    return reference.blur_separable(x, kernel).contiguous()


@blur_separable_op.register_fake
def _(x: torch.Tensor, kernel: torch.Tensor, backend: str) -> torch.Tensor:
    _check_blur(x, kernel)
    return x.new_empty(x.shape)


def _blur_setup_context(ctx, inputs, output) -> None:
    x, kernel, _ = inputs
    ctx.save_for_backward(x, kernel)


def _blur_backward(ctx, grad: torch.Tensor):
    """Adjoint of pad -> correlate along H -> correlate along W, and the kernel gradient."""
    x, kernel = ctx.saved_tensors
    channels = x.shape[1]
    radius = kernel.numel() // 2
    k = kernel.to(dtype=grad.dtype, device=grad.device)
    k_h = k.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    k_w = k.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    grad_rows = F.conv_transpose2d(grad, k_w, groups=channels)  # grad w.r.t. the H-pass output
    grad_padded = F.conv_transpose2d(grad_rows, k_h, groups=channels)
    pad = [radius] * 4
    grad_x = torch.ops.aten.reflection_pad2d_backward(grad_padded, x, pad)
    grad_kernel = None
    if ctx.needs_input_grad[1]:
        # y = sum_j k[j] rows[.., w + j] and rows = sum_i k[i] xpad[h + i, ..]: correlate each
        # intermediate with the gradient that reaches it, one group per (batch, channel) plane.
        xpad = F.pad(x.to(grad.dtype), pad, mode="reflect")
        rows = F.conv2d(xpad, k_h, groups=channels)
        planes = x.shape[0] * channels
        grad_k_w = F.conv2d(
            rows.reshape(1, planes, *rows.shape[-2:]),
            grad.reshape(planes, 1, *grad.shape[-2:]),
            groups=planes,
        ).sum(dim=(0, 1, 2))
        grad_k_h = F.conv2d(
            xpad.reshape(1, planes, *xpad.shape[-2:]),
            grad_rows.reshape(planes, 1, *grad_rows.shape[-2:]),
            groups=planes,
        ).sum(dim=(0, 1, 3))
        grad_kernel = (grad_k_w + grad_k_h).to(kernel.dtype)
    return grad_x, grad_kernel, None


blur_separable_op.register_autograd(_blur_backward, setup_context=_blur_setup_context)


# --- mean down-sampling and nearest up-sampling -----------------------------------------------


@torch.library.custom_op("fdm::downsample_mean", mutates_args=())
def downsample_mean_op(x: torch.Tensor, factor: int, backend: str) -> torch.Tensor:
    """Mean over non-overlapping factor x factor blocks."""
    _check_downsample(x, factor)
    if resolve_ops_backend(backend, x.device, op="downsample_mean") == "triton":
        return _kernels().downsample_mean(x, factor)
    return reference.downsample_mean(x, factor).contiguous()


@downsample_mean_op.register_fake
def _(x: torch.Tensor, factor: int, backend: str) -> torch.Tensor:
    _check_downsample(x, factor)
    return x.new_empty((*x.shape[:2], x.shape[2] // factor, x.shape[3] // factor))


@torch.library.custom_op("fdm::upsample_nearest", mutates_args=())
def upsample_nearest_op(x: torch.Tensor, factor: int, backend: str) -> torch.Tensor:
    """Repeat every pixel into a factor x factor block."""
    _check_upsample(x, factor)
    if resolve_ops_backend(backend, x.device, op="upsample_nearest") == "triton":
        return _kernels().upsample_nearest(x, factor)
    return reference.upsample_nearest(x, factor).contiguous()


@upsample_nearest_op.register_fake
def _(x: torch.Tensor, factor: int, backend: str) -> torch.Tensor:
    _check_upsample(x, factor)
    return x.new_empty((*x.shape[:2], x.shape[2] * factor, x.shape[3] * factor))


def _resample_setup_context(ctx, inputs, output) -> None:
    _, factor, backend = inputs
    ctx.factor = factor
    ctx.backend = backend


def _downsample_mean_backward(ctx, grad: torch.Tensor):
    return upsample_nearest_op(grad, ctx.factor, ctx.backend) / ctx.factor**2, None, None


def _upsample_nearest_backward(ctx, grad: torch.Tensor):
    return downsample_mean_op(grad, ctx.factor, ctx.backend) * ctx.factor**2, None, None


downsample_mean_op.register_autograd(
    _downsample_mean_backward, setup_context=_resample_setup_context
)
upsample_nearest_op.register_autograd(
    _upsample_nearest_backward, setup_context=_resample_setup_context
)


# --- the fused stage mean ---------------------------------------------------------------------


def _check_mix(x: torch.Tensor, factor: int, coefficients: list[torch.Tensor]) -> None:
    _check_downsample(x, factor)
    for c in coefficients:
        if c.shape != (x.shape[0],):
            raise ValueError(
                f"mix_block_mean needs one coefficient per sample, shape ({x.shape[0]},), got "
                f"{tuple(c.shape)}"
            )


@torch.library.custom_op("fdm::mix_block_mean", mutates_args=())
def mix_block_mean_op(
    x: torch.Tensor,
    factor: int,
    keep: torch.Tensor,
    project: torch.Tensor,
    extra: torch.Tensor | None,
    extra_scale: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """keep x + project P x (+ extra_scale extra), P the block mean broadcast back."""
    _check_mix(x, factor, [keep, project])
    if resolve_ops_backend(backend, x.device, op="mix_block_mean") == "triton":
        return _kernels().mix_block_mean(x, factor, keep, project, extra, extra_scale)
    return reference.mix_block_mean(x, factor, keep, project, extra, extra_scale).contiguous()


@mix_block_mean_op.register_fake
def _(x, factor, keep, project, extra, extra_scale, backend) -> torch.Tensor:
    _check_mix(x, factor, [keep, project])
    return x.new_empty(x.shape)


def _mix_setup_context(ctx, inputs, output) -> None:
    x, factor, keep, project, extra, extra_scale, backend = inputs
    ctx.factor, ctx.backend, ctx.has_extra = factor, backend, extra is not None
    ctx.save_for_backward(x, keep, project, extra, extra_scale)


def _mix_backward(ctx, grad: torch.Tensor):
    """d/dx = keep g + project P g (P = P^T); d/d(extra) = extra_scale g; each coefficient's
    gradient is its term's inner product with g, per sample."""
    x, keep, project, extra, extra_scale = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_x = grad_keep = grad_project = grad_extra = grad_scale = None

    def per_sample_dot(a: torch.Tensor) -> torch.Tensor:
        return (grad * a).flatten(1).sum(1)

    if needs[0]:
        grad_x = mix_block_mean_op(grad, ctx.factor, keep, project, None, None, ctx.backend)
    if needs[2]:
        grad_keep = per_sample_dot(x).to(keep.dtype)
    if needs[3]:
        projected = reference.upsample_nearest(reference.downsample_mean(x, ctx.factor), ctx.factor)
        grad_project = per_sample_dot(projected).to(project.dtype)
    if ctx.has_extra and needs[4]:
        grad_extra = extra_scale.to(grad.dtype).view(-1, 1, 1, 1) * grad
    if ctx.has_extra and needs[5]:
        grad_scale = per_sample_dot(extra).to(extra_scale.dtype)
    return grad_x, None, grad_keep, grad_project, grad_extra, grad_scale, None


mix_block_mean_op.register_autograd(_mix_backward, setup_context=_mix_setup_context)
