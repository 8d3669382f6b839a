"""The `SignalTransform` conformance suite (docs/design.md §10.4 (E14)): one set of checks every
transform, built-in or third-party, can run.

As a pytest mixin::

    from fdm_core.testing import TransformConformance

    class TestMyTransform(TransformConformance):
        input_shape = (3, 32, 32)

        def make_transform(self):
            return MyTransform(strength=2)

or directly: ``check_transform(MyTransform(), (3, 32, 32))`` raises AssertionError on the first
broken property. Checks depend on the declared boundary kind: every transform must get shapes,
dtype, device, batch independence, gradients, `mix_projection` (a fused override equals the
default) and its config round trip right; ``projection``
transforms must also satisfy f g = I, P = g f idempotent and self-adjoint, and f f^T = r I with
r = d_{k+1} / d_k (white noise maps to white noise of variance r); ``identity`` transforms keep
the shape and decode as the identity.

The fuzzer of `fdm_core.fuzzing` (`fuzz_transform`, the mixin `TransformFuzzing`, ...) is
importable from here too; it needs hypothesis (``pip install "fdm-core[fuzz]"``), imported only
when one of its names is first used.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from .registry import Registry, get_registry
from .transform import Boundary, Shape, SignalTransform, TransformContractError

# Names of fdm_core.fuzzing served by this module's __getattr__ (hypothesis loads on first use).
FUZZING_NAMES = frozenset(
    {
        "FUZZ_CHECKS",
        "FuzzRecipe",
        "TransformFuzzing",
        "accepted_shapes",
        "fuzz_any_shape",
        "fuzz_bad_params",
        "fuzz_bad_shapes",
        "fuzz_malformed",
        "fuzz_transform",
        "fuzz_valid",
        "shape_strategy",
    }
)


def __getattr__(name: str) -> Any:
    if name in FUZZING_NAMES:
        from . import fuzzing  # ImportError naming the fdm-core[fuzz] extra without hypothesis

        return getattr(fuzzing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *FUZZING_NAMES})


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


def _input(
    shape: Shape, batch: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    return sample_inputs(shape, batch, "randn", seed).to(dtype)


# Inputs the suite feeds a transform: N(0, 1) (noise, as the sampler sees it) and the stage-0
# data range [-1, 1] (uniform, and its two extremes), where clipping or quantising transforms
# behave differently. A test class adds its own with `make_inputs`.
INPUT_KINDS = ("randn", "unit", "signs")


def sample_inputs(shape: Shape, batch: int, kind: str, seed: int = 0) -> torch.Tensor:
    """A float64 batch of `kind` (one of `INPUT_KINDS`) with per-sample shape `shape`."""
    g = torch.Generator().manual_seed(seed)
    if kind == "randn":
        return torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    if kind == "unit":
        return torch.rand(batch, *shape, generator=g, dtype=torch.float64) * 2 - 1
    if kind == "signs":
        return torch.randint(0, 2, (batch, *shape), generator=g).double() * 2 - 1
    raise ValueError(f"unknown input kind {kind!r}; one of {', '.join(INPUT_KINDS)}")


def _default_inputs(shape: Shape, batch: int) -> list[torch.Tensor]:
    return [sample_inputs(shape, batch, kind, seed=i) for i, kind in enumerate(INPUT_KINDS)]


def check_shapes(transform: SignalTransform, shape: Shape, batch: int = 3) -> None:
    out = tuple(transform.out_shape(shape))
    y = transform.encode(_input(shape, batch))
    assert tuple(y.shape) == (batch, *out), f"encode gave {tuple(y.shape)}, out_shape says {out}"
    back = transform.decode(y)
    assert tuple(back.shape) == (batch, *shape), f"decode gave {tuple(back.shape)}, want {shape}"
    if transform.boundary == Boundary.IDENTITY:
        assert out == tuple(shape), f"an identity-boundary transform must keep the shape {shape}"


def check_dtype_device(
    transform: SignalTransform, shape: Shape, device: torch.device | str = "cpu"
) -> None:
    for dtype in (torch.float32, torch.float64):
        x = _input(shape, 2, dtype).to(device)
        y = transform.encode(x)
        assert y.dtype == dtype and y.device == x.device, f"encode changed {dtype}/{x.device}"
        back = transform.decode(y)
        assert back.dtype == dtype and back.device == x.device, f"decode changed {dtype}/{x.device}"


def check_batch_independence(
    transform: SignalTransform,
    shape: Shape,
    batch: int = 4,
    inputs: list[torch.Tensor] | None = None,
) -> None:
    """Batch items are transformed independently, on every input kind (`INPUT_KINDS`, or
    `inputs`): a batch gives its items' results one at a time, and changing one sample moves
    no other sample's output (catches batch statistics: centring on, or scaling by, the batch)."""
    for x in inputs or _default_inputs(shape, batch):
        y = transform.encode(x)
        singles = torch.cat([transform.encode(x[i : i + 1]) for i in range(x.shape[0])])
        _close(y, singles, "encode of a batch vs one item at a time")
        _close(
            transform.decode(y),
            torch.cat([transform.decode(y[i : i + 1]) for i in range(x.shape[0])]),
            "decode of a batch vs one item at a time",
        )
        changed = x.clone()
        changed[0] = changed[0] * 3 + 1
        _close(
            transform.encode(changed)[1:],
            y[1:],
            "batch independence: changing sample 0 moved the encoding of the others",
        )
        _close(
            transform.decode(transform.encode(changed))[1:],
            transform.decode(y)[1:],
            "batch independence: changing sample 0 moved the decoding of the others",
        )


