"""The GPU path of `fdm train`, checked on CPU: bf16 autocast only around the network
(docs/design.md §6.5), torch.compile of the UNet, and the per-phase step timing."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch._dynamo.utils import counters

import fdm_core.loss as loss_module
from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.training import steptime
from fdm_cli.training.loop import run_training
from fdm_cli.training.progress import TrainProgress
from fdm_cli.training.setup import LossModule, Run
from fdm_cli.training.steptime import PHASES, StepTimer
from fdm_core import COMPILE_BACKEND_ENV, FDMProcess, load_state
from fdm_models import EMA, MultiStageUNet, dot_product_attention

from .test_train import tiny_config

BLUR = {"sample.num": 1, "sample.steps": 2, "sample.strip_rows": 1}


def _record_training(
    monkeypatch: pytest.MonkeyPatch, precision: str, run_dir: Path, device: str
) -> dict:
    """Train fdm-blur-g for 2 steps at `precision`; return what the loss saw: each stage group's
    z_t and target, the UNet's output dtypes (training calls only) and the loss tensors."""
    seen: dict[str, list] = {"groups": [], "unet_dtypes": [], "losses": []}
    split, forward, loss_fn = (
        FDMProcess.split_by_stage,
        MultiStageUNet.forward_packed,
        loss_module.stage_loss,
    )

    def spy_split(self: FDMProcess, *args: object, **kwargs: object) -> list:
        groups = split(self, *args, **kwargs)
        seen["groups"].extend((g.stage, g.z, g.target) for g in groups)
        return groups

    def spy_forward(self: MultiStageUNet, *args: object, **kwargs: object) -> list:
        out = forward(self, *args, **kwargs)
        if torch.is_grad_enabled():  # training, not the sample grid
            seen["unet_dtypes"].extend(o.dtype for o in out if o is not None)
        return out

    def spy_loss(*args: object, **kwargs: object) -> object:
        out = loss_fn(*args, **kwargs)
        seen["losses"].append(out[0])
        return out

    monkeypatch.setattr(FDMProcess, "split_by_stage", spy_split)
    monkeypatch.setattr(MultiStageUNet, "forward_packed", spy_forward)
    monkeypatch.setattr(loss_module, "stage_loss", spy_loss)
    sets = {"train.precision": precision, "train.device": device}
    cfg = tiny_config(2, preset="fdm-blur-g", **BLUR, **sets)
    run_training(cfg, run_dir, show_progress=False)
    monkeypatch.undo()
    return seen


