"""User errors of the `fdm` command: one clear line, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations

from pydantic import ValidationError

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
