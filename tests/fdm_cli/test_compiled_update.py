"""``train.compile`` runs the AdamW step and the EMA update as one compiled function
(`fdm_cli.training.setup.WeightUpdate`, docs/design.md §6.5): the learning rate and the EMA's
warm-up decay reach it as 0-dim tensors written in place, so a step with a new learning rate and
a new decay runs what the first step compiled, and the weights and the EMA are the eager run's.
Checkpoints hold the learning rate as a float and each run keeps its own kind on resume; fp16's
loss scaler and ``train.nonfinite: skip`` keep working under compile."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from fdm_cli import TrainingStep
from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.training import setup as training_setup
from fdm_cli.training.loop import run_training
from fdm_cli.training.schedule import learning_rate, set_learning_rate
from fdm_cli.training.setup import LossModule, make_optimizer
from fdm_core import COMPILE_BACKEND_ENV, load_state
from fdm_models import MultiStageUNet

from .test_accumulation_fp16 import OverflowingScaler
from .test_gpu_path import breaks_outside_the_optimizer
from .test_train import tiny_config

STEPS = 5
# The compiled update against the eager one after STEPS steps, both from the same gradients:
# only the float32 learning rate and the compiled lerp may round differently.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}
SMALL_SAMPLES = {"sample.num": 1, "sample.steps": 2, "sample.strip_rows": 1}


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """train.compile through dynamo + AOTAutograd without inductor's C++ build."""
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _train(compiled: bool) -> tuple[TrainingStep, list[float], list[int]]:
    """STEPS steps of a tiny fdm-ds through the API, the learning rate warming up over all of
    them (a new value every step) and the EMA decay warming up (d_n = (1 + n) / (10 + n));
    returns the step object, its losses and dynamo's frame count after each step. The loss
    stays eager (its compiled graph is `test_gpu_path`'s), so both runs have the same gradients:
    a compiled loss rounds differently, and AdamW turns a rounding difference in a near-zero
    gradient into a step of up to 2 lr the other way, which would hide what the update does."""
    sets = {"train.compile": compiled, "optim.warmup_steps": STEPS + 1, "optim.ema_warmup": True}
    config = tiny_config(STEPS, **sets)
    step = TrainingStep(config, device="cpu")
    step.loss.static_loss = None
    shape = (config.train.batch_size, *step.process.stage_shapes[0])
    data = torch.Generator().manual_seed(0)
    losses, frames = [], []
    for i in range(STEPS):
        step.set_lr(learning_rate(config, i, 0.0))
        losses.append(float(step(torch.rand(shape, generator=data) * 2 - 1)))
        frames.append(counters["frames"]["total"])
    return step, losses, frames


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_steps_run_the_first_steps_graphs_and_match_eager(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """After the first step nothing is compiled again (dynamo's frame count stays, and a
    recompile would raise), though the learning rate and the EMA decay change every step; the
    EMA update is a whole graph (the only graph breaks are the ones torch puts
    around ``Optimizer.step``'s body and its fused kernel); losses, weights, EMA and AdamW's
    step counts equal the eager run's. Catches a learning rate or decay reaching the graph as a
    Python number (``group["lr"] = lr`` instead of ``fill_``: a recompile every step)."""
    monkeypatch.setenv(COMPILE_BACKEND_ENV, backend)
    torch._dynamo.reset()
    counters.clear()
    eager, eager_losses, _ = _train(False)
    assert counters["frames"]["total"] == 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, losses, frames = _train(True)
    torch._dynamo.reset()
    assert frames[0] > 0 and frames == [frames[0]] * STEPS, frames
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # the EMA update
    assert counters["graph_break"] and not breaks_outside_the_optimizer(), counters["graph_break"]
    lr = compiled.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dim() == 0
    assert float(lr) == pytest.approx(learning_rate(compiled.config, STEPS - 1, 0.0))
    assert compiled.ema.step == eager.ema.step == STEPS
    assert losses == eager_losses
    torch.testing.assert_close(compiled.unet.state_dict(), eager.unet.state_dict(), **TOLERANCE)
    torch.testing.assert_close(compiled.ema.shadow, eager.ema.shadow, **TOLERANCE)
    adam = [s["step"] for s in compiled.optimizer.state.values()]
    assert {float(s) for s in adam} == {float(STEPS)}


def test_checkpoints_keep_each_run_its_own_kind_of_learning_rate() -> None:
    """A compiled run's tensor learning rate is saved as a float; loaded into an eager run's
    optimizer it stays a float, and an eager run's state loaded into a compiled run's optimizer
    is written into that run's own tensor (the one its graph reads), where torch's
    ``load_state_dict`` alone would leave the saved float."""
    config = tiny_config(1)
    unet = MultiStageUNet(config.model)
    device = torch.device("cpu")
    compiled = make_optimizer(unet, config.optim, device, compile=True)
    eager = make_optimizer(unet, config.optim, device)
    tensor = compiled.param_groups[0]["lr"]
    set_learning_rate(compiled, 0.25)
    tree = ckpt.optimizer_to_tree(compiled.state_dict())
    assert type(tree["param_groups"][0]["lr"]) is float and tree["param_groups"][0]["lr"] == 0.25
    ckpt.load_optimizer(eager, tree)
    assert type(eager.param_groups[0]["lr"]) is float and eager.param_groups[0]["lr"] == 0.25
    set_learning_rate(eager, 0.5)
    ckpt.load_optimizer(compiled, ckpt.optimizer_to_tree(eager.state_dict()))
    assert compiled.param_groups[0]["lr"] is tensor and float(tensor) == 0.5


@pytest.mark.slow
def test_fp16_scaler_and_nonfinite_skip_work_under_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aot_eager: None
) -> None:
    """Under fp16 the update stays eager (the scaler decides on the host whether to step) and
    overflow steps are still skipped and counted; under ``train.nonfinite: skip`` a NaN batch
    reaches neither the compiled AdamW step nor the EMA: both count the good steps only."""
    make_scaler = training_setup.make_scaler
    monkeypatch.setattr(training_setup, "make_scaler", lambda *_: OverflowingScaler({2}))
    sets = {"train.compile": True, **SMALL_SAMPLES}
    result = run_training(tiny_config(3, **sets), tmp_path / "fp16", show_progress=False)
    assert result.step == 3 and result.overflow_steps == 1
    monkeypatch.setattr(training_setup, "make_scaler", make_scaler)

    forward, calls = LossModule.forward, []

    def poisoned(self: LossModule, batch: object) -> object:
        out = forward(self, batch)
        calls.append(1)
        if len(calls) == 2:
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(LossModule, "forward", poisoned)
    run_dir = tmp_path / "skip"
    cfg = tiny_config(3, **sets, **{"train.nonfinite": "skip"})
    assert run_training(cfg, run_dir, show_progress=False).step == 3
    assert len(calls) == 4  # one batch skipped
    state, _ = load_state(ckpt.latest_checkpoint(run_dir))
    assert int(state["ema"]["step"]) == 3
    adam = ckpt.optimizer_from_tree(state["optimizer"])["state"]
    assert {float(s["step"]) for s in adam.values()} == {3.0}