def needs(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_runs_only_the_network_in_bf16(tmp_path: Path, monkeypatch, device: str) -> None:
    """Under bf16 the blur stage signals, z_t and the targets are the fp32 run's, bit for bit
    (today's bug: blur's encode ran under autocast and came back bf16); the UNet's output is bf16
    and the loss fp32. Catches autocast entered around the whole loss again."""
    needs(device)
    fp32 = _record_training(monkeypatch, "fp32", tmp_path / "fp32", device)
    bf16 = _record_training(monkeypatch, "bf16", tmp_path / "bf16", device)
    assert len(bf16["groups"]) == len(fp32["groups"]) > 2  # 2 steps x every stage
    for (k, z, target), (k32, z32, target32) in zip(bf16["groups"], fp32["groups"], strict=True):
        assert k == k32
        assert z.dtype == target.dtype == torch.float32, k
        assert torch.equal(z, z32) and torch.equal(target, target32), k
    assert bf16["unet_dtypes"] and set(bf16["unet_dtypes"]) == {torch.bfloat16}
    assert set(fp32["unet_dtypes"]) == {torch.float32}
    assert [loss.dtype for loss in bf16["losses"]] == [torch.float32] * 2


# The graph breaks torch itself puts in a compiled optimizer step (`WeightUpdate`): around
# `Optimizer.step`'s body, and at the fused AdamW kernel, which dynamo does not trace.
OPTIMIZER_BREAKS = (
    "Call to `torch._dynamo.graph_break()`",
    "Skip calling `torch.compiler.disable()`d function",
)


def breaks_outside_the_optimizer() -> list[str]:
    """The graph breaks dynamo counted, less the ones torch puts in the optimizer step."""
    reasons = [reason.splitlines()[0] for reason in counters["graph_break"]]
    return [reason for reason in reasons if reason not in OPTIMIZER_BREAKS]


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """train.compile through dynamo + AOTAutograd without inductor's C++ build (minutes on 2
    cores): the graphs are captured and run, inductor's code generation is not exercised."""
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_and_eager_runs_resume_into_each_other(
    tmp_path: Path, aot_eager: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --compile run's checkpoint holds the plain UNet's keys (no ``_orig_mod.``) and its
    learning rate as a float, and resumes without compile, and an eager run's resumes compiled:
    the two runs see the same losses, and each resumed run holds its own kind of learning rate
    (the compiled one its 0-dim tensor, which its update graph reads; `ckpt.load_optimizer`)."""
    cfg = tiny_config(2)
    plain = set(MultiStageUNet(cfg.model).state_dict())
    losses, tensor_lr = {}, []
    load = ckpt.load_optimizer

    def spy(optimizer: torch.optim.Optimizer, tree: dict) -> None:
        load(optimizer, tree)
        tensor_lr.append(isinstance(optimizer.param_groups[0]["lr"], torch.Tensor))

    monkeypatch.setattr(ckpt, "load_optimizer", spy)
    for first, then in ((True, False), (False, True)):
        run_dir = tmp_path / f"compile-{first}"
        run_training(tiny_config(2, **{"train.compile": first}), run_dir, show_progress=False)
        state, _ = load_state(ckpt.latest_checkpoint(run_dir))
        shadow = {k.removeprefix("shadow.") for k in state["ema"] if k.startswith("shadow.")}
        assert set(state["model"]) == plain and shadow <= plain
        assert type(state["optimizer"]["param_groups"][0]["lr"]) is float
        resumed = tiny_config(3, **{"train.compile": then})
        assert run_training(resumed, run_dir, resume=True, show_progress=False).step == 3
        losses[first] = [row[1] for row in read_loss_csv(run_dir / "loss.csv")]
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did capture the loss
    assert not breaks_outside_the_optimizer()  # the loss in one graph
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert len(losses[True]) == 3
    assert tensor_lr == [False, True]


@pytest.mark.slow
def test_inductor_captures_the_whole_loss_once(tmp_path: Path) -> None:
    """--compile with inductor on CPU: the process math, the packed UNet and the loss are one
    graph with static shapes, the EMA update another; steps after the first compile nothing new
    (a recompile raises; no graph break but torch's own around the optimizer step) and see the
    eager run's losses. Catches a graph break (a host read, a Python-side branch on a tensor)
    or a guard that fails every step (a changing Python number such as a float learning rate,
    a shape marked dynamic)."""
    torch._dynamo.reset()
    counters.clear()
    losses = {}
    for compiled in (False, True):
        cfg = tiny_config(4, **BLUR, **{"train.compile": compiled})
        with torch._dynamo.config.patch(error_on_recompile=True):
            run_training(cfg, tmp_path / f"compile-{compiled}", show_progress=False)
        losses[compiled] = [
            row[1] for row in read_loss_csv(tmp_path / f"compile-{compiled}" / "loss.csv")
        ]
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])  # loss, EMA
    assert not breaks_outside_the_optimizer(), dict(counters["graph_break"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    torch._dynamo.reset()


@pytest.mark.cuda
def test_inductor_compiles_the_unet_on_cuda(tmp_path: Path) -> None:
    """The real path: inductor (Triton) on a GPU, bf16, the loss in one graph, no graph break."""
    needs("cuda")
    torch._dynamo.reset()
    counters.clear()
    sets = {"train.compile": True, "train.precision": "bf16", "train.device": "cuda"}
    result = run_training(tiny_config(3, **sets), tmp_path / "run", show_progress=False)
    assert result.step == 3 and math.isfinite(result.last_loss)
    assert counters["stats"]["unique_graphs"] == 2 and not breaks_outside_the_optimizer()
    state, _ = load_state(ckpt.latest_checkpoint(tmp_path / "run"))
    assert not [key for key in state["model"] if "_orig_mod" in key]
    torch._dynamo.reset()


def test_compile_flag_sets_train_compile(cli, tiny, tmp_path: Path) -> None:
    for flag, value in (("--compile", "true"), ("--no-compile", "false")):
        result = cli("train", flag, "--dry-run", "--max-steps", "1", *tiny)
        assert result.exit_code == 0, result.output
        assert f"compile: {value}" in result.output


def test_step_phases_are_timed_and_reported(tmp_path: Path) -> None:
    """Every phase of a step gets time; together they are part of the run's wall time, and the
    closing line and the status line show each phase's share."""
    out = io.StringIO()
    console = Console(file=out, width=400, highlight=False)
    result = run_training(tiny_config(3), tmp_path / "run", console=console, show_progress=False)
    assert result.phase_seconds is not None and list(result.phase_seconds) == list(PHASES)
    assert all(s > 0 for s in result.phase_seconds.values()), result.phase_seconds
    assert sum(result.phase_seconds.values()) < result.wall_s
    done = out.getvalue().strip().splitlines()[-1]
    shares = re.search(r"\(steps: data (\d+)% fwd (\d+)% bwd (\d+)% opt (\d+)%\)", done)
    assert shares is not None, done
    assert abs(sum(map(int, shares.groups())) - 100) <= 2  # rounded shares


def test_each_phase_gets_the_time_of_its_own_work(tmp_path: Path, monkeypatch) -> None:
    """A fake clock that only the work of one phase moves: reading the batch 1 s, the forward
    10 s, the backward 100 s, the EMA update (optimizer phase) 1000 s. Catches a boundary
    marked in the wrong place (e.g. the forward counted as data)."""
    clock = [0.0]

    def costs(seconds: float, method: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            clock[0] += seconds
            return method(*args, **kwargs)

        return timed

    monkeypatch.setattr(steptime, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(Run, "batch", costs(1, Run.batch))
    monkeypatch.setattr(LossModule, "forward", costs(10, LossModule.forward))
    monkeypatch.setattr(torch.Tensor, "backward", costs(100, torch.Tensor.backward))
    monkeypatch.setattr(EMA, "update", costs(1000, EMA.update))
    result = run_training(tiny_config(3), tmp_path / "run", show_progress=False)
    assert result.phase_seconds == {"data": 3, "forward": 30, "backward": 300, "optimizer": 3000}


def test_status_line_shows_phase_shares() -> None:
    out = io.StringIO()
    opts = tiny_config(10).train
    with TrainProgress(Console(file=out, width=400), opts, 0, show=True, main=True) as progress:
        progress.last_line = -math.inf  # a status line is due
        phases = {"data": 3.0, "forward": 1.0, "backward": 0.5, "optimizer": 0.5}
        progress.update(5, 0.25, 12.0, phases)
    assert "step 5: loss 0.2500" in out.getvalue()
    assert "(data 60% fwd 20% bwd 10% opt 10%)" in out.getvalue()


def test_step_timer_splits_a_step_into_its_phases() -> None:
    timer = StepTimer(torch.device("cpu"))
    for _ in range(2):
        timer.start()
        for _ in PHASES[1:]:
            timer.mark()
        timer.stop()
    window = timer.take_window()
    assert list(window) == list(PHASES) and window == timer.total
    assert set(timer.take_window().values()) == {0.0}  # a new window
    timer.start()
    timer.mark()
    with pytest.raises(RuntimeError, match="4 phases, got 2"):  # a step missing phases
        timer.stop()


def test_compiled_attention_resolves_its_backend_outside_the_graph() -> None:
    """Under torch.compile the attention backend (and xformers' one-call probe on CUDA) is
    resolved once at trace time, not traced into the UNet's graph."""
    q = torch.randn(1, 2, 4, 8)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(dot_product_attention, backend="eager", fullgraph=True)(q, q, q)
    torch._dynamo.reset()
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert torch.equal(out, dot_product_attention(q, q, q))
