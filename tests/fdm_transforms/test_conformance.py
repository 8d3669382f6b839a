"""The built-in transforms run the shared conformance suite (fdm_core.testing)."""

import pytest
import torch

from fdm_core.testing import TransformConformance, check_projection
from fdm_transforms import BlurTransform, DownsampleTransform, IdentityTransform


class TestIdentity(TransformConformance):
    input_shape = (3, 8, 8)

    def make_transform(self):
        return IdentityTransform()


class TestDownsample2Gray(TransformConformance):
    input_shape = (1, 16, 16)

    def make_transform(self):
        return DownsampleTransform(factor=2)


class TestDownsample3RGB(TransformConformance):
    input_shape = (3, 12, 18)
    unet_config = None  # a factor of 3 is a valid transform the built-in UNet cannot train

    def make_transform(self):
        return DownsampleTransform(factor=3)


class TestGaussianBlur(TransformConformance):
    input_shape = (3, 16, 16)

    def make_transform(self):
        return BlurTransform(kind="gaussian", sigma=1.5)


class TestUniformBlur(TransformConformance):
    input_shape = (1, 15, 17)
    unet_config = None  # odd sizes: the UNet's levels halve H and W exactly

    def make_transform(self):
        return BlurTransform(kind="uniform", size=5)


def test_downsample_is_mean_pool_and_nearest():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = DownsampleTransform().encode(x)
    assert torch.equal(y, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert torch.equal(DownsampleTransform().decode(y)[0, 0, :2, :2], torch.full((2, 2), 2.5))


def test_blur_chain_composes_and_zero_blur_is_identity():
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(BlurTransform(sigma=0.0).encode(x), x)
    box = BlurTransform(kind="uniform", size=3)
    once = box.encode(x)
    # a constant image is unchanged by a normalised kernel with reflect padding
    assert torch.allclose(box.encode(torch.ones(1, 1, 8, 8)), torch.ones(1, 1, 8, 8))
    assert once.std() < x.std()


def test_blur_matches_direct_2d_convolution_inside():
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    blur = BlurTransform(kind="gaussian", sigma=1.0)
    k = blur.kernel
    direct = torch.nn.functional.conv2d(x, (k[:, None] * k[None, :])[None, None])
    r = k.numel() // 2
    assert torch.allclose(blur.encode(x)[..., r:-r, r:-r], direct, atol=1e-12)


def test_broken_projection_is_caught():
    class Leaky(DownsampleTransform):
        def decode(self, y):
            return 0.9 * super().decode(y)

    with pytest.raises(AssertionError, match="f\\(g\\(y\\)\\) = y"):
        check_projection(Leaky(), (1, 8, 8))


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="factor"):
        DownsampleTransform(factor=1)
    with pytest.raises(ValueError, match="odd"):
        BlurTransform(kind="uniform", size=4)
    with pytest.raises(ValueError, match="divide"):
        DownsampleTransform(factor=2).out_shape((1, 15, 16))
