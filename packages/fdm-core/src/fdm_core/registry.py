"""The plugin registry: discovers ``fdm`` entry points and collects components through pluggy.

Every distribution that exposes the ``fdm`` entry-point group is a plugin, built-ins included
(fdm-core registers the schedules, fdm-transforms the transforms). Each `Registry` owns one
``pluggy.PluginManager`` with the hookspecs of :mod:`fdm_core.hookspecs`; plugins are registered
into it, so pluggy rejects a hook implementation with an unknown hook name or argument, and the
hooks are called through it (``pm.subset_hook_caller``, one plugin at a time, so that every
component is recorded with the distribution that registered it).

External plugins can be limited with ``FDM_LOAD_PLUGINS``: a comma-separated list of distribution
or entry-point names; the empty string loads none. A plugin that fails to import or that pluggy
rejects is reported (logged and kept in `Registry.errors`) and skipped. Two plugins registering
the same name is an error that names both distributions.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME

logger = logging.getLogger(__name__)

BUILTIN_DISTRIBUTIONS = frozenset({"fdm-core", "fdm-transforms", "fdm-models", "fdm-cli"})
KINDS = {
    "transform": "fdm_register_transforms",
    "noise_schedule": "fdm_register_noise_schedules",
    "stage_schedule": "fdm_register_stage_schedules",
}


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginError(RuntimeError):
    """A plugin conflict (e.g. two plugins registering one name)."""


class InvalidPluginError(PluginError):
    """pluggy rejected a plugin's hook implementations (unknown hook name or argument)."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    factory: Callable[..., Any]
    distribution: str
    version: str


@dataclass(frozen=True)
class LoadError:
    plugin: str
    distribution: str
    error: str


@dataclass
class Registry:
    """Name -> factory tables for each component kind, with where each came from."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    errors: list[LoadError] = field(default_factory=list)
    plugins: list[tuple[str, str, str]] = field(default_factory=list)  # (module, dist, version)
    pm: pluggy.PluginManager = field(default_factory=_plugin_manager, repr=False)

    def add(
        self, kind: str, name: str, factory: Callable[..., Any], dist: str, version: str
    ) -> None:
        table = self.entries[kind]
        if name in table:
            other = table[name].distribution
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {other!r} and by {dist!r}; "
                f"uninstall one or limit plugins with FDM_LOAD_PLUGINS"
            )
        table[name] = Entry(name, kind, factory, dist, version)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            allowed = ", ".join(self.names(kind)) or "none registered"
            raise KeyError(f"unknown {kind} {name!r}; registered: {allowed}") from None

    def build(self, kind: str, spec: dict[str, Any]) -> Any:
        """Build a component from ``{"name": ..., **params}`` (params validated by the factory)."""
        params = dict(spec)
        name = params.pop("name")
        return self.get(kind, name).factory(**params)

    def register_plugin(self, plugin: object, distribution: str, version: str = "0") -> None:
        """Register a plugin object (e.g. a module of `hookimpl` functions) and run its hooks."""
        label = getattr(plugin, "__name__", type(plugin).__name__)
        name = f"{distribution}:{label}"
        if self.pm.is_registered(plugin) or self.pm.has_plugin(name):
            raise PluginError(f"fdm plugin {label!r} from {distribution!r} is registered twice")
        try:
            self.pm.register(plugin, name=name)  # checks the arguments of known hooks
            self.pm.check_pending()  # hook names that no hookspec declares
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            hooks = ", ".join(f"{hook}(register)" for hook in KINDS.values())
            reason = str(exc).replace("\n", "; ")
            raise InvalidPluginError(
                f"fdm plugin {label!r} from {distribution!r} is invalid: {reason} (hooks: {hooks})"
            ) from None
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        for kind, hook in KINDS.items():
            call = self.pm.subset_hook_caller(hook, remove_plugins=others)
            call(register=functools.partial(self.add, kind, dist=distribution, version=version))
        self.plugins.append((label, distribution, version))

    def _skip(self, plugin: str, distribution: str, exc: Exception) -> None:
        logger.warning("fdm plugin %r from %s failed to load: %s", plugin, distribution, exc)
        self.errors.append(LoadError(plugin, distribution, f"{type(exc).__name__}: {exc}"))


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _allowed(env: str | None, ep: metadata.EntryPoint, dist: str) -> bool:
    if dist in BUILTIN_DISTRIBUTIONS or env is None:
        return True
    wanted = {_normalize(w.strip()) for w in env.split(",") if w.strip()}
    return dist in wanted or _normalize(ep.name) in wanted


def load_registry(load_plugins: str | None = None) -> Registry:
    """Discover every ``fdm`` entry point and build a registry.

    `load_plugins` overrides ``FDM_LOAD_PLUGINS`` (None: read the environment; unset = all).
    """
    env = os.environ.get("FDM_LOAD_PLUGINS") if load_plugins is None else load_plugins
    registry = Registry()
    seen: set[tuple[str, str]] = set()
    eps = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda e: (e.dist.name if e.dist else "", e.name),
    )
    for ep in eps:
        dist = _normalize(ep.dist.name) if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "0"
        if (dist, ep.name) in seen or not _allowed(env, ep, dist):
            continue
        seen.add((dist, ep.name))
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the library down
            registry._skip(ep.name, dist, exc)
            continue
        try:
            registry.register_plugin(plugin, dist, version)
        except InvalidPluginError as exc:
            registry._skip(ep.name, dist, exc)
    return registry


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _default
    if _default is None:
        _default = load_registry()
    return _default


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    global _default
    _default = None
