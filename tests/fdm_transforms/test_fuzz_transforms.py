"""Fuzzing every registered transform with hypothesis (docs/design.md §10.1).

The transforms come from the plugin registry, so a plugin's transform is fuzzed too: with its
recipe below, or else built from its default parameters. Valid parameters and shapes must work
(`out_shape` agrees with `encode`, `decode(encode(x))` has the input's shape, outputs are finite,
batches of 1 to 3); invalid shapes must raise a one-line ValueError naming the shape, invalid
parameters a ValueError naming the parameter: never a torch error or a wrongly shaped result.
The autoencoder transform runs on tiny random autoencoders (fdm's, and diffusers' when
installed), so nothing here needs trained weights.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
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
from fdm_models import Autoencoder, AutoencoderConfig, save_autoencoder  # noqa: E402

MAX_CHANNELS = 4
MAX_SIZE = 64
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REGISTRY = load_registry()
Params = dict[str, Any]


@dataclass(frozen=True)
class Assets:
    """Folders the recipes build transforms from (module fixture `assets`)."""

    autoencoders: tuple[str, ...]  # tiny random autoencoders
    missing: str  # a path that does not exist
    empty: str  # a folder without config.json
    not_autoencoder: str  # config.json of another model
    bad_json: str  # config.json that is not JSON


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    root = tmp_path_factory.mktemp("fuzz-assets")
    torch.manual_seed(0)
    folders = []
    for i, config in enumerate(
        [
            AutoencoderConfig(resolution=8, factor=2, latent_channels=2, base_channels=8),
            AutoencoderConfig(
                in_channels=3,
                resolution=16,
                factor=4,
                latent_channels=3,
                base_channels=8,
                bottleneck="vq",
                codebook_size=16,
            ),
        ]
    ):
        folders.append(str(save_autoencoder(Autoencoder(config), root / f"fdm-{i}")))
    if importlib.util.find_spec("diffusers") is not None:
        import diffusers

        tiny = diffusers.AutoencoderTiny(
            in_channels=2,
            out_channels=2,
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=2,
        )
        tiny.save_pretrained(root / "tiny")
        folders.append(str(root / "tiny"))
    for name, text in (("other", json.dumps({"_class_name": "UNet"})), ("bad-json", "{")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "empty").mkdir()
    return Assets(
        tuple(folders),
        str(root / "missing"),
        str(root / "empty"),
        str(root / "other"),
        str(root / "bad-json"),
    )


# -- recipes: valid and invalid parameters and shapes per transform ------------------------------


def sizes(multiple: int = 1, minimum: int = 1) -> st.SearchStrategy[int]:
    """Sizes up to MAX_SIZE that are multiples of `multiple` and at least `minimum`."""
    return st.integers(-(-minimum // multiple), MAX_SIZE // multiple).map(lambda n: n * multiple)


def shapes(
    channels: st.SearchStrategy[int] | None = None, multiple: int = 1, minimum: int = 1
) -> st.SearchStrategy[Shape]:
    return st.tuples(
        st.integers(1, MAX_CHANNELS) if channels is None else channels,
        sizes(multiple, minimum),
        sizes(multiple, minimum),
    )


Bad = list[tuple[Shape, tuple[str, ...]]]  # an invalid shape and what its error must name


@dataclass(frozen=True)
class Recipe:
    """How to fuzz one transform. `shape` and the `bad_*` lists depend on the built transform;
    `bad_shapes` derives invalid inputs from a valid shape, `bad_latents` invalid decode inputs
    from the valid `out_shape`."""

    params: Callable[[Assets], st.SearchStrategy[Params]]
    shape: Callable[[SignalTransform], st.SearchStrategy[Shape]]
    bad_params: Callable[[Assets], st.SearchStrategy[tuple[Params, str]]]
    bad_shapes: Callable[[SignalTransform, Shape], Bad] = lambda transform, shape: []
    bad_latents: Callable[[SignalTransform, Shape], Bad] = lambda transform, out: []


def _unknown_key(name: str) -> st.SearchStrategy[tuple[Params, str]]:
    return st.just(({name: 2}, name))


def _downsample_bad_params(assets: Assets) -> st.SearchStrategy[tuple[Params, str]]:
    return st.one_of(
        st.integers(-(10**6), 1),
        st.floats(-100, 100).filter(lambda v: not v.is_integer()),
        st.sampled_from([math.nan, math.inf, "two", None]),
    ).map(lambda v: ({"factor": v}, "factor")) | _unknown_key("sigma")


def _downsample_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    factor = str(transform.params.factor)
    return [((c, h + 1, w), (factor, f"{h + 1}x{w}")), ((c, h, w + 1), (factor, f"{h}x{w + 1}"))]


def _blur_params(assets: Assets) -> st.SearchStrategy[Params]:
    return st.one_of(
        st.floats(0.0, 4.0).map(lambda s: {"sigma": s}),
        st.floats(0.0, 4.0).map(lambda s: {"kind": "gaussian", "sigma": s}),
        st.integers(0, 4).map(lambda n: {"kind": "uniform", "size": 2 * n + 1}),
    )


def _blur_bad_params(assets: Assets) -> st.SearchStrategy[tuple[Params, str]]:
    sigmas = st.floats(max_value=-1e-300) | st.sampled_from([math.nan, math.inf, 1e308, "wide"])
    uniform = st.integers(-5, 0) | st.integers(1, 10).map(lambda n: 2 * n)
    return st.one_of(
        sigmas.map(lambda s: ({"sigma": s}, "sigma")),
        uniform.map(lambda n: ({"kind": "uniform", "size": n}, "size")),
        st.just(({"kind": "median"}, "kind")),
        _unknown_key("factor"),
    )


def _blur_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    r = transform.params.radius
    if r == 0:
        return []
    return [((c, r, w), (f"radius {r}", f"{r}x{w}")), ((c, h, r), (f"radius {r}", f"{h}x{r}"))]


def _autoencoder_shapes(transform: SignalTransform) -> st.SearchStrategy[Shape]:
    """Multiples of the factor; an fdm autoencoder (factor known) needs a 2x2 latent."""
    net = transform.network
    factor = MAX_SIZE // transform.out_shape((net.in_channels, MAX_SIZE, MAX_SIZE))[1]
    minimum = factor if net.factor is None else 2 * factor
    return shapes(st.just(net.in_channels), multiple=factor, minimum=minimum)


def _autoencoder_bad_params(assets: Assets) -> st.SearchStrategy[tuple[Params, str]]:
    return st.sampled_from(
        [
            ({"path": assets.missing}, assets.missing),
            ({"path": assets.empty}, "config.json"),
            ({"path": assets.not_autoencoder}, "is not an autoencoder"),
            ({"path": assets.bad_json}, "cannot be read as JSON"),
            ({}, "path"),
            ({"path": assets.autoencoders[0], "factor": 2}, "factor"),
        ]
    )


def _autoencoder_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    bad = [
        ((c + 1, h, w), (f"{c}-channel", f"got {c + 1}")),
        ((c, h + 1, w), (f"{h + 1}x{w}",)),
        ((c, h, w + 1), (f"{h}x{w + 1}",)),
    ]
    if (factor := transform.network.factor) is not None:  # a 1x1 latent
        bad.append(((c, factor, w), (f"at least {2 * factor}x{2 * factor}", f"{factor}x{w}")))
    return bad


def _autoencoder_bad_latents(transform: SignalTransform, out: Shape) -> Bad:
    c, h, w = out
    bad = [((c + 1, h, w), (f"{c}-channel", f"got {c + 1}"))]
    if transform.network.factor is not None:
        bad.append(((c, h, 1), ("at least 2x2", f"{h}x1")))
    return bad


RECIPES = {
    "identity": Recipe(
        params=lambda assets: st.just({}),
        shape=lambda transform: shapes(),
        bad_params=lambda assets: _unknown_key("factor") | _unknown_key("sigma"),
    ),
    "downsample": Recipe(
        params=lambda assets: st.integers(2, 8).map(lambda f: {"factor": f}),
        shape=lambda transform: shapes(multiple=transform.params.factor),
        bad_params=_downsample_bad_params,
        bad_shapes=_downsample_bad_shapes,
    ),
    "blur": Recipe(
        params=_blur_params,
        shape=lambda transform: shapes(minimum=transform.params.radius + 1),
        bad_params=_blur_bad_params,
        bad_shapes=_blur_bad_shapes,
    ),
    "autoencoder": Recipe(
        params=lambda assets: st.sampled_from(assets.autoencoders).map(lambda p: {"path": p}),
        shape=_autoencoder_shapes,
        bad_params=_autoencoder_bad_params,
        bad_shapes=_autoencoder_bad_shapes,
        bad_latents=_autoencoder_bad_latents,
    ),
}
# A plugin's transform without a recipe: default parameters, any shape its out_shape takes.
DEFAULT = Recipe(
    params=lambda assets: st.just({}),
    shape=lambda transform: shapes(),
    bad_params=lambda assets: _unknown_key("no_such_parameter"),
)


# -- the properties -------------------------------------------------------------------------------


def refused(
    call: Callable[[Any], object], arg: object, *needles: str, one_line: bool = True
) -> None:
    """`call(arg)` must raise a ValueError whose message names every needle (on one line)."""
    try:
        result = call(arg)
    except Exception as exc:
        message = str(exc)
        assert isinstance(exc, ValueError), f"{type(exc).__name__} instead of ValueError: {exc}"
        assert not one_line or "\n" not in message, f"the message is not one line: {message!r}"
        missing = [needle for needle in needles if needle not in message]
        assert not missing, f"the message does not name {missing}: {message!r}"
        return
    shown = tuple(result.shape) if isinstance(result, torch.Tensor) else result
    raise AssertionError(f"accepted, giving {shown!r}; expected a ValueError naming {needles}")


def accepts(transform: SignalTransform, shape: Shape) -> bool:
    try:
        transform.out_shape(shape)
    except ValueError:
        return False
    return True


def randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def works(transform: SignalTransform, shape: Shape, batch: int, seed: int) -> Shape:
    """`shape` is taken: out_shape, encode and decode agree, outputs finite. Returns out_shape."""
    out = tuple(transform.out_shape(shape))
    assert len(out) == 3 and all(isinstance(d, int) and d > 0 for d in out), f"out_shape {out}"
    x = randn((batch, *shape), seed)
    y = transform.encode(x)
    assert tuple(y.shape) == (batch, *out), f"encode gave {tuple(y.shape)}, out_shape says {out}"
    assert y.dtype == x.dtype and bool(torch.isfinite(y).all()), "encode: dtype or non-finite"
    back = transform.decode(y)
    assert tuple(back.shape) == tuple(x.shape), f"decode gave {tuple(back.shape)} for {shape}"
    assert back.dtype == x.dtype and bool(torch.isfinite(back).all()), "decode: dtype/non-finite"
    if transform.boundary == Boundary.IDENTITY:
        assert out == tuple(shape), f"an identity-boundary transform changed {shape} to {out}"
    return out


def build(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> SignalTransform:
    params = data.draw(RECIPES.get(name, DEFAULT).params(assets), label="params")
    return registry.build("transform", {"name": name, **params})


def valid_shape(transform: SignalTransform, name: str, data: st.DataObject) -> Shape:
    shape = data.draw(RECIPES.get(name, DEFAULT).shape(transform), label="shape")
    assume(name in RECIPES or accepts(transform, shape))
    return shape


def check_valid(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> None:
    """Random valid parameters, shapes and batch sizes work, and survive `to_config`."""
    transform = build(registry, name, assets, data)
    shape = valid_shape(transform, name, data)
    batch, seed = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(0, 2**31))
    out = works(transform, shape, batch, seed)
    assert tuple(registry.build("transform", transform.to_config()).out_shape(shape)) == out


def check_any_shape(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> None:
    """Any positive shape is either taken (and works) or refused by out_shape and encode."""
    transform = build(registry, name, assets, data)
    shape = data.draw(
        st.tuples(
            st.integers(1, MAX_CHANNELS + 1), st.integers(1, MAX_SIZE), st.integers(1, MAX_SIZE)
        ),
        label="shape",
    )
    batch, seed = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(0, 2**31))
    if accepts(transform, shape):
        works(transform, shape, batch, seed)
    else:
        refused(transform.out_shape, shape)
        refused(transform.encode, randn((batch, *shape), seed))


def check_malformed(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> None:
    """Wrong numbers of dimensions and sizes <= 0 are refused, naming the shape."""
    transform = build(registry, name, assets, data)
    shape = valid_shape(transform, name, data)
    out = tuple(transform.out_shape(shape))
    batch = data.draw(st.integers(1, 3), label="batch")
    if data.draw(st.booleans(), label="wrong number of dimensions"):
        c, h, w = shape
        bad = data.draw(st.sampled_from([(), (c,), (h, w), (1, c, h, w), (c, h, w, 1)]))
        refused(transform.out_shape, bad, str(bad))
        for tensor in (shape, (batch, c, h * w), (batch, *shape, 1), (batch, c * h * w)):
            x = torch.zeros(tensor)
            refused(transform.encode, x, str(tuple(x.shape)))
        for tensor in (out, (batch, *out, 1)):
            y = torch.zeros(tensor)
            refused(transform.decode, y, str(tuple(y.shape)))
    else:
        i = data.draw(st.integers(0, 2), label="dimension")
        size = data.draw(st.integers(-MAX_SIZE, 0), label="size")
        bad = tuple(size if j == i else d for j, d in enumerate(shape))
        refused(transform.out_shape, bad, str(bad))
        x = torch.zeros(batch, *(max(d, 0) for d in bad))
        refused(transform.encode, x, str(tuple(x.shape)))
        y = torch.zeros(batch, *(0 if j == i else d for j, d in enumerate(out)))
        refused(transform.decode, y, str(tuple(y.shape)))


def check_bad_shapes(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> None:
    """The recipe's invalid sizes and channel counts are refused, naming what is wrong."""
    recipe = RECIPES.get(name, DEFAULT)
    transform = build(registry, name, assets, data)
    shape = valid_shape(transform, name, data)
    batch, seed = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(0, 2**31))
    for bad, needles in recipe.bad_shapes(transform, shape):
        refused(transform.out_shape, bad, *needles)
        refused(transform.encode, randn((batch, *bad), seed), *needles)
    for bad, needles in recipe.bad_latents(transform, tuple(transform.out_shape(shape))):
        refused(transform.decode, randn((batch, *bad), seed), *needles)


