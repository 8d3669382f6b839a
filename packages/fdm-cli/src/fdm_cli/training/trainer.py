"""The one training loop of `fdm train` and `fdm train-autoencoder`.

A trainer supplies two objects: a `TrainingRun`, the run being trained (its config, weights,
optimizer, loss log, and where it stands: step, stream position, training seconds), and a
`Trainer`, its steps (one batch, what a step records, reading the records into the loss log,
what is written beside a checkpoint). This module owns everything else, the same for both:

- the call and its run folder: `call_trainer` (the folder's lock, `fdm_cli.artifacts.runlock`;
  flushing denormals on CPU; the DDP shutdown) and `open_run_dir` (the "already holds a run"
  refusal, the sweep of temporary files an interrupted write left);
- resuming or starting (`TrainingRun.begin`): the checkpoint's state, refused when the config
  changed what it must not, the loss log cut back or started, config.yaml, the trackers
  (``train.trackers``, `fdm_cli.training.tracking`) opened at the checkpoint's step;
- the loop (`Trainer.train`): the learning-rate schedule and the step or time budget
  (`fdm_cli.training.schedule`), SIGINT/SIGTERM and ``should_stop``, the progress line and the
  trackers' ``perf/`` scalars (`performance`), a checkpoint every ``train.checkpoint_every``
  steps, the trainer's evaluation when due (its time kept out of the budget: ``train.minutes``
  counts training, checkpoints and samples, not scoring), and at the end the last checkpoint
  and, when stopped early, how to continue;
- the update of a step (`fdm_cli.training.update`): backward, gradient clipping (fp16's
  loss scaler), the non-finite policy (`fdm_cli.training.nonfinite`) and the optimizer step.

The f-DM trainer is `fdm_cli.training.loop` (with `fdm_cli.training.setup`), the autoencoder's
`fdm_cli.training.autoencoder`. A run's config is read through `fdm_cli.config.base`'s types.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from rich.console import Console

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import LossLog
from fdm_cli.artifacts.pictures import atomic_write_bytes
from fdm_cli.artifacts.runlock import locked_run_dir
from fdm_cli.config.base import TrainingConfig
from fdm_cli.errors import UserError
from fdm_cli.runtime import distributed as dist_
from fdm_cli.runtime.device import take_peak_memory
from fdm_cli.runtime.signals import graceful_stop
from fdm_cli.runtime.threads import ThreadTuner
from fdm_cli.training.progress import TrainProgress
from fdm_cli.training.schedule import budget_spent, learning_rate, set_learning_rate
from fdm_cli.training.steptime import PHASES
from fdm_cli.training.tracking import Trackers, check_trackers, open_trackers

Say = Callable[..., None]  # say(message, markup=False): print on rank 0 only


# ---------------------------------------------------------------------------------------------
# Schedule and budget


def agree(ctx: dist_.DistContext, clock: float, stop: bool) -> tuple[float, bool]:
    """Rank 0's clock and whether any rank stops: one small all-reduce under DDP (host values
    only; the other ranks pass a clock of 0)."""
    if not ctx.enabled:
        return clock, stop
    values = torch.tensor([clock, 1.0 if stop else 0.0], dtype=torch.float64)
    clock_sum, stops = dist_.sum_over_ranks(ctx, values).tolist()
    return clock_sum, stops > 0


# ---------------------------------------------------------------------------------------------
# The call and its run folder


@dataclass
class Call:
    """One call of a trainer (`run_training`, `run_autoencoder_training`): the run folder, what
    was asked, where this process trains (`ctx`) and when the call began."""

    run_dir: Path
    resume: bool
    console: Console
    show_progress: bool
    should_stop: Callable[[int], bool] | None  # should_stop(step) -> True: stop as a signal does
    ctx: dist_.DistContext
    t_wall: float  # time.monotonic() at the call

    def say(self, message: str, markup: bool = False) -> None:
        """A `Say`: rank 0 prints on the console, the other ranks stay silent."""
        if self.ctx.is_main:
            self.console.print(message, markup=markup)

    def wall(self) -> float:
        """Seconds since the call began."""
        return time.monotonic() - self.t_wall


ConfigT = TypeVar("ConfigT", bound=TrainingConfig)
ResultT = TypeVar("ResultT")


def call_trainer(
    train: Callable[[ConfigT, Call], ResultT],
    cfg: ConfigT,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    console: Console | None,
    show_progress: bool,
    should_stop: Callable[[int], bool] | None,
    start: Callable[[], dist_.DistContext],
) -> ResultT:
    """``train(cfg, call)``, the `Call` made of the other arguments, `start` giving this
    process's place (DDP is initialised there). It runs holding `run_dir`'s lock (one process
    per run folder, taken before anything is written; `fdm_cli.artifacts.runlock`, which also
    applies the empty / --resume / --overwrite rules of
    `fdm_cli.artifacts.outputs.prepare_run_dir`). On CPU, denormals are flushed to zero
    meanwhile; afterwards torch's default is back and a DDP process group is shut down."""
    t_wall = time.monotonic()
    console = console or Console(highlight=False, soft_wrap=True)
    check_trackers(cfg.train.trackers)  # a missing package: refused before anything is written
    ctx = start()
    cpu = ctx.device.type == "cpu"
    if cpu:
        torch.set_flush_denormal(True)  # denormal gradients can slow CPU kernels several-fold
    try:
        with locked_run_dir(run_dir, overwrite, resume, ctx):
            return train(
                cfg, Call(run_dir, resume, console, show_progress, should_stop, ctx, t_wall)
            )
    finally:
        if cpu:
            torch.set_flush_denormal(False)  # torch's default, for whoever called us
        dist_.shutdown(ctx)


