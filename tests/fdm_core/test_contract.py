"""A transform written only from the public contract works (with or without `Params`), and one
that breaks the contract of its declared boundary is refused, when a process is built with it,
by a message naming the transform and the broken property (docs/design.md §10.4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fdm_core import (
    Boundary,
    FDMProcess,
    ProcessConfig,
    SignalTransform,
    TransformContractError,
    check_transform,
    load_registry,
)


class Halve(SignalTransform):
    """Mean pooling by 2, written from the contract alone: no Params, no __init__."""

    name = "halve"
    boundary = Boundary.PROJECTION

    def out_shape(self, shape):
        c, h, w = shape
        if h % 2 or w % 2:
            raise ValueError(f"needs an even size, got {h}x{w}")
        return (c, h // 2, w // 2)

    def encode(self, x):
        return F.avg_pool2d(x, 2)

    def decode(self, y):
        return y.repeat_interleave(2, -1).repeat_interleave(2, -2)


class Strided(Halve):
    """Keeps every other pixel: f g = I holds, but P = g f is not an orthogonal projection."""

    name = "strided"

    def encode(self, x):
        return x[..., ::2, ::2]


class Orthonormal(Halve):
    """The orthonormal Haar low band: f g = I and P orthogonal, but f maps white noise to
    variance 1, not d_(k+1)/d_k = 1/4, so the up-step would add the wrong noise."""

    name = "orthonormal"

    def encode(self, x):
        return 2 * F.avg_pool2d(x, 2)

    def decode(self, y):
        return super().decode(y) / 2


class Lossy(Halve):
    """g is bilinear: f(g(y)) != y."""

    name = "lossy"

    def decode(self, y):
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


class Shrinks(Halve):
    """Declares `identity` but changes the shape."""

    name = "shrinks"
    boundary = Boundary.IDENTITY


class Sharpen(SignalTransform):
    """Declares `identity` but decode is not the identity."""

    name = "sharpen"
    boundary = "identity"  # a plain string is accepted too

    def out_shape(self, shape):
        return tuple(shape)

    def encode(self, x):
        return x

    def decode(self, y):
        return 2 * y


class WrongShape(Halve):
    """out_shape disagrees with encode."""

    name = "wrong_shape"
    boundary = Boundary.RENOISE

    def encode(self, x):
        return F.avg_pool2d(x, 4)


class Scaled(SignalTransform):
    """Its own __init__ without calling SignalTransform.__init__ and without Params."""

    name = "scaled"
    boundary = Boundary.RENOISE

    def __init__(self, gain: float = 2.0) -> None:
        self.gain = gain

    def out_shape(self, shape):
        return tuple(shape)

    def encode(self, x):
        return self.gain * x

    def decode(self, y):
        return y / self.gain


class NoBoundary(Halve):
    boundary = "sideways"


def process_with(*transforms: type[SignalTransform]) -> FDMProcess:
    registry = load_registry(load_plugins="")
    for cls in transforms:
        registry.add("transform", cls.name, cls, "tests", "0")
    config = ProcessConfig.model_validate(
        {"resolution": 8, "transforms": [cls.name for cls in transforms]},
        context={"registry": registry},
    )
    return FDMProcess(config, registry)


def test_a_transform_without_params_passes_the_suite_and_trains_a_process():
    registry = load_registry(load_plugins="")
    registry.add("transform", "halve", Halve, "tests", "0")
    check_transform(Halve(), (1, 8, 8), registry)
    assert Halve().to_config() == {"name": "halve"}
    process = process_with(Halve)
    assert process.stage_shapes == [(1, 8, 8), (1, 4, 4)]


def test_a_transform_with_its_own_init_and_no_params_is_usable():
    process = process_with(Scaled)
    assert process.stage_shapes == [(1, 8, 8), (1, 8, 8)]
    assert Scaled().to_config() == {"name": "scaled"} and repr(Scaled()) == "Scaled()"


@pytest.mark.parametrize(
    "cls, message",
    [
        (Strided, "'projection' boundary contract: P self-adjoint"),
        (Orthonormal, "'projection' boundary contract: f f\\^T = r I with r = d_\\(k\\+1\\)/d_k"),
        (Lossy, "'projection' boundary contract: f\\(g\\(y\\)\\) = y"),
        (Shrinks, "'identity' boundary contract: the shape must be kept"),
        (Sharpen, "'identity' boundary contract: decode of an identity-boundary transform"),
        (WrongShape, r"'renoise' boundary contract: encode gave \(1, 2, 2\) per sample"),
        (NoBoundary, "boundary must be one of projection, identity, renoise, got 'sideways'"),
    ],
)
def test_a_contract_violation_names_the_transform_and_the_property(cls, message):
    with pytest.raises(ValueError, match=rf"transforms\[0\] \({cls.name}\)(:| breaks) .*{message}"):
        process_with(cls)
    with pytest.raises(TransformContractError):
        from fdm_core.testing import verify_contract

        verify_contract(cls(), (1, 8, 8), "t")


def test_a_factory_that_builds_something_else_is_refused():
    registry = load_registry(load_plugins="")
    registry.add("transform", "thing", lambda: torch.nn.Identity(), "tests", "0")
    with pytest.raises(ValueError, match=r"transforms\[0\] \(thing\): .* built a Identity, not"):
        ProcessConfig.model_validate(
            {"resolution": 8, "transforms": ["thing"]}, context={"registry": registry}
        )


def test_a_transform_that_raises_on_a_batch_is_reported_with_the_shape():
    class Broken(Halve):
        name = "broken"

        def encode(self, x):
            return x.view(-1, 3)  # 2 * 64 is not a multiple of 3

    with pytest.raises(ValueError, match=r"broken\) failed on a batch of shape \(2, 1, 8, 8\)"):
        process_with(Broken)


class HalveWrongForBigBatches(Halve):
    """Right for the contract probe's batches (2 and 4), wrong above them (a batch-size bug)."""

    name = "halve_big"

    def encode(self, x):
        y = super().encode(x)
        return y if x.shape[0] <= 4 else y[..., :-1]


class HalveNaN(Halve):
    name = "halve_nan"

    def encode(self, x):
        y = super().encode(x)
        return y if x.shape[0] <= 4 else y * float("nan")


def test_a_shape_wrong_only_for_the_real_batch_size_names_the_transform():
    """Catches the process trusting out_shape after the batch-2 probe: the error came as a
    traceback from the loss, naming neither the transform nor where it comes from."""
    process = process_with(HalveWrongForBigBatches)
    assert process.stage_signal(torch.zeros(2, 1, 8, 8), 1).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"transforms\[0\] \(halve_big, from tests 0\)"
                       r" encoded a batch of 8 to per-sample shape \(1, 4, 3\)"):  # fmt: skip
        process.stage_signal(torch.zeros(8, 1, 8, 8), 1)


def test_non_finite_output_is_blamed_on_the_transform_before_training():
    """Catches a NaN transform reaching training, where the divergence message blames --lr."""
    process = process_with(HalveNaN)
    process.check_stage_signals(torch.zeros(2, 1, 8, 8))  # fine at batch 2
    with pytest.raises(ValueError, match=r"transforms\[0\] \(halve_nan.*NaN or infinite"):
        process.check_stage_signals(torch.zeros(8, 1, 8, 8))
    process.check_stage_signals(torch.full((8, 1, 8, 8), float("nan")))  # bad data: not blamed
