"""Fuzzing every registered transform with hypothesis (docs/design.md §10.1), through
`fdm_core.testing`'s fuzzer (`fuzz_transform`, the properties `fuzz_*`), the one a plugin's own
test suite runs too.

Fuzzed here: the built-ins and the example plugins (examples/fdm-haar and
examples/fdm-plugin-template, from their sources when they are not installed), each with its
recipe (fuzz_recipes.py). A third-party plugin installed next to fdm is fuzzed only when asked, with
``pytest --fuzz-plugins`` or ``FDM_FUZZ_PLUGINS=1`` (built from its default parameters, on the
shapes its `out_shape` takes), so installing someone's plugin cannot turn fdm's CI red. The
autoencoder transform runs on tiny random autoencoders (fdm's, and diffusers' when installed),
so nothing here needs trained weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import Phase, settings  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from fdm_core import (  # noqa: E402
    Boundary,
    ProcessConfig,
    Registry,
    Shape,
    SignalTransform,
    hookimpl,
    load_registry,
)
from fdm_core.registry import BUILTIN_DISTRIBUTIONS  # noqa: E402
from fdm_core.testing import (  # noqa: E402
    FUZZ_CHECKS,
    fuzz_any_shape,
    fuzz_bad_params,
    fuzz_bad_shapes,
    fuzz_malformed,
    fuzz_transform,
    fuzz_valid,
)

from .fuzz_recipes import RECIPES, Assets, make_assets  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The example plugins: distribution -> (package, its source folder)
EXAMPLES = {
    "fdm-haar": ("fdm_haar", ROOT / "examples" / "fdm-haar" / "src"),
    "fdm-grayscale": ("fdm_grayscale", ROOT / "examples" / "fdm-plugin-template" / "src"),
}
OURS = BUILTIN_DISTRIBUTIONS | EXAMPLES.keys()
OPTION, ENV = "--fuzz-plugins", "FDM_FUZZ_PLUGINS"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("fuzz-assets"))


# -- which transforms: ours always, an installed third-party plugin's when asked ----------------


def _import_example(package: str, src: Path) -> ModuleType:
    """The example's plugin module: the installed package, or else its source, imported without
    putting the source folder on sys.path (its build metadata would make it an installed
    plugin for every other test)."""
    if package not in sys.modules and importlib.util.find_spec(package) is None:
        init = src / package / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            package, init, submodule_search_locations=[str(init.parent)]
        )
        assert spec is not None and spec.loader is not None, f"no example package at {init}"
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.plugin")


def fuzz_registry() -> Registry:
    """The installed plugins, plus the example plugins from their sources when not installed."""
    registry = load_registry()
    loaded = {dist for _, dist, _ in registry.plugins}
    for dist, (package, src) in EXAMPLES.items():
        if dist not in loaded:
            plugin = _import_example(package, src)
            version = getattr(sys.modules[package], "__version__", "0")
            registry.register_plugin(plugin, dist, version)
    return registry


REGISTRY = fuzz_registry()


def asked_for_plugins(config: pytest.Config) -> bool:
    """`--fuzz-plugins` (tests/conftest.py) or FDM_FUZZ_PLUGINS set to a true value."""
    env = os.environ.get(ENV, "").strip().lower()
    return bool(config.getoption("fuzz_plugins", False)) or env not in ("", "0", "false", "no")


def fuzzed_names(registry: Registry, third_party: bool) -> Iterator[Any]:
    """A pytest param per registered transform: ours (the built-ins and the examples, by the
    distribution that registered it) fuzzed; a third-party plugin's skipped unless
    `third_party`, and one without a recipe skipped if it cannot be built from default
    parameters, saying why."""
    for name in registry.names("transform"):
        dist, reason = registry.get("transform", name).distribution, None
        if dist not in OURS and not third_party:
            reason = (
                f"transform {name!r} comes from the third-party plugin {dist}: fuzzed only "
                f"when asked ({OPTION} or {ENV}=1)"
            )
        elif name not in RECIPES:
            try:
                registry.build("transform", {"name": name})
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                reason = (
                    f"transform {name!r} ({dist}) cannot be built from default parameters "
                    f"({type(exc).__name__}: {first}); add a recipe to RECIPES in {__name__}"
                )
        yield pytest.param(name, marks=pytest.mark.skip(reason=reason) if reason else ())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "name" in metafunc.fixturenames:
        third_party = asked_for_plugins(metafunc.config)
        metafunc.parametrize("name", list(fuzzed_names(REGISTRY, third_party)))


def _fuzz(check: Callable[..., None], name: str, assets: Assets) -> None:
    recipe = RECIPES[name](assets) if name in RECIPES else None
    fuzz_transform(name, recipe, registry=REGISTRY, checks=[check])


def test_every_builtin_and_example_transform_is_fuzzed() -> None:
    names = {"identity", "downsample", "blur", "autoencoder", "haar", "grayscale"}
    assert names <= set(REGISTRY.names("transform")) and names == RECIPES.keys()
    assert {REGISTRY.get("transform", name).distribution for name in names} <= OURS


def test_valid_parameters_and_shapes_work(name: str, assets: Assets) -> None:
    _fuzz(fuzz_valid, name, assets)


def test_any_shape_is_taken_or_refused(name: str, assets: Assets) -> None:
    _fuzz(fuzz_any_shape, name, assets)


def test_malformed_shapes_are_refused(name: str, assets: Assets) -> None:
    _fuzz(fuzz_malformed, name, assets)


def test_invalid_sizes_and_channels_are_refused(name: str, assets: Assets) -> None:
    _fuzz(fuzz_bad_shapes, name, assets)


def test_invalid_parameters_are_refused(name: str, assets: Assets) -> None:
    _fuzz(fuzz_bad_params, name, assets)


@pytest.mark.parametrize("sigma", [math.inf, math.nan, 1e308])
def test_a_non_finite_blur_radius_is_a_config_error(sigma: float) -> None:
    """sigma = inf (1e400 in JSON) or 1e308 (3 sigma overflows) raised OverflowError from
    math.ceil, which escaped ProcessConfig's validation."""
    with pytest.raises(ValidationError, match=r"transforms\[0\] \(blur\): .*sigma"):
        ProcessConfig(resolution=16, transforms=[{"name": "blur", "sigma": sigma}])


