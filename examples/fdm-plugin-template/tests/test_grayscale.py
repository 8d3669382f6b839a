"""fdm's conformance suite and fuzzer, plus what this transform is meant to compute (run with
the plugin installed: `pip install -e '.[test]' && pytest`; the fuzzer needs hypothesis, which
the `test` extra brings with fdm-core's `fuzz` extra)."""

from __future__ import annotations

import pytest
import torch
from fdm_grayscale import Grayscale
from hypothesis import strategies as st

from fdm_core import FDMProcess, ProcessConfig, reset_registry
from fdm_core.testing import FuzzRecipe, TransformConformance, TransformFuzzing


class TestGrayscaleConformance(TransformConformance):
    input_shape = (3, 16, 16)  # the suite also checks that the UNet can train 3x16x16 -> 1x16x16

    def make_transform(self) -> Grayscale:
        return Grayscale(channels=3)


class TestGrayscaleFuzzing(TransformFuzzing):
    """hypothesis draws the parameters below, the shapes `out_shape` takes and batches of 1-3."""

    transform_name = "grayscale"  # the name plugin.py registers

    def make_recipe(self) -> FuzzRecipe:
        return FuzzRecipe(
            params=st.integers(2, 4).map(lambda n: {"channels": n}),  # colour channels in
            bad_params=st.integers(-1, 1).map(lambda n: ({"channels": n}, "channels")),
        )


def test_encode_is_the_channel_mean_and_decode_copies_it_back() -> None:
    x = torch.stack([torch.zeros(4, 4), torch.ones(4, 4), 2 * torch.ones(4, 4)])[None]
    y = Grayscale().encode(x)
    assert y.shape == (1, 1, 4, 4) and torch.equal(y, torch.ones(1, 1, 4, 4))
    assert torch.equal(Grayscale().decode(y), torch.ones(1, 3, 4, 4))


def test_a_stage_with_another_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="grayscale takes 3 channels"):
        Grayscale(channels=3).out_shape((4, 8, 8))


def test_in_a_process_after_the_colour_stage() -> None:
    """RGB 32x32 -> gray 32x32 -> gray 16x16, built through the registry (entry point)."""
    reset_registry()
    config = ProcessConfig(
        channels=3, resolution=32, transforms=[{"name": "grayscale"}, {"name": "downsample"}]
    )
    process = FDMProcess(config)
    assert process.stage_shapes == [(3, 32, 32), (1, 32, 32), (1, 16, 16)]
