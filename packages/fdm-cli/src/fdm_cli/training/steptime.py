"""Where a training step's time goes: data, forward, backward, optimizer.

`fdm train` marks the boundaries of the four phases of every step; the progress line shows each
phase's share of the steps since the last update, and the closing line its share of the run, so
a data-bound run (a large data share) is visible. On CPU a boundary is a `time.perf_counter`
reading. On CUDA it is a recorded `torch.cuda.Event`, so timing adds no synchronisation: the
events of every step since the last read are resolved together when the window (or the total)
is read, at the log window where the loop reads its statistics back anyway. An event interval
is the time the GPU took from one boundary to the next, waiting for the host included, so a
GPU starved by the data path still shows a large data share.
"""

from __future__ import annotations

from itertools import pairwise
from time import perf_counter

import torch

PHASES = ("data", "forward", "backward", "optimizer")


class StepTimer:
    """Seconds spent in each of `PHASES`, summed over steps: `total` over the run (this
    process), `window` since the last `take_window`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._total = dict.fromkeys(PHASES, 0.0)
        self.window = dict.fromkeys(PHASES, 0.0)
        self._marks: list[tuple[str, float | torch.cuda.Event]] = []  # (phase ended, when)
        self._pending: list[list[tuple[str, float | torch.cuda.Event]]] = []  # finished, unread

    def _now(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        """A step begins: its data phase (reading the batch) starts now."""
        self._marks = [("", self._now())]

    def mark(self, phase: str | None = None) -> None:
        """`phase` ends now (default: the phase after the last one ended, in `PHASES` order).
        A phase may end several times in a step (gradient accumulation alternates forward and
        backward); each interval counts for the phase that ends it."""
        if phase is None:
            last = self._marks[-1][0]
            phase = PHASES[PHASES.index(last) + 1 if last else 0]
        self._marks.append((phase, self._now()))

    def stop(self) -> None:
        """The step's last phase ends; its seconds are added to `total` and `window` when read
        (on CPU at once)."""
        self.mark("optimizer")
        ended = {phase for phase, _ in self._marks[1:]}
        if ended != set(PHASES):
            raise RuntimeError(f"a step has {len(PHASES)} phases, got {len(ended)}")
        self._pending.append(self._marks)
        if not self.cuda:
            self._settle()

    def _settle(self) -> None:
        """Add the pending steps' phase seconds (on CUDA: wait for their last event first)."""
        if not self._pending:
            return
        if self.cuda:
            self._pending[-1][-1][1].synchronize()
        for marks in self._pending:
            for (_, a), (phase, b) in pairwise(marks):
                s = a.elapsed_time(b) / 1000 if self.cuda else b - a
                self._total[phase] += s
                self.window[phase] += s
        self._pending = []

    @property
    def total(self) -> dict[str, float]:
        """Seconds per phase over the run so far."""
        self._settle()
        return self._total

    def take_window(self) -> dict[str, float]:
        """The seconds per phase since the last call, then start a new window."""
        self._settle()
        window, self.window = self.window, dict.fromkeys(PHASES, 0.0)
        return window


def format_shares(seconds: dict[str, float]) -> str:
    """'data 4% fwd 31% bwd 52% opt 13%': each phase's share of their sum ('-' before any)."""
    total = sum(seconds.values())
    if total <= 0:
        return "-"
    short = {"data": "data", "forward": "fwd", "backward": "bwd", "optimizer": "opt"}
    return " ".join(f"{short[p]} {100 * seconds[p] / total:.0f}%" for p in PHASES)
