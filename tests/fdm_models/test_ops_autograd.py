"""The fdm:: custom ops on the torch path: opcheck, exact adjoints, validation, backend choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fdm_models.ops.custom_ops as custom_ops
from fdm_models import ops
from fdm_models.ops import reference

GAUSS5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _call(name: str, x: torch.Tensor, arg, backend: str) -> torch.Tensor:
    return getattr(ops, name)(x, arg, backend=backend)


CASES = [
    ("blur_separable", (2, 3, 9, 11), GAUSS5),
    ("downsample_mean", (2, 3, 9, 12), 3),
    ("upsample_nearest", (2, 3, 5, 7), 2),
]


@pytest.mark.parametrize(("name", "shape", "arg"), CASES, ids=[c[0] for c in CASES])
def test_opcheck(name: str, shape: tuple, arg) -> None:
    x = torch.randn(shape, requires_grad=True)
    if isinstance(arg, torch.Tensor):
        arg = arg.clone().requires_grad_()
    op = getattr(torch.ops.fdm, name).default
    torch.library.opcheck(op, (x, arg, "torch"))


@pytest.mark.parametrize(("name", "shape", "arg"), CASES, ids=[c[0] for c in CASES])
def test_backward_equals_reference_autograd(name: str, shape: tuple, arg) -> None:
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    extra = arg.to(torch.float64).requires_grad_() if isinstance(arg, torch.Tensor) else arg
    out = _call(name, x, extra, "torch")
    expected = getattr(reference, name)(x, extra)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    inputs = (x, extra) if isinstance(extra, torch.Tensor) else (x,)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_blur_gradcheck_including_kernel_and_double_backward() -> None:
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, k: ops.blur_separable(a, k, backend="torch"), (x, kernel)
    )
    y = torch.randn(1, 2, 6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: ops.downsample_mean(a, 3, backend="torch"), (y,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_torch_path(dtype: torch.dtype) -> None:
    x = torch.randn(1, 2, 8, 8)
    out = ops.blur_separable(x.to(dtype), GAUSS5, backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.float(), reference.blur_separable(x, GAUSS5), atol=2e-2, rtol=2e-2
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: ops.blur_separable(x, torch.ones(4)), "odd length"),
        (lambda x: ops.blur_separable(x, torch.ones(19)), "radius 9 must be smaller than H"),
        (lambda x: ops.downsample_mean(x, 4), "W=10 must be divisible by factor 4"),
        (lambda x: ops.upsample_nearest(x, 0), "factor >= 1"),
        (lambda x: ops.upsample_nearest(x[0], 2), r"\(B, C, H, W\)"),
    ],
)
def test_invalid_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(torch.randn(1, 1, 8, 10))


def test_outputs_never_alias_inputs() -> None:
    x = torch.randn(1, 1, 4, 4)
    for out in (ops.upsample_nearest(x, 1), ops.downsample_mean(x, 1)):
        assert out.data_ptr() != x.data_ptr()
        torch.testing.assert_close(out, x)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    resolve = custom_ops.resolve_ops_backend
    assert resolve("auto", cpu, op="upsample_nearest") == "torch"
    monkeypatch.setattr(custom_ops, "triton_available", lambda: True)
    # auto on CUDA follows the H200 kernel table: Triton only where it measured faster.
    assert resolve("auto", cuda, op="upsample_nearest") == "triton"
    assert resolve("auto", cuda, op="blur_separable", taps=5) == "triton"
    assert resolve("auto", cuda, op="blur_separable", taps=13) == "torch"
    assert resolve("auto", cuda, op="downsample_mean") == "torch"
    assert resolve("auto", cpu, op="blur_separable", taps=3) == "torch"
    assert resolve("triton", cuda, op="downsample_mean") == "triton"  # forcing still wins
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*TRITON_INTERPRET=1"):
        resolve("triton", cpu, op="downsample_mean")
    monkeypatch.setattr(custom_ops, "triton_available", lambda: False)
    assert resolve("auto", cuda, op="upsample_nearest") == "torch"
    with pytest.raises(RuntimeError, match=r"fdm-models\[triton\]"):
        resolve("triton", cuda, op="upsample_nearest")


def test_ops_summary_names_each_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fdm env` says which ops run where: one name when all agree, the split for auto on CUDA."""
    monkeypatch.delenv("FDM_OPS_BACKEND", raising=False)
    monkeypatch.setattr(custom_ops, "triton_available", lambda: True)
    assert ops.ops_summary("cpu") == "torch"
    assert ops.ops_summary("cuda") == (
        "triton: upsample_nearest, blur <= 5 taps; torch: downsample_mean, longer blurs"
    )
    monkeypatch.setenv("FDM_OPS_BACKEND", "triton")
    assert ops.ops_summary("cuda") == "triton"
    monkeypatch.setenv("FDM_OPS_BACKEND", "torch")
    assert ops.ops_summary("cuda") == "torch"


def test_auto_passes_each_op_and_blur_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The op wrappers tell ``auto`` which op runs and how long the blur kernel is."""
    seen = []

    def record(backend: str, device: torch.device, *, op: str, taps: int = 0) -> str:
        seen.append((op, taps))
        return "torch"

    monkeypatch.setattr(custom_ops, "resolve_ops_backend", record)
    x = torch.randn(1, 1, 8, 8)
    ops.blur_separable(x, torch.ones(7) / 7)
    ops.downsample_mean(x, 2)
    ops.upsample_nearest(x, 2)
    assert seen == [("blur_separable", 7), ("downsample_mean", 0), ("upsample_nearest", 0)]


def test_env_variable_picks_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(
        custom_ops,
        "resolve_ops_backend",
        lambda backend, device, **_: seen.append(backend) or "torch",
    )
    monkeypatch.setenv("FDM_OPS_BACKEND", "torch")
    ops.upsample_nearest(torch.randn(1, 1, 2, 2), 2)
    ops.upsample_nearest(torch.randn(1, 1, 2, 2), 2, backend="auto")
    assert seen == ["torch", "auto"]
    monkeypatch.setenv("FDM_OPS_BACKEND", "cuda")
    with pytest.raises(
        ValueError, match="FDM_OPS_BACKEND='cuda' is not one of auto, torch, triton"
    ):
        ops.upsample_nearest(torch.randn(1, 1, 2, 2), 2)


def test_works_without_triton() -> None:
    """triton is optional: with it unimportable, fdm_models imports and runs the torch path."""
    script = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
import fdm_models
from fdm_models import ops
assert not ops.triton_available()
x = torch.randn(1, 1, 4, 4)
assert ops.upsample_nearest(x, 2, backend="auto").shape == (1, 1, 8, 8)
try:
    ops.upsample_nearest(x, 2, backend="triton")
except RuntimeError as error:
    assert "fdm-models[triton]" in str(error), error
else:
    raise AssertionError("forcing triton without it must raise")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