def check_bad_params(registry: Registry, name: str, assets: Assets, data: st.DataObject) -> None:
    """Invalid parameters are refused by the factory with a ValueError naming the parameter
    (pydantic's ValidationError spans lines: fdm_core.config joins them into one)."""
    params, needle = data.draw(RECIPES.get(name, DEFAULT).bad_params(assets), label="params")
    build_spec = functools.partial(registry.build, "transform")
    refused(build_spec, {"name": name, **params}, needle, one_line=False)


CHECKS = (check_valid, check_any_shape, check_malformed, check_bad_shapes, check_bad_params)


def _names() -> list[Any]:
    """Every registered transform; one without a recipe that cannot be built from default
    parameters is skipped, saying so."""
    names = []
    for name in REGISTRY.names("transform"):
        reason = None
        if name not in RECIPES:
            try:
                REGISTRY.build("transform", {"name": name})
            except Exception as exc:
                dist = REGISTRY.get("transform", name).distribution
                first = str(exc).splitlines()[0] if str(exc) else ""
                reason = (
                    f"transform {name!r} ({dist}) cannot be built from default parameters "
                    f"({type(exc).__name__}: {first}); add a recipe to RECIPES in {__name__}"
                )
        names.append(pytest.param(name, marks=pytest.mark.skip(reason=reason) if reason else ()))
    return names