def check_differentiable(transform: SignalTransform, shape: Shape) -> None:
    """Every boundary kind needs a gradient through g(f(x)) that autograd can follow and that
    is not zero everywhere: the projection checks compute f f^T by a vector-Jacobian product,
    and a latent transform is trained through. Catches `.detach()`, `.numpy()`, `no_grad` and
    piecewise-constant maps (`round()`)."""
    x = _input(shape, 2).requires_grad_(True)
    out = transform.decode(transform.encode(x))
    assert out.requires_grad, (
        "differentiable: decode(encode(x)) does not require grad: encode or decode detached its "
        "output (.detach(), .numpy(), torch.no_grad()); use torch ops autograd can follow"
    )
    weights = _input(tuple(out.shape[1:]), out.shape[0], seed=5)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(grad).all(), "differentiable: the gradient through f, g is not finite"
    assert bool(grad.abs().max() > 0), (
        "differentiable: the gradient through decode(encode(x)) is zero everywhere (a "
        "piecewise-constant map such as round()); the contract needs a useful gradient"
    )


def check_mix_projection(transform: SignalTransform, shape: Shape, batch: int = 3) -> None:
    """`mix_projection` equals keep x + project g(f(x)) + scale extra (the default), with
    per-sample and scalar coefficients, in float32: a fused override must compute the same."""
    x, extra = _input(shape, batch, torch.float32), _input(shape, batch, torch.float32, seed=3)
    keep, project, scale = (torch.linspace(-0.5, 1.5, batch) + i for i in range(3))
    projected = transform.decode(transform.encode(x))
    rows = (-1, *([1] * len(shape)))
    want = keep.view(rows) * x + project.view(rows) * projected + scale.view(rows) * extra
    got = transform.mix_projection(x, keep, project, extra, scale)
    assert got.dtype == x.dtype, f"mix_projection turned {x.dtype} into {got.dtype}"
    _close(got, want, "mix_projection with per-sample coefficients vs keep x + project g(f(x))")
    _close(
        transform.mix_projection(x, 0.25, 0.75),
        0.25 * x + 0.75 * projected,
        "mix_projection with numbers vs keep x + project g(f(x))",
    )


def check_config_round_trip(
    transform: SignalTransform, shape: Shape, registry: Registry | None = None
) -> None:
    rebuilt = (registry or get_registry()).build("transform", transform.to_config())
    assert type(rebuilt) is type(transform), f"to_config rebuilt a {type(rebuilt).__name__}"
    x = _input(shape, 2)
    _close(rebuilt.encode(x), transform.encode(x), "encode after the to_config round trip")


