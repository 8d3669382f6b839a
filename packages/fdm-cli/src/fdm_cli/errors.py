"""The one kind of error a user can fix, and how a pydantic error reads as one line.

Library functions raise :class:`UserError` with a message naming what is wrong and what to do;
the command line (`fdm_cli.cli.console`) prints it as one line with exit status 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import ValidationError

PARAMETER = re.compile(r"`([a-z][a-z0-9_]*(?:=[A-Za-z0-9]+)?)`")  # `batch_size`, `ema=False`


class UserError(Exception):
    """Something the user can fix: a bad parameter value, config, file or image.

    The message names what is wrong and what is allowed. Library code names the parameter at
    fault in backticks, as its caller passed it (``"`batch_size` 7 must be divisible by ..."``);
    the command line prints the message as one line with its own flag in that place
    (`with_names`: ``--batch-size 7 must be divisible by ...``).
    """

    def with_names(self, names: Mapping[str, str]) -> str:
        """The message with each backticked parameter replaced by ``names[parameter]`` (a name
        `names` lacks keeps its backticks)."""
        return PARAMETER.sub(lambda m: names.get(m.group(1), m.group(0)), str(self))


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
