"""Attention backends: math vs SDPA, xformers dispatch (with a stand-in module), errors, env."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest
import torch

import fdm_models.attention as attention_module
from fdm_models import (
    AttentionBackendError,
    MultiStageUNet,
    UNetConfig,
    dot_product_attention,
    resolve_attention_backend,
)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FDM_ATTENTION", raising=False)
    attention_module.xformers_failure.cache_clear()  # each test brings its own xformers
    yield
    attention_module.xformers_failure.cache_clear()


@pytest.fixture
def fake_xformers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, ...]]:
    """A stand-in ``xformers.ops`` recording its inputs; CUDA check bypassed."""
    calls: list[tuple[torch.Tensor, ...]] = []

    def memory_efficient_attention(q, k, v):
        calls.append((q, k, v))
        return 2 * v + 1  # recognisable, and in the (B, L, H, D) layout it received

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention_module, "_device_supports_xformers", lambda device: True)
    return calls


@pytest.fixture
def flash_only_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``xformers.ops`` that imports but, like a flash-only or wrong-ABI build, has no
    operator for fp32 inputs (the dispatcher's NotImplementedError)."""

    def memory_efficient_attention(q, k, v):
        if q.dtype == torch.float32:
            raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")
        return v

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention_module, "_device_supports_xformers", lambda device: True)


@pytest.fixture
def no_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers` fail
    monkeypatch.setitem(sys.modules, "xformers.ops", None)


def _qkv(batch=2, heads=3, length=17, dim=8, dtype=torch.float32, device="cpu"):
    return [torch.randn(batch, heads, length, dim, dtype=dtype, device=device) for _ in range(3)]


def test_sdpa_matches_math() -> None:
    q, k, v = _qkv()
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(dot_product_attention(q, k, v, "math"), expected)
    torch.testing.assert_close(
        dot_product_attention(q, k, v, "sdpa"), expected, rtol=1e-5, atol=1e-5
    )


def test_model_output_does_not_depend_on_backend() -> None:
    config = UNetConfig.for_stages([(1, 16, 16)], size="tiny", base_channels=16)
    model = MultiStageUNet(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    z, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    outputs = {}
    for backend in ("math", "sdpa"):
        variant = MultiStageUNet(config.model_copy(update={"attention": backend})).eval()
        variant.load_state_dict(model.state_dict())
        with torch.no_grad():
            outputs[backend] = variant(z, t, 0)
    torch.testing.assert_close(outputs["math"], outputs["sdpa"], rtol=1e-4, atol=1e-5)


def test_auto_is_sdpa_on_cpu() -> None:
    assert resolve_attention_backend("auto", "cpu") == "sdpa"


def test_xformers_dispatch_uses_blhd_layout(fake_xformers) -> None:
    q, k, v = _qkv(batch=2, heads=3, length=17, dim=8)
    out = dot_product_attention(q, k, v, "xformers")
    probe, (xq, xk, xv) = fake_xformers  # the first call is the cached can-it-run probe
    assert probe[0].shape == (1, 8, 1, 8)
    assert xq.shape == (2, 17, 3, 8)  # (B, L, H, D)
    torch.testing.assert_close(xq, q.transpose(1, 2))
    torch.testing.assert_close(xk, k.transpose(1, 2))
    torch.testing.assert_close(xv, v.transpose(1, 2))
    torch.testing.assert_close(out, 2 * v + 1)  # the stand-in's result, back in (B, H, L, D)


def test_auto_prefers_xformers_when_usable(fake_xformers) -> None:
    assert resolve_attention_backend("auto", "cpu") == "xformers"
    assert len(fake_xformers) == 1  # the one probe call, cached from here on
    dot_product_attention(*_qkv(), "auto")
    dot_product_attention(*_qkv(), "auto")
    assert len(fake_xformers) == 3


def test_auto_falls_back_where_xformers_imports_but_cannot_run(
    flash_only_xformers, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: choosing xformers because it imports. A wheel built for another torch/CUDA
    (seen on an H200) or a flash-only build then fails at the first attention call."""
    assert resolve_attention_backend("auto", "cpu", torch.float16) == "xformers"
    assert resolve_attention_backend("auto", "cpu", torch.float32) == "sdpa"
    assert "xformers cannot run on cpu float32 tensors (NotImplementedError: No operator" in (
        caplog.text
    )
    q, k, v = _qkv()
    expected = dot_product_attention(q, k, v, "math")
    torch.testing.assert_close(dot_product_attention(q, k, v, "auto"), expected)
    with pytest.raises(AttentionBackendError, match=r"requested but xformers cannot run on cpu"):
        dot_product_attention(q, k, v, "xformers")


def test_forcing_xformers_without_it_raises(no_xformers) -> None:
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match=r"xformers\.ops is not importable.*allowed"):
        dot_product_attention(q, k, v, "xformers")
    assert resolve_attention_backend("auto", "cuda") == "sdpa"


def test_forcing_xformers_on_cpu_tensors_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", types.ModuleType("xformers.ops"))
    with pytest.raises(AttentionBackendError, match="needs CUDA tensors, got device 'cpu'"):
        resolve_attention_backend("xformers", "cpu")


def test_env_overrides_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDM_ATTENTION", "math")
    assert resolve_attention_backend("sdpa", "cpu") == "math"

    def no_sdpa(*args, **kwargs):
        raise AssertionError("FDM_ATTENTION=math must bypass SDPA")

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", no_sdpa)
    model = MultiStageUNet(UNetConfig.for_stages([(1, 16, 16)], size="tiny", attention="sdpa"))
    model(torch.randn(1, 1, 16, 16), torch.rand(1), 0)


def test_invalid_values_list_the_allowed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="allowed: auto, sdpa, math, xformers"):
        resolve_attention_backend("flash", "cpu")
    monkeypatch.setenv("FDM_ATTENTION", "fast")
    with pytest.raises(ValueError, match="environment variable FDM_ATTENTION='fast'"):
        resolve_attention_backend("auto", "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_auto_runs_and_matches_math_on_cuda(dtype: torch.dtype) -> None:
    """Whatever xformers is installed (none, working, or broken), 'auto' must run."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    q, k, v = _qkv(length=77, dim=64, dtype=dtype, device="cuda")
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        dot_product_attention(q, k, v, "auto"),
        dot_product_attention(q, k, v, "math"),
        rtol=tolerance,
        atol=tolerance,
    )


@pytest.mark.cuda
def test_real_xformers_matches_math_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("xformers.ops")
    if reason := attention_module.xformers_failure(torch.device("cuda"), torch.float16):
        pytest.skip(reason)
    q, k, v = _qkv(length=77, dim=64, dtype=torch.float16, device="cuda")
    assert resolve_attention_backend("auto", "cuda") == "xformers"
    torch.testing.assert_close(
        dot_product_attention(q, k, v, "xformers"),
        dot_product_attention(q, k, v, "math"),
        rtol=2e-3,
        atol=2e-3,
    )