def check_projection(transform: SignalTransform, shape: Shape, batch: int = 4) -> None:
    """f g = I; P = g f idempotent and self-adjoint; f f^T = r I (exact, by vector-Jacobian)."""
    out = tuple(transform.out_shape(shape))
    y = _input(out, batch, seed=1)
    _close(transform.encode(transform.decode(y)), y, "f(g(y)) = y")
    x = _input(shape, batch, seed=2)

    def project(v: torch.Tensor) -> torch.Tensor:
        return transform.decode(transform.encode(v))

    _close(project(project(x)), project(x), "P idempotent")
    w = _input(shape, batch, seed=3)
    lhs, rhs = (project(x) * w).flatten(1).sum(1), (x * project(w)).flatten(1).sum(1)
    _close(lhs, rhs, "P self-adjoint: <Px, w> = <x, Pw>")
    ratio = transform.dim_ratio(shape)
    probe = torch.zeros(batch, *shape, dtype=torch.float64, requires_grad=True)
    (f_transpose_y,) = torch.autograd.grad((transform.encode(probe) * y).sum(), probe)
    _close(
        transform.encode(f_transpose_y),
        ratio * y,
        f"f f^T = r I with r = d_(k+1)/d_k = {ratio:.4g} (white noise -> variance r)",
    )


def check_white_noise(transform: SignalTransform, shape: Shape, samples: int = 2048) -> None:
    """Empirical check of the same property on real noise: variance r, no correlation between
    neighbouring outputs. Tolerances are 5 standard errors of the estimates."""
    ratio = transform.dim_ratio(shape)
    y = transform.encode(_input(shape, samples, seed=4)).flatten(1)
    n = y.numel()
    var = float(y.pow(2).mean())
    assert abs(var - ratio) <= 5 * ratio * math.sqrt(2.0 / n), (
        f"noise variance {var:.4g} != r={ratio:.4g}"
    )
    if y.shape[1] > 1:
        cov = float((y[:, :-1] * y[:, 1:]).mean())
        assert abs(cov) <= 5 * ratio / math.sqrt(samples * (y.shape[1] - 1)), (
            f"neighbouring outputs of white noise are correlated: covariance {cov:.3g}"
        )


def check_unet_stage_shapes(
    transform: SignalTransform, shape: Shape, unet: dict | None = None
) -> None:
    """The built-in UNet (fdm-models) accepts the stage chain ``shape -> out_shape(shape)``:
    each stage's (H, W) must be stage 0's halved a whole number of times in both sides
    (docs/plugins.md, "Stage shapes the UNet can train"). `unet` holds UNetConfig fields
    (``channel_mult`` sets the number of levels)."""
    from fdm_models import UNetConfig  # optional: only this check needs fdm-models

    stages = [tuple(shape), tuple(transform.out_shape(shape))]
    try:
        UNetConfig(stage_shapes=stages, **(unet or {}))
    except ValueError as exc:
        errors = exc.errors() if hasattr(exc, "errors") else [{"msg": str(exc)}]
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors)
        raise AssertionError(f"the UNet cannot train the stages {stages}: {reasons}") from None


