"""The training loop's progress: a live bar on a terminal, a status line in a log (rank 0 only)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fdm_cli.config.base import LoopOptions
from fdm_cli.training.steptime import format_shares


class TrainProgress:
    """A live bar on a terminal (rank 0); in a log, a plain status line every 30 s instead."""

    def __init__(
        self, console: Console, opts: LoopOptions, step: int, show: bool, main: bool
    ) -> None:
        self.console, self.opts, self.show = console, opts, show
        self.bar = Progress(
            TextColumn("[bold]step {task.fields[step]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[ips]} it/s"),
            TextColumn("{task.fields[phases]}"),
            TextColumn("{task.fields[memory]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not (show and main and console.is_terminal),
            transient=False,
        )
        self.task = self.bar.add_task(
            "train", total=1000, step=step, loss="-", ips="-", phases="", memory=""
        )
        self.rate_t = self.last_line = time.monotonic()
        self.rate_step = step

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(
        self,
        step: int,
        loss: float,
        elapsed: float,
        phases: dict[str, float] | None = None,
        memory_gib: float | None = None,
    ) -> float:
        """Step, loss, steps per second, the share of the budget spent and, given `phases`
        (seconds per step phase since the last update, `fdm_cli.training.steptime`), each
        phase's share, and given `memory_gib`, the peak GPU memory since the last update.
        Returns the steps per second since the last update."""
        now = time.monotonic()
        ips = (step - self.rate_step) / max(1e-9, now - self.rate_t)
        self.rate_t, self.rate_step = now, step
        opts = self.opts
        shares = "" if phases is None else format_shares(phases)
        memory = "" if memory_gib is None else f"mem {memory_gib:.2f} GiB"
        frac = max(
            step / opts.max_steps if opts.max_steps else 0.0,
            elapsed / (opts.minutes * 60) if opts.minutes else 0.0,
        )
        self.bar.update(
            self.task,
            completed=min(1000, 1000 * frac),
            step=step,
            loss=f"{loss:.4f}",
            ips=f"{ips:.2f}",
            phases=shares,
            memory=memory,
        )
        if self.show and not self.console.is_terminal and now - self.last_line >= 30:
            self.last_line = now
            rate = f"{ips:.2f} it/s" + (f" ({shares})" if shares else "")
            rate += f", {memory}" if memory else ""
            self.console.print(
                f"step {step}: loss {loss:.4f}, {rate}, {elapsed / 60:.1f} min, "
                f"{100 * min(1.0, frac):.0f}% of the budget",
                markup=False,
            )
        return ips

    def note(self, message: str) -> None:
        """A line above the bar."""
        self.bar.console.print(message, markup=False)

    def finish(self, step: int, loss: float | None, interrupted: bool) -> None:
        done = self.bar.tasks[0].completed if interrupted else 1000
        self.bar.update(
            self.task, completed=done, step=step, loss="-" if loss is None else f"{loss:.4f}"
        )
