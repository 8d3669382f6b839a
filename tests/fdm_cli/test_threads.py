"""fdm_cli.runtime.threads: the CPU thread count is pinned when asked, otherwise follows the load.

The tuner is driven by a fake machine whose step time depends on the thread count and on whether
another process is busy, with the ratios measured on the 2-core benchmark machine (BENCHMARKS.md,
threading table): quiet 2.60 / 1.27 steps/s with 2 / 1 threads, busy 0.74 / 1.18.
"""

from __future__ import annotations

import random

import pytest
import torch

from fdm_cli.runtime import threads as threads_
from fdm_cli.runtime.threads import ThreadTuner, configure_threads, thread_counts

QUIET = {2: 1 / 2.60, 1: 1 / 1.27}
BUSY = {2: 1 / 0.74, 1: 1 / 1.18}


class FakeMachine:
    """Seconds per step by thread count; `warmup` extra seconds on the first step after a change."""

    def __init__(self, costs: dict[int, float], warmup: float = 0.0, jitter: float = 0.03):
        self.costs, self.warmup, self.jitter = costs, warmup, jitter
        self.now, self.threads, self.changed = 0.0, 0, False
        self.rng = random.Random(0)

    def set_threads(self, n: int) -> None:
        self.threads, self.changed = n, True

    def clock(self) -> float:
        return self.now

    def run(self, tuner: ThreadTuner, steps: int, kinds: dict | None = None, block=33) -> float:
        """`steps` steps (`block` of each kind in turn, at the kind's cost factor); returns their
        seconds."""
        start = self.now
        keys = list(kinds or {None: 1.0})
        for i in range(steps):
            key = keys[(i // block) % len(keys)]
            cost = self.costs[self.threads] * (kinds or {None: 1.0})[key]
            cost *= 1 + self.jitter * (2 * self.rng.random() - 1)
            if self.changed:
                cost, self.changed = cost + self.warmup, False
            self.now += cost
            tuner.tick(key)
        return self.now - start


def tuner_on(machine: FakeMachine, counts: tuple[int, ...] = (2, 1)) -> ThreadTuner:
    tuner = ThreadTuner(list(counts), clock=machine.clock, set_threads=machine.set_threads)
    tuner.tick()  # the loop's first step starts the clock
    return tuner


def test_quiet_machine_keeps_every_core_and_loses_under_3_percent() -> None:
    """Catches a tuner that leaves the fastest count on a quiet machine or probes too often."""
    m = FakeMachine(QUIET)
    tuner = tuner_on(m)
    seconds = m.run(tuner, 2000)
    assert tuner.best == 2 and tuner.switches == 0
    assert seconds <= 1.03 * 2000 * QUIET[2]


def test_a_busy_process_moves_it_to_fewer_threads_within_seconds() -> None:
    """Catches a tuner that never probes once it has settled, or ignores a slow-down."""
    m = FakeMachine(QUIET)
    tuner = tuner_on(m)
    m.run(tuner, 1000)  # settled: the probe period has grown to its maximum
    m.costs = BUSY
    seconds = m.run(tuner, 1000)
    assert tuner.best == 1
    assert seconds <= 1000 * BUSY[1] + 25  # found within seconds, not after a 160 s period


def test_a_probe_that_is_far_slower_ends_after_one_step() -> None:
    """Beside a process that spins its own OpenMP threads, a step with every core can take 20x
    longer (seen in a README run beside the quality benchmark): catches a probe that runs all
    its steps however slow the first one was."""
    m = FakeMachine({2: 17.0, 1: 0.85})
    tuner = tuner_on(m)
    seconds = m.run(tuner, 1000)
    assert tuner.best == 1
    assert seconds <= 1.3 * 1000 * 0.85 + 3 * 17.0  # the start at 2 threads, then short probes


def test_it_returns_to_every_core_when_the_machine_is_quiet_again() -> None:
    m = FakeMachine(BUSY)
    tuner = tuner_on(m)
    m.run(tuner, 300)
    assert tuner.best == 1
    m.costs = QUIET
    seconds = m.run(tuner, 2000)
    assert tuner.best == 2
    assert seconds <= 1.08 * 2000 * QUIET[2]


def test_a_slow_first_step_after_a_change_does_not_decide() -> None:
    """A pool-resize cost on the first step after a change (as real OpenMP has) must not hide
    the better count: catches a tuner that decides on one step (the first) of its probe."""
    m = FakeMachine(BUSY, warmup=1.0)
    tuner = tuner_on(m)
    m.run(tuner, 300)
    assert tuner.best == 1


def test_steps_are_compared_with_steps_of_their_own_kind() -> None:
    """Sampler stages differ 16x in cost (32x32 against 8x8): catches a tuner that compares a
    probe during a cheap stage with the expensive ones and switches on a quiet machine."""
    m = FakeMachine(QUIET)
    tuner = tuner_on(m)
    m.run(tuner, 3000, kinds={2: 1 / 16, 1: 1 / 4, 0: 1.0}, block=2)
    assert tuner.best == 2 and tuner.switches == 0


def test_pause_leaves_the_next_interval_untimed() -> None:
    m = FakeMachine(QUIET)
    tuner = tuner_on(m)
    m.run(tuner, 10)
    tuner.pause()
    m.now += 100.0  # a checkpoint: no training step
    m.run(tuner, 500)
    assert tuner.switches == 0 and tuner.best == 2


def test_a_single_count_is_only_set() -> None:
    m = FakeMachine({3: 1.0})
    tuner = tuner_on(m, (3,))
    m.run(tuner, 500)
    assert m.threads == 3 and tuner.best == 3 and tuner.current == 3


def test_thread_counts_halve_down_to_one() -> None:
    assert thread_counts(16) == [16, 8, 4, 2, 1]
    assert thread_counts(6) == [6, 3, 1]
    assert thread_counts(1) == [1]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_pins_or_tunes(monkeypatch, restore_threads) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_, "available_cores", lambda: 4)
    assert configure_threads(3).counts == [3]  # --threads 3
    assert torch.get_num_threads() == 3
    assert configure_threads(None).counts == [4, 2, 1]  # the default: adapted
    assert torch.get_num_threads() == 4
    assert configure_threads(None, local_ranks=2).counts == [2]  # CPU DDP: a share each
    torch.set_num_threads(1)
    assert configure_threads(None, tune=False).counts == [1]  # on a GPU: left as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads(None).counts == [1]  # the environment pins it


def test_sampling_ticks_once_per_step_by_stage(ds_run) -> None:
    """Catches `generate` not timing sampler steps, or timing them without their stage."""
    from fdm_cli.generation.sampling import generate, load_model
    from fdm_core import SamplerConfig

    class Recorder:
        def __init__(self) -> None:
            self.keys: list = []
            self.pauses = 0

        def tick(self, key=None) -> None:
            self.keys.append(key)

        def pause(self) -> None:
            self.pauses += 1

    rec = Recorder()
    loaded = load_model(ds_run)
    config = SamplerConfig(steps=6)
    generate(loaded, range(3), 0, config, batch_size=2, threads=rec)
    k = loaded.process.num_stages
    assert rec.pauses == 2  # one per batch
    assert len(rec.keys) == 2 * 6
    assert set(rec.keys) == set(range(k))
