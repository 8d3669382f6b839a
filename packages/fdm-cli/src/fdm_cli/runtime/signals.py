"""Stopping a long job on SIGINT/SIGTERM at the next safe point instead of killing it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def graceful_stop() -> Iterator[dict]:
    """The first SIGINT/SIGTERM sets a flag (checked after each step: the run stops with a
    checkpoint) instead of killing the run; a second one stops it at once, wherever it is, as
    KeyboardInterrupt. Every file is written atomically, so the last complete checkpoint and
    its `latest` pointer survive either way."""
    flag = {"signal": None}

    def handler(signum: int, _frame: object) -> None:
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