def open_run_dir(run_dir: Path, resume: bool, ctx: dist_.DistContext, say: Say) -> Path | None:
    """The run's latest checkpoint (None: none yet), after refusing a run folder that holds a
    run without --resume; rank 0 removes the temporary files an interrupted write left."""
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(
            f"{run_dir} already holds a run ({latest.name}); pass `resume=True` to "
            "continue it, or choose another `run_dir`"
        )
    if ctx.is_main and (stale := ckpt.sweep_stale_temporaries(run_dir)):
        say(f"removed {len(stale)} temporary file(s) an interrupted write left in {run_dir}")
    return latest


# ---------------------------------------------------------------------------------------------
# The run being trained


class Stateful(Protocol):
    """What a checkpoint saves and restores by name: a model or its EMA."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class TrainingRun(ABC):
    """A run being trained, as the shared loop sees it: the trainer's run (a dataclass) declares
    these attributes as its fields, and names its weights (`weights`)."""

    COMMAND: ClassVar[str]  # the `fdm` command that trains it ("train", "train-autoencoder")
    RESUME_COMPARED: ClassVar[tuple[str, ...]]  # config sections --resume must not change

    cfg: TrainingConfig
    ctx: dist_.DistContext
    run_dir: Path
    optimizer: torch.optim.Optimizer
    log: LossLog
    threads: ThreadTuner
    step: int  # optimizer steps applied
    position: int  # images of the data stream consumed, all ranks together
    elapsed: float  # training seconds, summed over resumes
    resumed: bool  # continued from a checkpoint
    trackers: Trackers = Trackers()  # opened by `begin` (``train.trackers``, rank 0)

    @abstractmethod
    def weights(self) -> dict[str, Stateful]:
        """The named weights a checkpoint holds (before the optimizer, RNG and progress)."""

    def optional_states(self) -> dict[str, Stateful]:
        """What a checkpoint holds besides the weights, optimizer, RNG and progress when the
        run has it (the fp16 loss scaler); restored when the checkpoint holds it."""
        return {}

    def progress(self) -> dict[str, Any]:
        """The checkpoint's ``progress`` entry."""
        return {
            "step": self.step,
            "position": self.position,
            "elapsed_s": self.elapsed,
            "seed": self.cfg.train.seed,
        }

    def refuse_changes(self, latest: Path, saved: dict[str, Any]) -> None:
        """--resume: a UserError when this config differs from `saved` (the config of the
        checkpoint `latest`) in a section of `RESUME_COMPARED`."""
        ckpt.refuse_changed_config(latest, self.cfg.to_dict(), saved, self.RESUME_COMPARED)

    def begin(self, latest: Path | None, resume: bool, say: Say) -> None:
        """With --resume and a checkpoint `latest`: its state, and the loss log cut back to its
        step; else a fresh loss log. Rank 0 then writes config.yaml."""
        main = self.ctx.is_main
        if resume and latest is not None:
            self._restore(latest)
            say(f"resuming from {latest} (step {self.step})")
            if main:
                self.log.resume(self.step)
        elif main:
            if resume:
                say(f"no checkpoint in {self.run_dir}: starting a new run")
            self.log.start()
        if main:
            atomic_write_bytes(self.run_dir / ckpt.CONFIG_FILE, self.cfg.to_yaml().encode())
        resumed_at = self.step if self.resumed else None  # trackers drop what came after it
        config = self.cfg.to_dict()
        self.trackers = open_trackers(
            self.cfg.train.trackers, self.run_dir, config, resumed_at, main
        )

    def _restore(self, latest: Path) -> None:
        """Load the checkpoint `latest` (its config checked first, `refuse_changes`)."""
        weights = self.weights()
        state, saved = ckpt.load_checkpoint(latest, (*weights, "optimizer", "rng", "progress"))
        self.refuse_changes(latest, saved)
        with ckpt.restoring(latest):
            for name, part in weights.items():
                part.load_state_dict(state[name])
            for name, part in self.optional_states().items():
                if name in state:
                    part.load_state_dict(state[name])
            ckpt.load_optimizer(self.optimizer, state["optimizer"])
            ckpt.set_rng_state(state["rng"])
        progress = state["progress"]
        self.step, self.position = int(progress["step"]), int(progress["position"])
        self.elapsed, self.resumed = float(progress["elapsed_s"]), True

    def checkpoint(self) -> None:
        """Rank 0 saves the whole training state (and flushes the loss log and its plot)."""
        if not self.ctx.is_main:
            return
        parts = self.weights() | self.optional_states()
        state: dict[str, Any] = {name: part.state_dict() for name, part in parts.items()}
        state["optimizer"] = ckpt.optimizer_to_tree(self.optimizer.state_dict())
        state["rng"] = ckpt.rng_state()
        state["progress"] = self.progress()
        self.log.flush()
        keep = self.cfg.train.keep_checkpoints
        ckpt.save_checkpoint(self.run_dir, self.step, state, self.cfg.to_dict(), keep)
        self.log.save_plot(self.run_dir / "loss.png")


