"""User errors of the `fdm` command: one clear line, exit code 2, no traceback (unless --debug).

`cli_errors` wraps each command; `CommandGroup` makes Typer's own usage errors one line too.
"""

from __future__ import annotations

import functools
import os
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup
from typer.models import ArgumentInfo, ParameterInfo

from fdm_cli.errors import UserError, format_validation_error

EXIT_USER_ERROR = 2
F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "FDM_DEBUG"


_STATE = {"debug": False}


def set_debug(debug: bool) -> None:
    """``--debug``: show tracebacks instead of one-line errors."""
    _STATE["debug"] = debug


def _debug() -> bool:
    return _STATE["debug"] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def cli_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and exit status 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, ValidationError, OSError, RuntimeError) as exc:
            if _debug() or (isinstance(exc, RuntimeError) and not _is_plugin_error(exc)):
                raise
            if isinstance(exc, ValidationError):
                message = f"invalid value: {format_validation_error(exc)}"
            elif isinstance(exc, OSError) and not isinstance(exc, UserError):
                where = f" {exc.filename}" if exc.filename else ""
                message = f"cannot access{where}: {exc.strerror or exc}"
            elif isinstance(exc, UserError):
                message = exc.with_names(flag_names(fn))
            else:
                message = str(exc)
            _err_console().print(f"fdm: error: {message}", markup=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _err_console().print("fdm: interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Parameters of the Python API that no command declares under that name.
API_FLAGS = {"overrides": "--set", "run_dir": "--out"}


@functools.cache
def flag_names(command: Callable[..., Any]) -> dict[str, str]:
    """The flag of each parameter of `command` (``batch_size`` -> ``--batch-size``, an argument
    in capitals), read from its Typer annotations, for `UserError.with_names`."""
    names = dict(API_FLAGS)
    try:
        hints = typing.get_type_hints(command, include_extras=True)
    except NameError:  # an annotation that cannot be resolved here: keep the parameter names
        return names
    for name, hint in hints.items():
        info = next(
            (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, ParameterInfo)), None
        )
        if info is None:
            continue
        key = name.rstrip("_")
        if isinstance(info, ArgumentInfo):
            names[key] = key.upper()
            continue
        # Under Annotated, typer.Option("--json") keeps its first declaration in `default`.
        given = (info.default, *(info.param_decls or ()))
        declared = [d.split("/") for d in given if isinstance(d, str) and d.startswith("--")]
        on, *off = declared[0] if declared else ["--" + key.replace("_", "-")]
        names[key] = names[f"{key}=True"] = on
        if off:  # "--ema/--no-ema"
            names[f"{key}=False"] = off[0]
    return names


def _is_plugin_error(exc: BaseException) -> bool:
    """A plugin conflict from fdm-core's registry (two plugins registering one name): the user's
    installation is at fault, so it is one line too. (Looked up without importing fdm_core,
    which only a command that loaded the registry can have raised it from.)"""
    registry = sys.modules.get("fdm_core.registry")
    return registry is not None and isinstance(exc, registry.PluginError)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Typer's usage errors (unknown option, a value outside the choices) as one line too."""
    try:
        yield
    except typer.TyperException as exc:
        if getattr(exc, "exit_code", None) != EXIT_USER_ERROR:
            raise
        message = exc.format_message().replace("Value error, ", "")
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _err_console().print(f"fdm: error: {message}{hint}", markup=False)
        raise typer.Exit(EXIT_USER_ERROR) from None


class CommandGroup(TyperGroup):
    """The `fdm` command group: usage errors are one line, like every other user error."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)
