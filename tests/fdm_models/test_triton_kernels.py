"""Triton kernels against the torch reference (docs/design.md §12.1).

On CPU they run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
any import); on a CUDA machine they run compiled. The interpreter's cost is per program, so the
shapes here are small (37 x 51 planes) against 32 x 64 tiles.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from fdm_models import ops
from fdm_models.ops import reference

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1", allow_module_level=True)

TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}
DTYPES = list(TOLERANCE)


def gaussian(length: int) -> torch.Tensor:
    sigma = length / 4
    taps = torch.arange(length, dtype=torch.float32) - length // 2
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def box(length: int) -> torch.Tensor:
    return torch.full((length,), 1.0 / length)


def _image(shape=(2, 3, 37, 51), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, device=DEVICE).to(dtype)


def _expect(x: torch.Tensor, name: str, arg) -> torch.Tensor:
    """Reference in fp32, rounded once to x's dtype: what an fp32-accumulating kernel gives."""
    return getattr(reference, name)(x.float(), arg).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "kernel",
    [gaussian(3), gaussian(5), gaussian(9), box(3), box(7)],
    ids=["gauss3", "gauss5", "gauss9", "box3", "box7"],
)
def test_blur(kernel: torch.Tensor, dtype: torch.dtype) -> None:
    x = _image(dtype=dtype)
    out = ops.blur_separable(x, kernel, backend="triton")
    assert out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, _expect(x, "blur_separable", kernel), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("factor", "shape"), [(2, (2, 3, 34, 50)), (3, (2, 3, 39, 51))])
def test_downsample_mean(factor: int, shape: tuple, dtype: torch.dtype) -> None:
    x = _image(shape, dtype)
    out = ops.downsample_mean(x, factor, backend="triton")
    torch.testing.assert_close(out, _expect(x, "downsample_mean", factor), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("factor", [2, 3])
def test_upsample_nearest(factor: int, dtype: torch.dtype) -> None:
    x = _image((2, 3, 13, 19), dtype)
    out = ops.upsample_nearest(x, factor, backend="triton")
    assert out.shape == (2, 3, 13 * factor, 19 * factor)
    torch.testing.assert_close(out, _expect(x, "upsample_nearest", factor), **TOLERANCE[dtype])


NON_CONTIGUOUS = {
    "transposed": lambda x: x.transpose(2, 3),
    "sliced": lambda x: x[:, 1:, 2:, ::2],
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "expanded": lambda x: x[:1].expand(2, -1, -1, -1),
}


@pytest.mark.parametrize("view", list(NON_CONTIGUOUS), ids=list(NON_CONTIGUOUS))
def test_non_contiguous_inputs(view: str) -> None:
    x = NON_CONTIGUOUS[view](_image((2, 3, 42, 51)))
    kernel = gaussian(5)
    cases = [
        ("blur_separable", kernel),
        ("upsample_nearest", 2),
    ]
    if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
        cases.append(("downsample_mean", 2))
    for name, arg in cases:
        out = getattr(ops, name)(x, arg, backend="triton")
        torch.testing.assert_close(out, getattr(reference, name)(x, arg), rtol=1e-5, atol=1e-5)


def test_reflect_padding_at_the_limit() -> None:
    """Radius H - 1: reflection reaches the far edge, as torch's F.pad allows."""
    x = _image((1, 2, 5, 40))
    kernel = gaussian(9)
    out = ops.blur_separable(x, kernel, backend="triton")
    torch.testing.assert_close(out, reference.blur_separable(x, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "arg"),
    [("blur_separable", gaussian(5)), ("downsample_mean", 2), ("upsample_nearest", 3)],
)
def test_opcheck_triton_backend(name: str, arg) -> None:
    x = torch.randn(1, 2, 8, 10, device=DEVICE, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.fdm, name).default, (x, arg, "triton"))


def test_gradients_through_triton_match_reference() -> None:
    x = _image((1, 2, 12, 18)).requires_grad_()
    kernel = gaussian(5).to(DEVICE).requires_grad_()
    out = ops.downsample_mean(ops.blur_separable(x, kernel, backend="triton"), 3, backend="triton")
    expected = reference.downsample_mean(reference.blur_separable(x, kernel), 3)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, kernel), grad)
    want = torch.autograd.grad(expected, (x, kernel), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_triton_backend_runs_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = importlib.import_module("fdm_models.ops.triton_kernels")
    calls = []

    def spy(name: str):
        original = getattr(kernels, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("blur_separable", "downsample_mean", "upsample_nearest"):
        monkeypatch.setattr(kernels, name, spy(name))
    x = _image((1, 1, 8, 8))
    monkeypatch.setenv("FDM_OPS_BACKEND", "triton")
    ops.upsample_nearest(ops.downsample_mean(ops.blur_separable(x, box(3)), 2), 2)
    assert calls == ["blur_separable", "downsample_mean", "upsample_nearest"]


def _mix_args(shape: tuple, dtype: torch.dtype = torch.float32, extra: bool = True) -> tuple:
    batch = shape[0]
    coefficients = [torch.rand(batch, device=DEVICE) * 2 - 0.5 for _ in range(3)]
    other = _image(shape, dtype) if extra else None
    return coefficients[0], coefficients[1], other, coefficients[2] if extra else None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("factor", "shape"), [(2, (3, 2, 34, 50)), (4, (2, 3, 36, 52))])
@pytest.mark.parametrize("extra", [True, False], ids=["with-extra", "no-extra"])
def test_mix_block_mean(factor: int, shape: tuple, extra: bool, dtype: torch.dtype) -> None:
    """One pass equals keep x + project up(down(x)) + scale extra, per sample: catches a block
    read at the wrong corner (rows // F without * F), a coefficient of the wrong sample (b vs
    c), or an extra term added when HAS_EXTRA is off."""
    x = _image(shape, dtype)
    keep, project, other, scale = _mix_args(shape, dtype, extra)
    out = ops.mix_block_mean(x, factor, keep, project, other, scale, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape
    expected = reference.mix_block_mean(
        x.float(), factor, keep, project, None if other is None else other.float(), scale
    ).to(dtype)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("view", ["transposed", "channels_last", "expanded"])
def test_mix_block_mean_non_contiguous(view: str) -> None:
    x = NON_CONTIGUOUS[view](_image((2, 3, 40, 40)))
    extra = NON_CONTIGUOUS[view](_image((2, 3, 40, 40)))
    keep, project, _, scale = _mix_args(x.shape)
    out = ops.mix_block_mean(x, 2, keep, project, extra, scale, backend="triton")
    expected = reference.mix_block_mean(x, 2, keep, project, extra, scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_mix_block_mean_opcheck_and_gradients() -> None:
    """The Triton op's fake shape, schema and autograd against the reference's own autograd:
    catches a backward that forgets P's adjoint (keep g only) or a coefficient gradient."""
    shape = (2, 2, 8, 12)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    keep, project, extra, scale = (
        t.clone().requires_grad_() for t in _mix_args(shape) if t is not None
    )
    args = (x, 2, keep, project, extra, scale, "triton")
    torch.library.opcheck(torch.ops.fdm.mix_block_mean.default, args)
    out = torch.ops.fdm.mix_block_mean(*args)
    expected = reference.mix_block_mean(x, 2, keep, project, extra, scale)
    grad = torch.randn_like(out)
    inputs = (x, keep, project, extra, scale)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
