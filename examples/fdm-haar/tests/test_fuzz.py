"""fdm's fuzzer on haar: hypothesis draws levels, shapes and batch sizes (run with fdm-haar
installed; the `test` extra pulls in fdm-core's `fuzz` extra, which brings hypothesis)."""

from __future__ import annotations

from hypothesis import strategies as st

from fdm_core import Shape
from fdm_core.testing import FuzzRecipe, TransformFuzzing
from fdm_haar import HaarLowPass


def bad_shapes(transform: HaarLowPass, shape: Shape) -> list[tuple[Shape, tuple[str, ...]]]:
    """Invalid shapes next to a valid one, each with the texts its ValueError must contain."""
    channels, height, width = shape
    rule = f"multiples of 2**levels = {2**transform.params.levels}"
    return [
        ((channels, height + 1, width), (rule, f"{height + 1}x{width}")),
        ((channels, height, width + 1), (rule, f"{height}x{width + 1}")),
    ]


class TestHaarFuzzing(TransformFuzzing):
    transform_name = "haar"  # the name plugin.py registers

    def make_recipe(self) -> FuzzRecipe:
        return FuzzRecipe(
            params=st.integers(1, 3).map(lambda levels: {"levels": levels}),
            bad_params=st.integers(-3, 0).map(lambda levels: ({"levels": levels}, "levels")),
            bad_shapes=bad_shapes,
        )
