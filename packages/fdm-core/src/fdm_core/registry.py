"""The plugin registry: discovers ``fdm`` entry points and collects components through pluggy.

Every distribution that exposes the ``fdm`` entry-point group is a plugin, built-ins included
(fdm-core registers the schedules, fdm-transforms the transforms). Each `Registry` owns one
``pluggy.PluginManager`` with the hookspecs of :mod:`fdm_core.hookspecs`; plugins are registered
into it, so pluggy rejects a hook implementation with an unknown hook name or argument, and the
hooks are called through it (``pm.subset_hook_caller``, one plugin at a time, so that every
component is recorded with the distribution that registered it).

A broken plugin never breaks fdm (docs/plugins.md, "When a plugin is broken"). Every call into
plugin code (the import, each hook, each factory) is guarded against any exception, `SystemExit`
included (not `KeyboardInterrupt`); a plugin whose import or hook fails, or whose hook calls
``register`` with something other than a name and a callable, is skipped as a whole (none of its
components is kept), recorded in `Registry.errors` with the exact fix, and logged. A plugin that
registers a built-in's name keeps the built-in and is reported; two external plugins registering
one name make that name refuse to build, naming both. Factories are checked to return the kind
they were registered for.

External plugins can be limited with ``FDM_LOAD_PLUGINS``: a comma-separated list of distribution
or entry-point names; the empty string loads none. `get_registry` imports them only when a
component is asked for that no built-in provides (or for ``fdm plugins`` / ``fdm env``), so a slow
or broken plugin costs nothing to a run that does not use it.
"""

from __future__ import annotations

import functools
import logging
import os
import time
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
PLUGIN_FAILURES = (Exception, SystemExit)  # what plugin code may raise; KeyboardInterrupt passes


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _base_class(kind: str) -> type:
    """The class every component of `kind` must be an instance of."""
    from .schedules import NoiseSchedule, StageSchedule
    from .transform import SignalTransform

    return {
        "transform": SignalTransform,
        "noise_schedule": NoiseSchedule,
        "stage_schedule": StageSchedule,
    }[kind]


class PluginError(RuntimeError):
    """A broken plugin component: a name registered by two plugins, a factory that failed or
    returned the wrong kind."""


class InvalidPluginError(PluginError):
    """A plugin fdm cannot register: pluggy rejected its hooks (unknown hook name or argument),
    a hook raised, or it called ``register`` with something other than a name and a callable."""

    def __init__(self, plugin: str, distribution: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"fdm plugin {plugin!r} from {distribution!r} is invalid: {reason}")


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
    fix: str = ""


@dataclass(frozen=True)
class _Pending:
    """An external entry point not imported yet."""

    ep: metadata.EntryPoint
    distribution: str
    version: str


