"""A training step reads nothing back to the host: the statistics stay on the device until the
log window is read (`fdm_cli.training.stepwindow`), so a GPU step can run ahead of the host.

On CPU every host read made from Python is counted (`fdm_core.HostReads`); on CUDA the same
steps run under ``torch.cuda.set_sync_debug_mode("error")``, which also catches synchronising
kernels that Python never sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fdm_cli.training import loop as train_module
from fdm_cli.training import step as step_module
from fdm_cli.training.loop import run_training
from fdm_cli.training.stepwindow import StepWindow
from fdm_core import HostReads

from .test_train import tiny_config

SMALL_SAMPLES = {"sample.num": 1, "sample.steps": 3, "sample.strip_rows": 1}


def _count_step_reads(monkeypatch: pytest.MonkeyPatch) -> list[HostReads]:
    """Patch the loop so every `train_step` and `StepWindow.add` runs inside a `HostReads`;
    returns the list the counters of each step are appended to."""
    per_step: list[HostReads] = []
    step, add = train_module.train_step, StepWindow.add

    def counted_step(*args: object, **kwargs: object) -> object:
        with HostReads() as reads:
            result = step(*args, **kwargs)
        per_step.append(reads)
        return result

    def counted_add(self: StepWindow, *args: object, **kwargs: object) -> None:
        with HostReads() as reads:
            add(self, *args, **kwargs)
        per_step[-1].counts.update(reads.counts)
        per_step[-1].sites.extend(reads.sites)

    monkeypatch.setattr(train_module, "train_step", counted_step)
    monkeypatch.setattr(StepWindow, "add", counted_add)
    return per_step


@pytest.mark.parametrize(
    ("preset", "grad_accum"), [("fdm-ds", 1), ("ddpm", 1), ("fdm-blur-g", 1), ("fdm-ds", 3)]
)
def test_a_training_step_reads_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str, grad_accum: int
) -> None:
    """Catches any `float(loss)`, `.item()`, `bool(tensor)` or `nonzero` back in the step: the
    per-stage `float(error.mean())` of the old loss, the `(delta > 0).any()` of the old mean,
    the `torch.nonzero` grouping of the old split; with micro-batches, their merged losses."""
    per_step = _count_step_reads(monkeypatch)
    reads = []
    read = StepWindow.read
    monkeypatch.setattr(StepWindow, "read", lambda self: reads.append(len(self)) or read(self))
    sets = {"train.log_every": 3, "train.grad_accum": grad_accum}
    cfg = tiny_config(6, preset=preset, **SMALL_SAMPLES, **sets)
    run_training(cfg, tmp_path / "run", show_progress=False)
    assert len(per_step) == 6
    for i, counter in enumerate(per_step):
        assert counter.total == 0, f"step {i + 1} read values back: {counter.sites}"
    assert reads == [3, 3, 0], "one read per log window (and an empty one at the end)"


def test_the_counter_sees_a_read_in_the_step(tmp_path: Path, monkeypatch) -> None:
    """The negative control: a step that reads its loss back is counted."""
    per_step = _count_step_reads(monkeypatch)
    real = step_module.StepResult

    def reading(loss: torch.Tensor, *args: object) -> object:
        float(loss)
        return real(loss, *args)

    monkeypatch.setattr(step_module, "StepResult", reading)
    run_training(tiny_config(2, **SMALL_SAMPLES), tmp_path / "run", show_progress=False)
    assert [c.counts["__float__"] for c in per_step] == [1, 1]
    assert "test_host_syncs.py" in per_step[0].sites[0]


@pytest.mark.cuda
def test_cuda_steps_do_not_synchronise(tmp_path: Path, monkeypatch) -> None:
    """On a GPU: every step after the first runs under sync debug mode 'error' (the first
    allocates the optimizer state and the step's constant tensors)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    step = train_module.train_step
    calls = []

    def strict(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            return step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train_module, "train_step", strict)
    cfg = tiny_config(6, **SMALL_SAMPLES, **{"train.device": "cuda", "train.log_every": 3})
    run_training(cfg, tmp_path / "run", show_progress=False)
    assert len(calls) == 6
