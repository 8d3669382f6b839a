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
"""

from __future__ import annotations

import math

import torch

from .registry import Registry, get_registry
from .transform import Boundary, Shape, SignalTransform, TransformContractError


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


def _input(
    shape: Shape, batch: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=torch.float64).to(dtype)


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


def check_batch_independence(transform: SignalTransform, shape: Shape, batch: int = 4) -> None:
    x = _input(shape, batch)
    y = transform.encode(x)
    singles = torch.cat([transform.encode(x[i : i + 1]) for i in range(batch)])
    _close(y, singles, "encode of a batch vs one item at a time")
    _close(
        transform.decode(y),
        torch.cat([transform.decode(y[i : i + 1]) for i in range(batch)]),
        "decode of a batch vs one item at a time",
    )


def check_differentiable(transform: SignalTransform, shape: Shape) -> None:
    x = _input(shape, 2).requires_grad_(True)
    transform.decode(transform.encode(x)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), "no finite gradient through f, g"


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
    """The properties the declared boundary kind promises (nothing extra for ``renoise``)."""
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
    """pytest mixin: subclass it as ``Test...``, set `input_shape` and define `make_transform`."""

    input_shape: Shape = (1, 16, 16)

    def make_transform(self) -> SignalTransform:
        raise NotImplementedError("define make_transform() in the test class")

    def test_shapes(self) -> None:
        check_shapes(self.make_transform(), self.input_shape)

    def test_dtype_device(self) -> None:
        check_dtype_device(self.make_transform(), self.input_shape)

    def test_batch_independence(self) -> None:
        check_batch_independence(self.make_transform(), self.input_shape)

    def test_differentiable(self) -> None:
        check_differentiable(self.make_transform(), self.input_shape)

    def test_mix_projection(self) -> None:
        check_mix_projection(self.make_transform(), self.input_shape)

    def test_config_round_trip(self) -> None:
        check_config_round_trip(self.make_transform(), self.input_shape)

    def test_boundary_contract(self) -> None:
        check_boundary_contract(self.make_transform(), self.input_shape)