NAMES = _names()


def test_every_builtin_transform_is_fuzzed() -> None:
    assert {"identity", "downsample", "blur", "autoencoder"} <= set(REGISTRY.names("transform"))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_valid_parameters_and_shapes_work(name: str, assets: Assets, data: st.DataObject) -> None:
    check_valid(REGISTRY, name, assets, data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_any_shape_is_taken_or_refused(name: str, assets: Assets, data: st.DataObject) -> None:
    check_any_shape(REGISTRY, name, assets, data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_malformed_shapes_are_refused(name: str, assets: Assets, data: st.DataObject) -> None:
    check_malformed(REGISTRY, name, assets, data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_invalid_sizes_and_channels_are_refused(
    name: str, assets: Assets, data: st.DataObject
) -> None:
    check_bad_shapes(REGISTRY, name, assets, data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_invalid_parameters_are_refused(name: str, assets: Assets, data: st.DataObject) -> None:
    check_bad_params(REGISTRY, name, assets, data)


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


def _plugin_registry() -> Registry:
    class Plugin:
        @hookimpl
        def fdm_register_transforms(self, register: Callable[..., None]) -> None:
            register(Flip.name, Flip)
            register(SloppyPool.name, SloppyPool)

    registry = load_registry(load_plugins="")
    registry.register_plugin(Plugin(), "fdmtest-fuzz", "1.0")
    return registry


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_a_plugin_transform_is_fuzzed_like_the_builtins(check: Callable, assets: Assets) -> None:
    registry = _plugin_registry()

    @settings(max_examples=10, deadline=None, database=None)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        check(registry, Flip.name, assets, data)

    fuzz()


@pytest.mark.parametrize("check", [check_any_shape, check_malformed], ids=lambda c: c.__name__)
def test_the_fuzzer_catches_a_transform_that_does_not_check_shapes(
    check: Callable, assets: Assets
) -> None:
    registry = _plugin_registry()

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        phases=[Phase.generate],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        check(registry, SloppyPool.name, assets, data)

    with pytest.raises(AssertionError):
        fuzz()