def check_transform(
    transform: SignalTransform,
    shape: Shape,
    registry: Registry | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Run every check that applies to the transform's boundary kind."""
    check_shapes(transform, shape)
    check_dtype_device(transform, shape, device)
    check_batch_independence(transform, shape)
    check_differentiable(transform, shape)
    check_mix_projection(transform, shape)
    check_config_round_trip(transform, shape, registry)
    check_boundary_contract(transform, shape)


def check_boundary_contract(
    transform: SignalTransform, shape: Shape, white_noise: bool = True
) -> None:
    """The properties the declared boundary kind promises (nothing extra for ``renoise``); an
    unknown kind fails, naming the known ones."""
    kinds = [b.value for b in Boundary]
    assert transform.boundary in kinds, (
        f"boundary {transform.boundary!r} is not a known kind; one of {', '.join(kinds)}"
    )
    if transform.boundary == Boundary.PROJECTION:
        check_projection(transform, shape)
        if white_noise:
            check_white_noise(transform, shape)
    elif transform.boundary == Boundary.IDENTITY:
        y = _input(shape, 2)
        _close(transform.decode(y), y, "decode of an identity-boundary transform is the identity")


def verify_contract(transform: SignalTransform, shape: Shape, label: str) -> None:
    """The checks a process runs on each transform it is built with (docs/design.md §10.4):
    shapes and dtype on a float32 batch, and the declared boundary's properties (not the
    sampled white-noise check). Raises `TransformContractError` naming `label`, the boundary
    kind and the broken property."""
    try:
        kind = Boundary(transform.boundary)
    except (AttributeError, ValueError):
        allowed = ", ".join(b.value for b in Boundary)
        raise TransformContractError(
            f"{label}: boundary must be one of {allowed}, "
            f"got {getattr(transform, 'boundary', None)!r}"
        ) from None
    try:
        out = tuple(transform.out_shape(shape))
        x = _input(shape, 2, torch.float32)
        y = transform.encode(x)
        assert tuple(y.shape) == (2, *out), (
            f"encode gave {tuple(y.shape[1:])} per sample, out_shape says {out}"
        )
        assert y.dtype == x.dtype, f"encode turned {x.dtype} into {y.dtype}"
        back = transform.decode(y)
        assert tuple(back.shape) == (2, *shape), (
            f"decode gave {tuple(back.shape[1:])} per sample, want {tuple(shape)}"
        )
        if kind == Boundary.IDENTITY:
            assert out == tuple(shape), f"the shape must be kept ({tuple(shape)} -> {out})"
        check_boundary_contract(transform, shape, white_noise=False)
    except AssertionError as exc:
        raise TransformContractError(
            f"{label} breaks the {kind.value!r} boundary contract: {exc}"
        ) from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TransformContractError(
            f"{label} failed on a batch of shape (2, {', '.join(map(str, shape))}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


class TransformConformance:
    """pytest mixin: subclass it as ``Test...``, set `input_shape` and define `make_transform`.

    Optional: `make_inputs` returns the batches batch independence is checked on (default: one
    of each `INPUT_KINDS`; return the previous transform's outputs for a transform that comes
    later in a chain); `unet_config` holds the UNetConfig fields (default: the default UNet)
    of the check that the built-in UNet can train the stage shapes; None skips it, for a
    transform meant for another network.
    """

    input_shape: Shape = (1, 16, 16)
    unet_config: ClassVar[dict[str, Any] | None] = {}

    def make_transform(self) -> SignalTransform:
        raise NotImplementedError("define make_transform() in the test class")

    def make_inputs(self) -> list[torch.Tensor] | None:
        return None

    def test_shapes(self) -> None:
        check_shapes(self.make_transform(), self.input_shape)

    def test_dtype_device(self) -> None:
        check_dtype_device(self.make_transform(), self.input_shape)

    def test_batch_independence(self) -> None:
        transform, inputs = self.make_transform(), self.make_inputs()
        check_batch_independence(transform, self.input_shape, inputs=inputs)

    def test_unet_stage_shapes(self) -> None:
        if self.unet_config is None:
            import pytest

            pytest.skip("unet_config is None: this transform is not meant for the built-in UNet")
        check_unet_stage_shapes(self.make_transform(), self.input_shape, self.unet_config)

    def test_differentiable(self) -> None:
        check_differentiable(self.make_transform(), self.input_shape)

    def test_mix_projection(self) -> None:
        check_mix_projection(self.make_transform(), self.input_shape)

    def test_config_round_trip(self) -> None:
        check_config_round_trip(self.make_transform(), self.input_shape)

    def test_boundary_contract(self) -> None:
        check_boundary_contract(self.make_transform(), self.input_shape)
