"""Fuzzing a registered `SignalTransform` with hypothesis: the shape and parameter contract of
docs/design.md §10.1 on random parameters, shapes and batch sizes, for any transform, built-in
or third-party.

Needs hypothesis, an optional dependency (``pip install "fdm-core[fuzz]"``); `fdm_core.testing`
imports this module only when one of its names is used. As a pytest mixin::

    from fdm_core.testing import TransformFuzzing

    class TestMyTransformFuzzing(TransformFuzzing):
        transform_name = "my-transform"  # the name the plugin's hook registers

or directly: ``fuzz_transform("my-transform")`` raises on the first broken property, with
hypothesis's smallest failing example. The properties (`FUZZ_CHECKS`, one hypothesis example
each): valid parameters and shapes work (`fuzz_valid`), any positive shape is taken or refused
(`fuzz_any_shape`), malformed shapes are refused (`fuzz_malformed`), the recipe's invalid shapes
and parameters are refused naming what is wrong (`fuzz_bad_shapes`, `fuzz_bad_params`).

Valid shapes are drawn from what the transform accepts, never filtered: a `FuzzRecipe` may give
their strategy (`shape_strategy` builds the usual one); otherwise `accepted_shapes` probes
`out_shape` once per configuration on every (C, H, W) within the recipe's bounds and draws among
the shapes it takes, so a transform that takes 1 shape in 16 (sides divisible by 4) or a single
channel count costs hypothesis no rejected example.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .registry import Registry, get_registry
from .transform import Boundary, Shape, SignalTransform

FUZZ_EXTRA = 'pip install "fdm-core[fuzz]"'
try:
    import hypothesis
    from hypothesis import HealthCheck, given, note
    from hypothesis import strategies as st
except ImportError as exc:
    raise ImportError(
        "fdm_core's transform fuzzer (fuzz_transform, TransformFuzzing, ...) needs hypothesis, "
        f"an optional dependency of fdm-core: {FUZZ_EXTRA}"
    ) from exc

MAX_CHANNELS = 4  # default bounds of the shapes drawn: C <= 4 (5 for invalid ones), H, W <= 64
MAX_SIZE = 64
MAX_BATCH = 3
Params = dict[str, Any]
BadShapes = list[tuple[Shape, tuple[str, ...]]]  # an invalid shape and what its error must name


def shape_strategy(
    channels: int | st.SearchStrategy[int] | None = None,
    multiple: int = 1,
    minimum: int = 1,
    max_channels: int = MAX_CHANNELS,
    max_size: int = MAX_SIZE,
) -> st.SearchStrategy[Shape]:
    """Shapes (C, H, W) built to be valid, not filtered: C is `channels` (a number, a strategy,
    or 1 to `max_channels`), H and W multiples of `multiple`, at least `minimum`, at most
    `max_size`."""
    low, high = max(1, -(-minimum // multiple)), max_size // multiple
    if low > high:
        raise ValueError(f"no multiple of {multiple} lies between {minimum} and {max_size}")
    side = st.integers(low, high).map(lambda n: n * multiple)
    if channels is None:
        channels = st.integers(1, max_channels)
    elif isinstance(channels, int):
        channels = st.just(channels)
    return st.tuples(channels, side, side)


@functools.cache
def _grid(max_channels: int, max_size: int) -> tuple[Shape, ...]:
    """Every (C, H, W) within the bounds, fewest values first (hypothesis shrinks to the front)."""
    sides = range(1, max_size + 1)
    shapes = itertools.product(range(1, max_channels + 1), sides, sides)
    return tuple(sorted(shapes, key=lambda s: (s[0] * s[1] * s[2], s)))


_ACCEPTED: dict[tuple[Any, ...], tuple[Shape, ...]] = {}


def _taken(transform: SignalTransform, max_channels: int, max_size: int) -> tuple[Shape, ...]:
    """The shapes of the grid whose `out_shape` returns, cached by the transform's class, repr
    (its parameters) and `to_config` (probing costs a few hundredths of a second)."""
    try:
        config = json.dumps(transform.to_config(), sort_keys=True, default=repr)
        bounds = (max_channels, max_size)
        key: tuple[Any, ...] | None = (type(transform), repr(transform), config, bounds)
    except Exception:  # a broken to_config is fuzz_valid's to report, not the probe's
        key = None
    if key is not None and key in _ACCEPTED:
        return _ACCEPTED[key]
    found = []
    for shape in _grid(max_channels, max_size):
        try:
            transform.out_shape(shape)
        except Exception:  # a refusal, or a crash that fuzz_any_shape reports
            continue
        found.append(shape)
    if key is not None:
        if len(_ACCEPTED) >= 256:
            _ACCEPTED.pop(next(iter(_ACCEPTED)))
        _ACCEPTED[key] = tuple(found)
    return tuple(found)


def accepted_shapes(
    transform: SignalTransform, max_channels: int = MAX_CHANNELS, max_size: int = MAX_SIZE
) -> st.SearchStrategy[Shape]:
    """The shapes (C, H, W) with C <= `max_channels` and H, W <= `max_size` that the
    transform's `out_shape` takes (docs/design.md §10.1), drawn among exactly those: `out_shape`
    is probed on the whole grid, so no draw is rejected however few shapes it takes. ValueError
    if it takes none."""
    found = _taken(transform, max_channels, max_size)
    if not found:
        raise ValueError(
            f"{transform!r} takes no shape (C, H, W) with C <= {max_channels} and "
            f"H, W <= {max_size}: give FuzzRecipe(shapes=...) or larger max_channels / max_size"
        )
    return st.sampled_from(found)


def _unknown_parameter() -> st.SearchStrategy[tuple[Params, str]]:
    return st.just(({"no_such_parameter": 2}, "no_such_parameter"))


@dataclass(frozen=True)
class FuzzRecipe:
    """How to fuzz one transform; the default suits a transform with default parameters.

    `params` draws keyword parameters (default: none). `shapes` maps a built transform to a
    strategy of valid per-sample shapes (default: `accepted_shapes`, within `max_channels` and
    `max_size`). `bad_params` draws (invalid parameters, text the error must contain); the
    default is an unknown key. `bad_shapes` derives invalid inputs from a valid shape and
    `bad_latents` invalid `decode` inputs from its `out_shape`, each as (shape, texts the
    ValueError must contain)."""

    params: st.SearchStrategy[Params] = field(default_factory=lambda: st.just({}))
    shapes: Callable[[SignalTransform], st.SearchStrategy[Shape]] | None = None
    bad_params: st.SearchStrategy[tuple[Params, str]] = field(default_factory=_unknown_parameter)
    bad_shapes: Callable[[SignalTransform, Shape], BadShapes] | None = None
    bad_latents: Callable[[SignalTransform, Shape], BadShapes] | None = None
    max_channels: int = MAX_CHANNELS
    max_size: int = MAX_SIZE

    def valid_shapes(self, transform: SignalTransform) -> st.SearchStrategy[Shape]:
        if self.shapes is not None:
            return self.shapes(transform)
        return accepted_shapes(transform, self.max_channels, self.max_size)


def _refused(
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


def _accepts(transform: SignalTransform, shape: Shape) -> bool:
    """Whether `out_shape` returns; any exception is a refusal, which `_refused` then checks."""
    try:
        transform.out_shape(shape)
    except Exception:
        return False
    return True


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _works(transform: SignalTransform, shape: Shape, batch: int, seed: int) -> Shape:
    """`shape` is taken: out_shape, encode and decode agree, outputs finite. Returns out_shape."""
    out = tuple(transform.out_shape(shape))
    assert len(out) == 3 and all(isinstance(d, int) and d > 0 for d in out), f"out_shape {out}"
    x = _randn((batch, *shape), seed)
    y = transform.encode(x)
    assert tuple(y.shape) == (batch, *out), f"encode gave {tuple(y.shape)}, out_shape says {out}"
    assert y.dtype == x.dtype and bool(torch.isfinite(y).all()), "encode: dtype or non-finite"
    back = transform.decode(y)
    assert tuple(back.shape) == tuple(x.shape), f"decode gave {tuple(back.shape)} for {shape}"
    assert back.dtype == x.dtype and bool(torch.isfinite(back).all()), "decode: dtype/non-finite"
    if transform.boundary == Boundary.IDENTITY:
        assert out == tuple(shape), f"an identity-boundary transform changed {shape} to {out}"
    return out


def _build(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> Any:
    params = data.draw(recipe.params, label="params")
    return registry.build("transform", {"name": name, **params})


def _valid_shape(recipe: FuzzRecipe, transform: SignalTransform, data: st.DataObject) -> Shape:
    shape = data.draw(recipe.valid_shapes(transform), label="shape")
    try:
        transform.out_shape(shape)
    except ValueError as exc:
        raise AssertionError(f"out_shape refuses the recipe's valid shape {shape}: {exc}") from None
    return shape


def _batch_seed(data: st.DataObject) -> tuple[int, int]:
    return data.draw(st.integers(1, MAX_BATCH), label="batch"), data.draw(st.integers(0, 2**31))


def fuzz_valid(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> None:
    """Valid parameters, shapes and batch sizes work (§10.1): `out_shape` agrees with `encode`,
    `decode(encode(x))` has the input's shape, dtype kept, outputs finite, an ``identity``
    boundary keeps the shape, and `to_config` rebuilds a transform with the same `out_shape`."""
    transform = _build(registry, name, recipe, data)
    shape = _valid_shape(recipe, transform, data)
    out = _works(transform, shape, *_batch_seed(data))
    rebuilt = registry.build("transform", transform.to_config())
    try:
        again = tuple(rebuilt.out_shape(shape))
    except ValueError as exc:
        raise AssertionError(f"the to_config rebuild refuses {shape}: {exc}") from None
    assert again == out, f"the to_config rebuild has out_shape {again}, not {out}"


def fuzz_any_shape(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> None:
    """Any positive shape (C up to one more than `max_channels`) is either taken, and works as
    in `fuzz_valid`, or refused by `out_shape` and `encode` alike with a one-line ValueError:
    never a torch error or a wrongly shaped result (§10.1)."""
    transform = _build(registry, name, recipe, data)
    size = st.integers(1, recipe.max_size)
    shape = data.draw(st.tuples(st.integers(1, recipe.max_channels + 1), size, size), label="shape")
    batch, seed = _batch_seed(data)
    if _accepts(transform, shape):
        _works(transform, shape, batch, seed)
    else:
        _refused(transform.out_shape, shape)
        _refused(transform.encode, _randn((batch, *shape), seed))


def fuzz_malformed(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> None:
    """Wrong numbers of dimensions and sizes <= 0 are refused by `out_shape`, `encode` and
    `decode` with a one-line ValueError naming the shape (§10.1)."""
    transform = _build(registry, name, recipe, data)
    shape = _valid_shape(recipe, transform, data)
    out = tuple(transform.out_shape(shape))
    batch = data.draw(st.integers(1, MAX_BATCH), label="batch")
    if data.draw(st.booleans(), label="wrong number of dimensions"):
        c, h, w = shape
        bad = data.draw(st.sampled_from([(), (c,), (h, w), (1, c, h, w), (c, h, w, 1)]))
        _refused(transform.out_shape, bad, str(bad))
        for tensor in (shape, (batch, c, h * w), (batch, *shape, 1), (batch, c * h * w)):
            x = torch.zeros(tensor)
            _refused(transform.encode, x, str(tuple(x.shape)))
        for tensor in (out, (batch, *out, 1)):
            y = torch.zeros(tensor)
            _refused(transform.decode, y, str(tuple(y.shape)))
    else:
        i = data.draw(st.integers(0, 2), label="dimension")
        size = data.draw(st.integers(-recipe.max_size, 0), label="size")
        bad = tuple(size if j == i else d for j, d in enumerate(shape))
        _refused(transform.out_shape, bad, str(bad))
        x = torch.zeros(batch, *(max(d, 0) for d in bad))
        _refused(transform.encode, x, str(tuple(x.shape)))
        y = torch.zeros(batch, *(0 if j == i else d for j, d in enumerate(out)))
        _refused(transform.decode, y, str(tuple(y.shape)))


def fuzz_bad_shapes(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> None:
    """The recipe's invalid sizes and channel counts are refused by `out_shape` and `encode`
    (its invalid latents by `decode`), the ValueError naming what is wrong (§10.1)."""
    transform = _build(registry, name, recipe, data)
    shape = _valid_shape(recipe, transform, data)
    batch, seed = _batch_seed(data)
    for bad, needles in recipe.bad_shapes(transform, shape) if recipe.bad_shapes else []:
        _refused(transform.out_shape, bad, *needles)
        _refused(transform.encode, _randn((batch, *bad), seed), *needles)
    out = tuple(transform.out_shape(shape))
    for bad, needles in recipe.bad_latents(transform, out) if recipe.bad_latents else []:
        _refused(transform.decode, _randn((batch, *bad), seed), *needles)


def fuzz_bad_params(registry: Registry, name: str, recipe: FuzzRecipe, data: st.DataObject) -> None:
    """Invalid parameters are refused by the registry's factory with a ValueError naming the
    parameter (pydantic's ValidationError, a ValueError, may span lines)."""
    params, needle = data.draw(recipe.bad_params, label="params")
    build = functools.partial(registry.build, "transform")
    _refused(build, {"name": name, **params}, needle, one_line=False)


FuzzCheck = Callable[[Registry, str, FuzzRecipe, st.DataObject], None]
FUZZ_CHECKS: tuple[FuzzCheck, ...] = (
    fuzz_valid,
    fuzz_any_shape,
    fuzz_malformed,
    fuzz_bad_shapes,
    fuzz_bad_params,
)


def _property(
    check: FuzzCheck,
    registry: Registry,
    name: str,
    recipe: FuzzRecipe,
    settings: hypothesis.settings,
) -> Callable[[], None]:
    @settings
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        note(f"{check.__name__} of transform {name!r}")
        check(registry, name, recipe, data)

    inner = getattr(getattr(run, "hypothesis", None), "inner_test", None)
    if inner is not None:  # one example-database key per check and transform
        inner._hypothesis_internal_add_digest = f"{check.__name__}:{name}".encode()
    return run


def fuzz_transform(
    name: str,
    recipe: FuzzRecipe | None = None,
    *,
    registry: Registry | None = None,
    checks: Sequence[FuzzCheck] = FUZZ_CHECKS,
    settings: hypothesis.settings | None = None,
) -> None:
    """Run `checks` (default: all five) on the transform registered as `name` in `registry`
    (default: `get_registry()`, which finds installed plugins), one hypothesis run each. The
    default `settings`: 30 examples, no deadline, the too-slow health check off; the others
    (filtering included) stay on. Raises the first failure, with its smallest example."""
    registry = get_registry() if registry is None else registry
    recipe = FuzzRecipe() if recipe is None else recipe
    if settings is None:
        settings = hypothesis.settings(
            max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
    for check in checks:
        _property(check, registry, name, recipe, settings)()


class TransformFuzzing:
    """pytest mixin: subclass it as ``Test...`` and set `transform_name` (as registered).

    Optional: `make_recipe` returns the `FuzzRecipe` (parameters to draw, invalid shapes and
    parameters to expect refused; default: default parameters, the shapes `out_shape` takes),
    `make_registry` the registry to build from (default: `get_registry()`, with the installed
    plugins), and `fuzz_settings` replaces `fuzz_transform`'s hypothesis settings.
    """

    transform_name: ClassVar[str] = ""
    fuzz_settings: ClassVar[hypothesis.settings | None] = None

    def make_recipe(self) -> FuzzRecipe:
        return FuzzRecipe()

    def make_registry(self) -> Registry:
        return get_registry()

    def _fuzz(self, check: FuzzCheck) -> None:
        if not self.transform_name:
            raise NotImplementedError("set transform_name in the test class")
        name, recipe, registry = self.transform_name, self.make_recipe(), self.make_registry()
        fuzz_transform(name, recipe, registry=registry, checks=[check], settings=self.fuzz_settings)

    def test_valid_parameters_and_shapes_work(self) -> None:
        self._fuzz(fuzz_valid)

    def test_any_shape_is_taken_or_refused(self) -> None:
        self._fuzz(fuzz_any_shape)

    def test_malformed_shapes_are_refused(self) -> None:
        self._fuzz(fuzz_malformed)

    def test_invalid_sizes_and_channels_are_refused(self) -> None:
        self._fuzz(fuzz_bad_shapes)

    def test_invalid_parameters_are_refused(self) -> None:
        self._fuzz(fuzz_bad_params)
