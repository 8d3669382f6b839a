"""How many CPU threads torch uses: pinned when asked, otherwise adapted to the machine's load.

On a quiet machine one OpenMP thread per core is fastest. Beside another busy process it is the
slowest choice: OpenMP threads wait for each other at every barrier, and the one that shares its
core with the other process holds up the rest. On the 2-core benchmark machine an fdm-ds training
step ran at 2.60 steps/s alone and 0.74 beside a busy process with torch's 2 threads, and at 1.27
and 1.18 with 1 thread (BENCHMARKS.md, threading table). No fixed count is good in both cases, so
unless the count is pinned `ThreadTuner` times the work and keeps whichever count is faster now.

Pinned counts (no tuning, and bit-identical floating point from run to run):
- ``--threads N`` (``train.threads``);
- ``OMP_NUM_THREADS`` in the environment (torch reads it at import);
- CPU DDP: each of the local ranks gets an equal share of the cores.

The tuner runs the work with the current best count (every core at first). 3 s after it starts,
then every `period` seconds (10 s, doubling up to 160 s while the best stays best) or as soon as
the step time grows by 30%, it runs a few steps with a neighbouring count, and switches if those
are at least 10% faster; a probe step 4 times slower than the best ends the probe at once (beside
another process that spins OpenMP threads too, one oversubscribed step can take 20 times
longer). Steps are compared only with steps of the same kind (`key`: a sampler
stage, whose cost differs), by their medians, so that the slower first step after a change (the
thread pool resizes) does not decide.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable

import torch

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_counts(cores: int) -> list[int]:
    """The counts the tuner tries: cores, cores / 2, cores / 4, ..., 1 (largest first)."""
    counts = [cores]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


class ThreadTuner:
    """Keeps the fastest of `counts` torch threads; call `tick` after each unit of work.

    With a single count it only sets that count.
    """

    def __init__(
        self,
        counts: list[int],
        *,
        first_probe: float = 3.0,
        min_period: float = 10.0,
        max_period: float = 160.0,
        probe_steps: int = 3,
        margin: float = 0.10,
        slowdown: float = 1.30,
        abort: float = 4.0,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ) -> None:
        self.counts = sorted(set(counts), reverse=True)
        self.min_period, self.max_period = min_period, max_period
        self.probe_steps, self.margin, self.slowdown = probe_steps, margin, slowdown
        self.abort = abort
        self.clock, self._set = clock, set_threads
        self.best = self.counts[0]
        self.switches = 0  # how often the best count changed (for logs and tests)
        self.period = min_period
        self._probing: int | None = None  # the count being tried, if any
        self._times: dict[Hashable, deque[float]] = defaultdict(lambda: deque(maxlen=8))
        self._probe: dict[Hashable, list[float]] = defaultdict(list)
        self._baseline: dict[Hashable, float] = {}
        self._last: float | None = None
        self._next_probe = self.clock() + first_probe
        self._turn = 0  # alternates the probe between the smaller and the larger neighbour
        self._set(self.best)

    @property
    def current(self) -> int:
        """The thread count in use now."""
        return self.best if self._probing is None else self._probing

    def pause(self) -> None:
        """Do not time the interval up to the next `tick` (it was not a unit of work)."""
        self._last = None

    def tick(self, key: Hashable = None) -> None:
        """One unit of work of kind `key` has ended: time it, and maybe try or change a count."""
        now = self.clock()
        last, self._last = self._last, now
        if last is None:
            return
        if self._probing is not None:
            self._probe[key].append(now - last)
            losing = bool(self._times[key]) and now - last > self.abort * self._recent(key)
            if losing or sum(map(len, self._probe.values())) >= self.probe_steps:
                self._finish_probe(now)  # a step `abort` times slower decides at once
            return
        times = self._times[key]
        times.append(now - last)
        if len(times) == 3 and key not in self._baseline:
            self._baseline[key] = statistics.median(times)
        if len(times) >= 3 and (now >= self._next_probe or self._slowed(key)):
            self._start_probe()  # (never on fewer than 3 steps: the first ones warm up)

    # -----------------------------------------------------------------------------------------

    def _recent(self, key: Hashable) -> float:
        """The median of the last 3 times of kind `key` with the best count (the load now)."""
        return statistics.median(list(self._times[key])[-3:])

    def _slowed(self, key: Hashable) -> bool:
        base = self._baseline.get(key)
        return (
            base is not None
            and len(self._times[key]) >= 3
            and self._recent(key) > (self.slowdown * base)
        )

    def _neighbours(self) -> list[int]:
        i = self.counts.index(self.best)
        return [self.counts[j] for j in (i + 1, i - 1) if 0 <= j < len(self.counts)]

    def _start_probe(self) -> None:
        options = self._neighbours()
        if not options:
            self._next_probe = float("inf")  # a single count: nothing to try
            return
        self._probing = options[self._turn % len(options)]
        self._turn += 1
        self._probe.clear()
        self._set(self._probing)

    def _finish_probe(self, now: float) -> None:
        tried, self._probing = self._probing, None
        assert tried is not None
        ratios = [
            statistics.median(times) / self._recent(key)
            for key, times in self._probe.items()
            if self._times[key]
        ]
        if ratios and statistics.median(ratios) < 1 - self.margin:
            log.info("torch threads: %d -> %d (%.2fx faster)", self.best, tried,
                     1 / statistics.median(ratios))  # fmt: skip
            self.best, self.period = tried, self.min_period
            self.switches += 1
            self._times.clear()
        elif ratios:  # the best stays best: look less often
            self.period = min(2 * self.period, self.max_period)
        self._baseline = {k: statistics.median(v) for k, v in self._times.items() if len(v) >= 3}
        self._next_probe = now + self.period
        self._set(self.best)


def configure_threads(
    requested: int | None, local_ranks: int = 1, tune: bool = True
) -> ThreadTuner:
    """Set torch's CPU thread count and return its tuner, which keeps the count fixed when it is
    pinned (see above) or when `tune` is off (work on a GPU, where the CPU threads matter
    little)."""
    if requested:
        return ThreadTuner([requested])
    if not tune or os.environ.get("OMP_NUM_THREADS"):  # torch took OMP_NUM_THREADS at import
        return ThreadTuner([torch.get_num_threads()])
    cores = max(1, available_cores() // local_ranks)
    return ThreadTuner([cores] if local_ranks > 1 else thread_counts(cores))
