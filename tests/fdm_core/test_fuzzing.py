"""fdm_core.testing's fuzzer (fdm_core.fuzzing, issue 22): valid shapes are drawn from what a
transform accepts, not filtered, so a strict plugin transform (sides divisible by 4) is fuzzed
without hypothesis's FailedHealthCheck; the mixin a plugin's suite subclasses runs; hypothesis
is an optional extra, imported only when the fuzzer is used."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck

from fdm_core import (
    Boundary,
    Registry,
    Shape,
    SignalTransform,
    TransformParams,
    hookimpl,
    load_registry,
)
from fdm_core.testing import (
    FUZZ_CHECKS,
    FuzzRecipe,
    TransformFuzzing,
    accepted_shapes,
    fuzz_any_shape,
    fuzz_bad_params,
    fuzz_bad_shapes,
    fuzz_transform,
    fuzz_valid,
    shape_strategy,
)


class Quarter(SignalTransform):
    """A plugin's 4x4 mean pooling: it takes only sides divisible by 4 (1 shape in 16)."""

    name = "quarter"
    boundary = Boundary.PROJECTION

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = self.validate_shape(shape)
        if height % 4 or width % 4:
            raise ValueError(f"quarter needs sides divisible by 4, got {height}x{width}")
        return (channels, height // 4, width // 4)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        return F.avg_pool2d(x, 4)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return y.repeat_interleave(4, -2).repeat_interleave(4, -1)


class Huge(Quarter):
    """Takes nothing up to 64 x 64."""

    name = "huge"

    def out_shape(self, shape: Shape) -> Shape:
        _, height, width = self.validate_shape(shape)
        if min(height, width) < 128:
            raise ValueError(f"huge needs sides of at least 128, got {height}x{width}")
        return super().out_shape(shape)


def _registry() -> Registry:
    class Plugin:
        @hookimpl
        def fdm_register_transforms(self, register: Callable[..., None]) -> None:
            register(Quarter.name, Quarter)
            register(Huge.name, Huge)

    registry = load_registry(load_plugins="")
    registry.register_plugin(Plugin(), "fdmtest-quarter", "1.0")
    return registry


def test_a_transform_that_needs_sides_divisible_by_4_is_fuzzed_with_health_checks_on() -> None:
    """Every property, the filter health checks on (the default settings suppress only
    too_slow). Drawing any shape and assume()-ing it is accepted failed here with
    FailedHealthCheck (next test)."""
    fuzz_transform(Quarter.name, registry=_registry())


def test_filtering_the_same_shapes_fails_the_health_check() -> None:
    """The negative control: the old way, a shape of any size filtered by assume(accepts),
    throws away 15 draws in 16 and hypothesis gives up on the test."""
    quarter = Quarter()

    def accepts(shape: Shape) -> bool:
        try:
            quarter.out_shape(shape)
        except ValueError:
            return False
        return True

    @settings(max_examples=30, deadline=None, database=None, derandomize=True)
    @given(data=st.data())
    def filtered(data: st.DataObject) -> None:
        assume(accepts(data.draw(shape_strategy())))

    with pytest.raises(FailedHealthCheck):
        filtered()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(shape=accepted_shapes(Quarter()))
def test_accepted_shapes_are_the_shapes_out_shape_takes(shape: Shape) -> None:
    c, h, w = shape
    assert 1 <= c <= 4 and 4 <= h <= 64 and 4 <= w <= 64 and h % 4 == 0 and w % 4 == 0


def test_accepted_shapes_cover_the_bounds_and_shrink_to_the_smallest() -> None:
    strategy = accepted_shapes(Quarter())
    find_ = settings(database=None, max_examples=2000)
    assert find(strategy, lambda s: True, settings=find_) == (1, 4, 4)
    assert find(strategy, lambda s: s[0] == 4 and s[1] == 64, settings=find_)[:2] == (4, 64)
    bigger = accepted_shapes(Quarter(), max_channels=1, max_size=128)
    assert find(bigger, lambda s: s[2] > 64, settings=find_)[2] % 4 == 0  # NoSuchExample if none


def test_a_transform_that_takes_no_shape_in_the_bounds_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"takes no shape .* H, W <= 64: give FuzzRecipe\(shapes"):
        accepted_shapes(Huge())
    recipe = FuzzRecipe(max_size=128, max_channels=1)
    fuzz_transform(Huge.name, recipe, registry=_registry(), checks=[fuzz_valid])


def test_a_recipe_whose_valid_shape_is_refused_fails() -> None:
    """A recipe's shape strategy is checked, not trusted: sides of any size for Quarter."""
    recipe = FuzzRecipe(shapes=lambda transform: shape_strategy(multiple=2))
    fuzz, registry = settings(max_examples=30, deadline=None, database=None), _registry()
    with pytest.raises(AssertionError, match="out_shape refuses the recipe's valid shape"):
        fuzz_transform(Quarter.name, recipe, registry=registry, checks=[fuzz_valid], settings=fuzz)


