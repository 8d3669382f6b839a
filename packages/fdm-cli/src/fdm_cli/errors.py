"""User errors of the `fdm` command: one clear line, exit code 2, no traceback (unless --debug).

`cli_errors` wraps each command; `CommandGroup` makes Typer's own usage errors one line too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix: a bad flag value, config, file or image.

    The message names what is wrong and what is allowed; the CLI prints it as one line.
    """


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: ``field.path: message (got value)`` for each problem."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
        where = ".".join(x for x in (prefix, loc) if x)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = err.get("input")
        quiet = isinstance(got, dict) or got is None or (isinstance(got, str) and repr(got) in msg)
        shown = "" if quiet else f" (got {got!r})"
        parts.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return "; ".join(parts)


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
            else:
                message = str(exc)
            _err_console().print(f"fdm: error: {message}", markup=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _err_console().print("fdm: interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


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