# -- a plugin's transform is fuzzed the same way, and a sloppy one fails -------------------------


class Flip(SignalTransform):
    """A plugin's transform that checks its input with the base class's helpers."""

    name = "fuzz-flip"
    boundary = Boundary.RENOISE

    def out_shape(self, shape: Shape) -> Shape:
        return self.validate_shape(shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_batch(x)
        return x.flip(-1)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        self.validate_batch(y)
        return y.flip(-1)


class SloppyPool(SignalTransform):
    """Mean pooling by 2 that checks nothing: odd sizes come back one pixel short."""

    name = "fuzz-sloppy-pool"
    boundary = Boundary.RENOISE

    def out_shape(self, shape: Shape) -> Shape:
        channels, height, width = shape
        return (channels, height // 2, width // 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return y.repeat_interleave(2, -2).repeat_interleave(2, -1)


def _plugin_registry(distribution: str = "fdmtest-fuzz") -> Registry:
    class Plugin:
        @hookimpl
        def fdm_register_transforms(self, register: Callable[..., None]) -> None:
            register(Flip.name, Flip)
            register(SloppyPool.name, SloppyPool)

    registry = load_registry(load_plugins="")
    registry.register_plugin(Plugin(), distribution, "1.0")
    return registry


@pytest.mark.parametrize("check", FUZZ_CHECKS, ids=lambda check: check.__name__)
def test_a_plugin_transform_is_fuzzed_like_the_builtins(check: Callable[..., None]) -> None:
    fuzz = settings(max_examples=10, deadline=None, database=None)
    fuzz_transform(Flip.name, registry=_plugin_registry(), checks=[check], settings=fuzz)


@pytest.mark.parametrize("check", [fuzz_any_shape, fuzz_malformed], ids=lambda c: c.__name__)
def test_the_fuzzer_catches_a_transform_that_does_not_check_shapes(
    check: Callable[..., None],
) -> None:
    fuzz = settings(
        max_examples=50,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        phases=[Phase.generate],
    )
    with pytest.raises(AssertionError):
        fuzz_transform(SloppyPool.name, registry=_plugin_registry(), checks=[check], settings=fuzz)


class FakeConfig:
    def __init__(self, option: bool) -> None:
        self.option = option

    def getoption(self, name: str, default: object = None) -> object:
        return self.option if name == "fuzz_plugins" else default


def _skip_reasons(registry: Registry, third_party: bool) -> dict[str, str | None]:
    reasons = {}
    for param in fuzzed_names(registry, third_party):
        marks = [m for m in param.marks if m.name == "skip"]
        reasons[param.values[0]] = marks[0].kwargs["reason"] if marks else None
    return reasons


def test_a_third_party_plugin_is_fuzzed_only_when_asked() -> None:
    """Ours by the distribution that registered the transform: built-ins and the examples are
    fuzzed, someone else's plugin is skipped (saying how to ask) unless asked."""
    registry = _plugin_registry("someones-plugin")
    for dist, (package, src) in EXAMPLES.items():
        registry.register_plugin(_import_example(package, src), dist, "0.1.0")
    ours = {"identity", "downsample", "blur", "autoencoder", "haar", "grayscale"}
    theirs = {Flip.name, SloppyPool.name}
    skipped = _skip_reasons(registry, third_party=False)
    assert {n for n, reason in skipped.items() if reason is None} == ours
    for name in theirs:
        assert "someones-plugin" in skipped[name] and f"{OPTION} or {ENV}=1" in skipped[name]
    asked = _skip_reasons(registry, third_party=True)
    assert {n for n, reason in asked.items() if reason is None} == ours | theirs


@pytest.mark.parametrize(
    ("option", "env", "asked"),
    [
        (False, None, False),
        (False, "", False),
        (False, "0", False),
        (False, "false", False),
        (True, None, True),
        (False, "1", True),
        (False, "yes", True),
    ],
)
def test_asking_for_plugins(
    monkeypatch: pytest.MonkeyPatch, option: bool, env: str | None, asked: bool
) -> None:
    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    assert asked_for_plugins(FakeConfig(option)) is asked  # type: ignore[arg-type]