class FactorParams(TransformParams):
    factor: int = 4


class Forgetful(Quarter):
    """Pools by `factor`, but its to_config forgets the factor: the rebuild pools by 4."""

    name = "forgetful"
    Params = FactorParams

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = self.validate_shape(shape)
        f = self.params.factor
        if h % f or w % f:
            raise ValueError(f"forgetful needs sides divisible by {f}, got {h}x{w}")
        return (c, h // f, w // f)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.out_shape(self.validate_batch(x))
        return F.avg_pool2d(x, self.params.factor)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        f = self.params.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name}


class Lenient(Quarter):
    """Takes any parameter and ignores it."""

    name = "lenient"

    def __init__(self, **params: Any) -> None:
        super().__init__()


class Wordy(Quarter):
    """Refuses odd sides with a TypeError, sides not divisible by 4 on two lines."""

    name = "wordy"

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = self.validate_shape(shape)
        if h % 2 or w % 2:
            raise TypeError(f"odd side in {h}x{w}")
        if h % 4 or w % 4:
            raise ValueError(f"wordy needs sides divisible by 4,\ngot {h}x{w}")
        return (c, h // 4, w // 4)


def _wrong_needle(transform: SignalTransform, shape: Shape) -> list[tuple[Shape, tuple[str, ...]]]:
    c, h, w = shape
    return [((c, h + 1, w), ("divisible by 8",))]


@pytest.mark.parametrize(
    ("name", "recipe", "check", "message"),
    [
        ("forgetful", FuzzRecipe(params=st.just({"factor": 2})), fuzz_valid, "rebuild refuses"),
        ("forgetful", FuzzRecipe(params=st.just({"factor": 8})), fuzz_valid, "rebuild has out_sh"),
        ("quarter", FuzzRecipe(bad_shapes=_wrong_needle), fuzz_bad_shapes, "does not name"),
        ("lenient", FuzzRecipe(), fuzz_bad_params, "accepted, giving"),
        ("wordy", FuzzRecipe(), fuzz_any_shape, "instead of ValueError|not one line"),
    ],
    ids=[
        "to_config-refuses",
        "to_config-out_shape",
        "bad-shape-message",
        "bad-params-accepted",
        "error-kind-and-lines",
    ],
)
def test_the_fuzzer_catches_each_breach(
    name: str, recipe: FuzzRecipe, check: Callable[..., None], message: str
) -> None:
    """Negative controls: each transform (or recipe) breaks one property, and its check fails."""
    registry = load_registry(load_plugins="")
    registry.add("transform", name, {c.name: c for c in (Forgetful, Lenient, Wordy, Quarter)}[name],
                 "fdmtest-breaches", "1.0")  # fmt: skip
    fuzz = settings(max_examples=50, deadline=None, database=None, report_multiple_bugs=False)
    with pytest.raises(AssertionError, match=message):
        fuzz_transform(name, recipe, registry=registry, checks=[check], settings=fuzz)


class TestQuarterFuzzing(TransformFuzzing):
    """The mixin, as a plugin's own test module uses it (there the plugin is installed and the
    default registry finds it; here the test registers it)."""

    transform_name = Quarter.name
    fuzz_settings = settings(max_examples=10, deadline=None, database=None)

    def make_registry(self) -> Registry:
        return _registry()


def test_the_mixin_needs_a_transform_name() -> None:
    with pytest.raises(NotImplementedError, match="transform_name"):
        TransformFuzzing().test_valid_parameters_and_shapes_work()


def test_hypothesis_is_optional_and_loaded_only_by_the_fuzzer() -> None:
    """fdm_core and its conformance suite import without hypothesis; the fuzzer's names then
    raise one ImportError naming the extra."""
    code = "\n".join(
        [
            "import sys",
            "import fdm_core, fdm_core.testing",
            "assert 'hypothesis' not in sys.modules, 'fdm_core.testing imported hypothesis'",
            "sys.modules['hypothesis'] = None  # as if not installed",
            "from fdm_core.testing import TransformConformance, check_transform",
            "try:",
            "    from fdm_core.testing import fuzz_transform",
            "except ImportError as exc:",
            "    print(exc)",
            "else:",
            "    raise SystemExit('the fuzzer imported without hypothesis')",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'needs hypothesis, an optional dependency of fdm-core: pip install "fdm-core[fuzz]"' in (
        done.stdout
    )


def test_the_plugin_tutorial_names_every_fuzz_test_and_check() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    tests = [name for name in vars(TransformFuzzing) if name.startswith("test_")]
    assert len(tests) == len(FUZZ_CHECKS) == 5
    for name in [*tests, *(check.__name__ for check in FUZZ_CHECKS), "fdm-core[fuzz]"]:
        assert f"`{name}`" in text or f'"{name}"' in text, f"docs/plugins.md does not name {name}"
