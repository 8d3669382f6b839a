"""The plugin module the `fdm` entry point names: one hook per component kind it provides."""

from fdm_core import Register, hookimpl

from .transform import Grayscale


@hookimpl
def fdm_register_transforms(register: Register) -> None:
    register(Grayscale.name, Grayscale)
