"""The module the ``fdm`` entry point names: fdm calls its hook implementations."""

from __future__ import annotations

from fdm_core import Register, hookimpl

from .transform import HaarLowPass


@hookimpl
def fdm_register_transforms(register: Register) -> None:
    register(HaarLowPass.name, HaarLowPass)
