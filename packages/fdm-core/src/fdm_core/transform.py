"""The `SignalTransform` interface: one deterministic step f_{k+1} of the f-DM chain.

See docs/design.md §5 and §10.1.

A transform maps a stage-k signal x^k to the stage-(k+1) signal x^{k+1} = f(x^k) (`encode`) and
back, g: stage k+1 -> stage k (`decode`). Its `boundary` kind tells the process how to cross the
stage boundary when sampling:

- ``projection``: f(g(y)) = y, P = g(f(.)) is an orthogonal projection and f maps white noise to
  white noise of variance d_{k+1}/d_k (mean pooling). Exact up-step with (I - P) noise.
- ``identity``: same space, g is the identity (blur). The up-step is the identity.
- ``renoise``: anything else (learned encoders). The up-step decodes the clean prediction and
  noises it afresh.

Parameters of concrete transforms are validated by pydantic: subclass `TransformParams` and set
`Params` on the transform class; `to_config()` then round-trips through the registry. Shapes are
checked with `validate_shape` (in `out_shape`) and `validate_batch` (in `encode` and `decode`),
which raise a one-line ValueError naming the shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from math import prod
from numbers import Integral
from typing import Any, ClassVar, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict

Shape = tuple[int, ...]


Coefficient: TypeAlias = float | torch.Tensor  # one number, or (B,): one per sample


class Boundary(str, Enum):
    """How the sampler crosses the boundary after a transform (docs/design.md §5)."""

    PROJECTION = "projection"
    IDENTITY = "identity"
    RENOISE = "renoise"


class TransformContractError(ValueError):
    """A transform breaks the contract of its declared boundary kind (raised when a process is
    built with it; the message names the transform and the broken property)."""


class TransformParams(BaseModel):
    """Base class of a transform's validated parameters (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalTransform(ABC):
    """One step f of the progressive signal transformation, with its map back g.

    Shapes are per-sample ``(C, H, W)`` tuples; `encode` and `decode` act on batches
    ``(B, C, H, W)`` and must treat batch items independently, preserve dtype and device, and be
    differentiable.
    """

    name: ClassVar[str]
    boundary: ClassVar[Boundary]
    Params: ClassVar[type[TransformParams]] = TransformParams

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    @abstractmethod
    def out_shape(self, shape: Shape) -> Shape:
        """Shape of f(x) for per-sample input `shape`; raise ValueError if f cannot take it."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f: stage k -> stage k+1."""

    @abstractmethod
    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """g: stage k+1 -> stage k."""

    def mix_projection(
        self,
        x: torch.Tensor,
        keep: Coefficient,
        project: Coefficient,
        extra: torch.Tensor | None = None,
        extra_scale: Coefficient | None = None,
    ) -> torch.Tensor:
        """keep x + project g(f(x)) (+ extra_scale extra): the stage mean M_t x with keep =
        1 - delta_t, project = delta_t (docs/design.md §2 (E4)), z_t with extra = eps (E5), and
        the sampler's step (E25-E27) are all this one combination.

        Coefficients are numbers or (B,) tensors, one per sample. A transform may override it
        with a fused kernel (down-sampling does); the result must equal this default, which the
        conformance suite (`fdm_core.testing`) checks."""
        out = _scaled(keep, x) + _scaled(project, self.decode(self.encode(x)))
        if extra is not None and extra_scale is not None:
            out = out + _scaled(extra_scale, extra)
        return out

    def validate_shape(self, shape: Shape) -> tuple[int, int, int]:
        """`shape` as ``(C, H, W)``; ValueError unless it is three positive integers."""
        dims = _dims(shape)
        if dims is None or len(dims) != 3 or min(dims) < 1:
            shown = repr(shape) if dims is None else str(dims)
            raise ValueError(
                f"{self!r} takes a per-sample shape (C, H, W) of three positive integers, "
                f"got {shown}"
            )
        return dims[0], dims[1], dims[2]

    def validate_batch(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The per-sample shape of `x`; ValueError unless `x` is ``(B, C, H, W)``, C, H, W >= 1."""
        if x.dim() != 4 or min(x.shape[1:]) < 1:
            raise ValueError(
                f"{self!r} takes a batch of shape (B, C, H, W) with C, H, W >= 1, got a tensor "
                f"of shape {tuple(x.shape)}"
            )
        return self.validate_shape(tuple(x.shape[1:]))

    def dim_ratio(self, shape: Shape) -> float:
        """d_{k+1} / d_k for an input of shape `shape`."""
        return prod(self.out_shape(shape)) / prod(shape)

    def to_config(self) -> dict[str, Any]:
        """The registry spec that rebuilds this transform: ``{"name": ..., **params}``."""
        return {"name": self.name, **self._param_values("json")}

    def _param_values(self, mode: str = "python") -> dict[str, Any]:
        # A subclass with its own __init__ may not have called ours: then it has no params.
        params = getattr(self, "params", None)
        return params.model_dump(mode=mode) if isinstance(params, BaseModel) else {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._param_values().items())
        return f"{type(self).__name__}({args})"


def _scaled(c: Coefficient, x: torch.Tensor) -> torch.Tensor:
    """c x for a number c, or a (B,) tensor c broadcast over each sample of x (in x's dtype)."""
    if isinstance(c, torch.Tensor):
        return c.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * x
    return c * x


def _dims(shape: object) -> tuple[int, ...] | None:
    """`shape` as a tuple of ints, or None if it is not a sequence of integers."""
    try:
        dims = tuple(shape)  # type: ignore[call-overload]
    except TypeError:
        return None
    if not all(isinstance(d, Integral) and not isinstance(d, bool) for d in dims):
        return None
    return tuple(int(d) for d in dims)
