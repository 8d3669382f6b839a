"""The plugin hooks of fdm (docs/design.md §10.2). Built-ins implement them exactly as third
parties do.

A plugin is a module (or object) exposed through the ``fdm`` entry-point group whose functions are
marked with `hookimpl`::

    # pyproject.toml:  [project.entry-points.fdm]  my_plugin = "my_package.plugin"
    from fdm_core import hookimpl

    @hookimpl
    def fdm_register_transforms(register):
        register("my_transform", MyTransform)

`register(name, factory)` takes a name and a class (or callable) that builds the component from
its validated keyword parameters. pluggy checks every implementation against these specs when the
plugin is registered: a misspelled hook name or an argument other than ``register`` makes the
plugin invalid (`InvalidPluginError`; on discovery it is reported by ``fdm plugins`` and skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "fdm"
ENTRY_POINT_GROUP = "fdm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def fdm_register_transforms(register: Register) -> None:
    """Register `SignalTransform` factories."""


@hookspec
def fdm_register_noise_schedules(register: Register) -> None:
    """Register `NoiseSchedule` factories."""


@hookspec
def fdm_register_stage_schedules(register: Register) -> None:
    """Register `StageSchedule` factories."""