# ---------------------------------------------------------------------------------------------
# The loop


def performance(
    images_per_s: float, phases: dict[str, float] | None, memory_gib: float | None
) -> dict[str, float]:
    """The trackers' ``perf/`` scalars of a log window: images per second, each step phase's
    share of the step time, and the peak GPU memory (on CUDA)."""
    values = {"perf/images_per_s": images_per_s}
    total = sum(phases.values()) if phases else 0.0
    if phases and total > 0:
        values |= {f"perf/{phase}_share": phases[phase] / total for phase in PHASES}
    if memory_gib is not None:
        values["perf/gpu_mem_gib"] = memory_gib
    return values


@dataclass
class LoopEnd:
    """How the loop ended."""

    interrupted: bool  # a signal or ``should_stop``: checkpoint written, nothing final
    last_loss: float | None  # the last loss read (None: no step read)


class Trainer(ABC):
    """One trainer's steps over `run`, driven by `train` (the shared loop)."""

    def __init__(self, run: TrainingRun) -> None:
        self.run = run
        self.evaluation_s = 0.0  # seconds spent scoring the model (`evaluate`)

    @abstractmethod
    def step(self) -> bool:
        """One batch at the run's step and stream position, with the learning rate already set;
        False when a non-finite batch was skipped (no update, `fdm_cli.training.nonfinite`)."""

    @abstractmethod
    def record(self, lr: float) -> None:
        """Keep the statistics of the step just applied (the run's step and elapsed seconds
        already count it)."""

    @abstractmethod
    def read(self) -> float | None:
        """Move the statistics kept since the last read into the loss log (rank 0); the last
        loss among them (None: none). A non-finite loss raises `diverged`."""

    @abstractmethod
    def at_checkpoint(self) -> str:
        """Write what goes with a periodic checkpoint; says what was written."""

    def phases(self) -> dict[str, float] | None:
        """Seconds per step phase since the last call, for the progress line (None: untimed)."""
        return None

    def evaluation_due(self, step: int) -> bool:
        """Whether the model is scored after `step` (``train.eval_every``; every rank the same)."""
        return False

    def evaluate(self) -> str:
        """Score the model at the run's step (every rank takes part); says what was measured."""
        raise NotImplementedError

    def train(self, call: Call) -> LoopEnd:
        """Step until the budget is spent or a stop: a signal (SIGINT/SIGTERM finish the
        step), or ``call.should_stop(step)`` -> True (as an interruption). The statistics are
        read every ``train.log_every`` steps, before every checkpoint and at the end; the run
        ends with a checkpoint of its last step."""
        run, should_stop = self.run, call.should_stop
        opts, ctx, main = run.cfg.train, run.ctx, run.ctx.is_main
        last_loss, interrupted = None, False
        saved_step = run.step if run.resumed else -1
        t_start = time.monotonic() - run.elapsed
        with (
            graceful_stop() as stop_flag,
            TrainProgress(call.console, opts, run.step, call.show_progress, main) as progress,
        ):

            def read() -> None:
                """The loss log, the progress line, the trackers' step rate, phase shares and
                GPU memory, and a stop at a non-finite loss (before anything of that step is
                saved)."""
                nonlocal last_loss
                loss = self.read()
                last_loss = last_loss if loss is None else loss
                if main:
                    run.log.flush()
                    if loss is not None:  # steps were read: a window to report
                        phases, memory = self.phases(), take_peak_memory(ctx.device)
                        rate = progress.update(run.step, last_loss, run.elapsed, phases, memory)
                        perf = performance(rate * opts.batch_size, phases, memory)
                        run.trackers.scalars(run.step, perf)

            while not budget_spent(opts, run.step, run.elapsed):
                lr = learning_rate(run.cfg, run.step, run.elapsed)
                set_learning_rate(run.optimizer, lr)
                applied = self.step()
                run.threads.tick()
                run.step += int(applied)  # a skipped batch is no step (fdm_cli.training.nonfinite)
                run.position += opts.batch_size
                stop = bool(stop_flag["signal"]) or (
                    should_stop is not None and should_stop(run.step)
                )
                run.elapsed, stop = agree(ctx, (time.monotonic() - t_start) if main else 0.0, stop)
                if applied:
                    self.record(lr)
                if stop:
                    interrupted = True
                    break
                if not applied:
                    continue
                checkpoint_due = run.step % opts.checkpoint_every == 0
                if checkpoint_due or run.step % opts.log_every == 0:
                    read()
                if checkpoint_due:
                    run.checkpoint()
                    saved_step = run.step
                    written = self.at_checkpoint()
                    run.threads.pause()  # not a training step
                    if main:
                        progress.note(f"step {run.step}: loss {last_loss:.4f}; {written}")
                if self.evaluation_due(run.step):
                    t_eval = time.monotonic()
                    scored = self.evaluate()
                    spent = time.monotonic() - t_eval
                    t_start += spent  # not training time: the budget counts training only
                    self.evaluation_s += spent
                    run.threads.pause()
                    if main:
                        progress.note(scored)
            read()
            progress.finish(run.step, last_loss, interrupted)

        if saved_step != run.step:
            run.checkpoint()
        if interrupted:
            call.say(
                f"stopped at step {run.step}; checkpoint written. Continue with: fdm "
                f"{run.COMMAND} --out {run.run_dir} --resume"
            )
        return LoopEnd(interrupted, last_loss)