@dataclass
class Registry:
    """Name -> factory tables for each component kind, with where each came from."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    errors: list[LoadError] = field(default_factory=list)
    plugins: list[tuple[str, str, str]] = field(default_factory=list)  # (module, dist, version)
    import_seconds: dict[str, float] = field(default_factory=dict)  # "dist:module" -> seconds
    clashes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # -> distributions
    external: list[str] = field(default_factory=list)  # external distributions allowed to load
    pending: list[_Pending] = field(default_factory=list, repr=False)
    pm: pluggy.PluginManager = field(default_factory=_plugin_manager, repr=False)

    def add(
        self, kind: str, name: str, factory: Callable[..., Any], dist: str, version: str
    ) -> None:
        """Add one component. A built-in's name taken by a plugin keeps the built-in (the
        plugin is reported); a name two external plugins register refuses to build."""
        table = self.entries[kind]
        if (kind, name) in self.clashes:
            self.clashes[kind, name].append(dist)
        elif name not in table:
            table[name] = Entry(name, kind, factory, dist, version)
        elif table[name].distribution in BUILTIN_DISTRIBUTIONS:
            builtin = table[name].distribution
            self._report(name, dist, f"registers {kind} {name!r}, a name {builtin} provides: "
                         "the built-in is kept; rename the plugin's")  # fmt: skip
        else:
            self.clashes[kind, name] = [table.pop(name).distribution, dist]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        """The entry for `name`; external plugins are imported on the first name no loaded
        plugin provides."""
        if name not in self.entries[kind] and (kind, name) not in self.clashes:
            self.load_external()
        if (kind, name) in self.clashes:
            first, *others = self.clashes[kind, name]
            raise PluginError(
                f"{kind} {name!r} is registered by {first!r} and by {', '.join(map(repr, others))}"
                f"; keep one: FDM_LOAD_PLUGINS={first} (or pip uninstall the other)"
            )
        try:
            return self.entries[kind][name]
        except KeyError:
            allowed = ", ".join(self.names(kind)) or "none registered"
            raise KeyError(f"unknown {kind} {name!r}; registered: {allowed}") from None

    def build(self, kind: str, spec: dict[str, Any]) -> Any:
        """Build a component from ``{"name": ..., **params}``. Parameters the factory refuses
        stay a ValueError; any other failure, or a result of the wrong kind, is a PluginError
        naming the component and its distribution."""
        params = dict(spec)
        name = params.pop("name")
        entry = self.get(kind, name)
        where = f"{kind} {name!r} from {entry.distribution} {entry.version}"
        try:
            component = entry.factory(**params)
        except ValueError:
            raise
        except PLUGIN_FAILURES as exc:
            raise PluginError(f"{where} failed to build: {_describe(exc)}") from None
        expected = _base_class(kind)
        if not isinstance(component, expected):
            raise PluginError(
                f"{where} built a {type(component).__name__}, not a {expected.__name__}"
            )
        return component

    def register_plugin(self, plugin: object, distribution: str, version: str = "0") -> None:
        """Register a plugin object (e.g. a module of `hookimpl` functions) and run its hooks;
        its components are kept only if every hook succeeds."""
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
            raise InvalidPluginError(label, distribution, f"{reason} (hooks: {hooks})") from None
        staged: list[tuple[str, str, Callable[..., Any]]] = []
        try:
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            for kind, hook in KINDS.items():
                call = self.pm.subset_hook_caller(hook, remove_plugins=others)
                call(register=functools.partial(_stage, staged, kind))
        except PLUGIN_FAILURES as exc:
            self.pm.unregister(name=name)
            raise InvalidPluginError(label, distribution, _describe(exc)) from None
        for kind, component, factory in staged:
            self.add(kind, component, factory, distribution, version)
        self.plugins.append((label, distribution, version))

    def load_external(self) -> None:
        """Import the external plugins not imported yet (`get_registry` defers them)."""
        pending, self.pending = self.pending, []
        for item in pending:
            self._load(item.ep, item.distribution, item.version)

    def _load(self, ep: metadata.EntryPoint, dist: str, version: str) -> None:
        start = time.perf_counter()
        try:
            plugin = ep.load()
        except PLUGIN_FAILURES as exc:  # a broken plugin must not take the library down
            self._report(ep.name, dist, f"failed to import: {_describe(exc)}")
            return
        finally:
            self.import_seconds[f"{dist}:{ep.name}"] = time.perf_counter() - start
        try:
            self.register_plugin(plugin, dist, version)
        except InvalidPluginError as exc:
            self._report(ep.name, dist, f"is invalid: {exc.reason}")

    def _report(self, plugin: str, distribution: str, error: str) -> None:
        fix = _fix(distribution, self)
        logger.warning("fdm plugin %r from %s %s (%s)", plugin, distribution, error, fix)
        self.errors.append(LoadError(plugin, distribution, error, fix))


def _stage(staged: list, kind: str, name: object, factory: object) -> None:
    """`register(name, factory)` as a hook sees it: checked, then kept until every hook ran."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"register() needs a non-empty string name, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register({name!r}, ...) needs a class or callable, got {factory!r}")
    staged.append((kind, name, factory))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _fix(distribution: str, registry: Registry) -> str:
    """The command that stops a broken external plugin from loading."""
    if distribution in BUILTIN_DISTRIBUTIONS:
        return f"reinstall {distribution}"
    others = ",".join(d for d in registry.external if d != distribution)
    return f"pip uninstall {distribution}, or leave it out: FDM_LOAD_PLUGINS={others!r}"


@functools.cache
def _package_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(obj: object) -> str:
    """The installed distribution (and version) whose package defines `obj`'s class, for
    messages that must say which plugin is at fault; "unknown" for classes defined elsewhere."""
    package = type(obj).__module__.split(".")[0]
    names = _package_distributions().get(package)
    if not names:
        return "unknown distribution"
    try:
        return f"{names[0]} {metadata.version(names[0])}"
    except metadata.PackageNotFoundError:
        return names[0]


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _allowed(env: str | None, ep: metadata.EntryPoint, dist: str) -> bool:
    if dist in BUILTIN_DISTRIBUTIONS or env is None:
        return True
    wanted = {_normalize(w.strip()) for w in env.split(",") if w.strip()}
    return dist in wanted or _normalize(ep.name) in wanted


def load_registry(load_plugins: str | None = None, lazy: bool = False) -> Registry:
    """Discover every ``fdm`` entry point and build a registry.

    `load_plugins` overrides ``FDM_LOAD_PLUGINS`` (None: read the environment; unset = all).
    With `lazy`, external plugins are imported only when `Registry.get` misses a name (or by
    `Registry.load_external`); built-ins always load.
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
        registry.pending.append(_Pending(ep, dist, version))
        if dist not in BUILTIN_DISTRIBUTIONS and dist not in registry.external:
            registry.external.append(dist)
    builtins = [p for p in registry.pending if p.distribution in BUILTIN_DISTRIBUTIONS]
    registry.pending = [p for p in registry.pending if p not in builtins]
    for item in builtins:
        registry._load(item.ep, item.distribution, item.version)
    if not lazy:
        registry.load_external()
    return registry


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use (external plugins on first need)."""
    global _default
    if _default is None:
        _default = load_registry(lazy=True)
    return _default


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    global _default
    _default = None
