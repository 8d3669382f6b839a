"""fdm's conformance suite plus Haar-specific checks (run with fdm-haar installed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from fdm_core import FDMProcess, ProcessConfig
from fdm_core.testing import TransformConformance, check_transform
from fdm_haar import HaarLowPass, haar2d, ihaar2d


class TestHaarConformance(TransformConformance):
    input_shape = (3, 16, 16)

    def make_transform(self) -> HaarLowPass:
        return HaarLowPass(levels=2)


def block_mean(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The closed form: the mean over 2^levels x 2^levels blocks, broadcast back."""
    block = 2**levels
    means = F.avg_pool2d(x, block)
    return means.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_equals_block_mean(levels: int) -> None:
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    torch.testing.assert_close(HaarLowPass(levels=levels).encode(x), block_mean(x, levels))
    check_transform(HaarLowPass(levels=levels), (2, 8, 16))  # the suite, called directly


def test_idempotent_and_self_adjoint() -> None:
    f = HaarLowPass(levels=2).encode
    x, w = torch.randn(2, 2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(f(f(x)), f(x))
    torch.testing.assert_close((f(x) * w).sum(), (x * f(w)).sum())


def test_haar2d_is_orthonormal() -> None:
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    ll, details = haar2d(x)
    assert ll.shape == (2, 3, 4, 3) and all(d.shape == ll.shape for d in details)
    torch.testing.assert_close(ihaar2d(ll, details), x)  # perfect reconstruction
    energy = ll.square().sum() + sum(d.square().sum() for d in details)
    torch.testing.assert_close(energy, x.square().sum())  # Parseval


def test_params_and_shapes_are_checked() -> None:
    assert HaarLowPass(levels=2).out_shape((3, 8, 12)) == (3, 8, 12)
    with pytest.raises(ValueError, match=r"multiples of 2\*\*levels = 4, got 8x10"):
        HaarLowPass(levels=2).out_shape((3, 8, 10))
    with pytest.raises(ValueError, match=r"multiples of 2\*\*levels = 4, got 8x10"):
        HaarLowPass(levels=2).encode(torch.randn(1, 3, 8, 10))  # unfold would drop a column
    with pytest.raises(ValueError, match=r"batch of shape \(B, C, H, W\).*got a tensor of shape"):
        HaarLowPass(levels=2).decode(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="three positive integers"):
        HaarLowPass(levels=1).out_shape((8, 8))
    with pytest.raises(ValidationError, match="levels"):
        HaarLowPass(levels=0)
    with pytest.raises(ValidationError, match="extra"):
        HaarLowPass(level=2)  # a misspelled parameter is rejected


def test_in_a_process() -> None:
    spec = [{"name": "haar", "levels": 1}, {"name": "haar", "levels": 2}]
    process = FDMProcess(ProcessConfig(resolution=16, transforms=spec))
    assert process.stage_shapes == [(1, 16, 16)] * 3
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(process.stage_signal(x, 2), block_mean(x, 2))
    with pytest.raises(ValueError, match=r"transforms\[1\] \(haar\)"):
        ProcessConfig(resolution=10, transforms=spec)  # 2**2 does not divide 10
