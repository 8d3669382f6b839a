"""Experiment trackers: the scalars and images of a run, also sent to TensorBoard or W&B.

``train.trackers`` names them (``fdm train --log tensorboard --log wandb``). Rank 0 alone opens
them (`open_trackers`, from `fdm_cli.training.trainer.TrainingRun.begin`); the other ranks, and a
run that names none, get an empty `Trackers`, which imports nothing and does nothing. A missing
package is refused before anything is written (`check_trackers`: ``pip install
'fdm-cli[tensorboard]'`` or ``'fdm-cli[wandb]'``); nothing else a tracker does can stop
training: a tracker that fails to open, or raises later, is named in one warning (``logging``)
and dropped, and the run goes on without it.

What the loop sends (`Trackers.scalars` and `Trackers.images`, at the optimizer step):

- every step, read once per log window: ``train/loss``, ``train/loss_stage{k}`` (NaN for a stage
  with no rows in the step), ``train/lr``, ``train/grad_norm``; the autoencoder trainer
  ``train/loss``, ``train/reconstruction``, ``train/regularization``, ``train/lr``,
  ``train/grad_norm``;
- every log window: ``perf/images_per_s``, ``perf/{data,forward,backward,optimizer}_share``,
  ``perf/gpu_mem_gib`` (CUDA only), ``perf/overflow_steps`` (fp16);
- at an evaluation: ``eval/fid``, ``eval/kid``, ``eval/precision``, ``eval/recall``,
  ``eval/seconds`` (the autoencoder at its end: ``eval/psnr_db``);
- at every checkpoint and at the end, the sample PNGs already written: ``samples/grid``,
  ``samples/strip`` (the autoencoder: ``samples/reconstructions``).

Values go as given: a NaN (a stage without rows) is kept, and TensorBoard marks it; W&B leaves
it out of its line plots.

TensorBoard writes event files to RUN_DIR/tensorboard (``tensorboard --logdir RUN_DIR``), the
config once as text (JSON) on a fresh run. The scalars and images are flushed at every call
(about 0.4 ms). On resume from the checkpoint of step S the writer opens with
``purge_step=S + 1``: TensorBoard hides every event of the earlier files at step >= S + 1 (what
was logged after the checkpoint), and the resumed run logs steps S + 1, S + 2, ... again, so
each step appears once. The files are read in name order (their creation second first).

W&B (``wandb.init``) runs in project $WANDB_PROJECT (default "fdm"), named after the run folder,
its files in RUN_DIR/wandb, the config as the run's config. ``WANDB_MODE=offline`` needs no
network and no account (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later); online, a
missing login or an unreachable server is the warning above (after W&B's own wait). The run id
is kept in RUN_DIR/wandb-run.json, so a resumed run continues the same W&B run
(``resume="allow"``; offline, in a new offline-run folder with that id). The training step is
the W&B metric ``step``, the x-axis of every other metric, logged with each call; W&B's own
``_step`` just counts the calls. On resume the points logged after the checkpoint stay in the
W&B run: the steps between the checkpoint and the interruption are plotted twice there (first
the lost ones, then the resumed ones). W&B's rewind (``resume_from``) would drop them, but it
is a private preview of the service, counts ``_step`` (not the training step) and refuses
metrics stepped by ``define_metric``, so fdm does not use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from fdm_cli.artifacts.pictures import atomic_write_bytes
from fdm_cli.errors import UserError

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the module it needs
TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: the event files
WANDB_RUN_FILE = "wandb-run.json"  # RUN_DIR/wandb-run.json: {"id": the W&B run id}


class Tracker(Protocol):
    """One experiment tracker, open for a run."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log named values at the optimizer step `step`."""

    def images(self, step: int, images: Mapping[str, Path]) -> None:
        """Log named PNG files (already written) at `step`."""

    def close(self) -> None:
        """Flush and close."""


def tracker_name(tracker: Tracker) -> str:
    """What a warning calls `tracker`: its ``name``, else its class name."""
    return str(getattr(tracker, "name", type(tracker).__name__))


class Trackers:
    """The run's trackers together (empty: does nothing, costs nothing). A tracker that raises
    is named in one warning and dropped; after `close` there are none."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self._open = list(trackers)

    def __bool__(self) -> bool:
        """Whether any tracker is open."""
        return bool(self._open)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log named values at `step` to every tracker."""
        for tracker in list(self._open):
            self._call(tracker, lambda t: t.scalars(step, values))

    def images(self, step: int, images: Mapping[str, Path]) -> None:
        """Log named PNG files at `step` to every tracker."""
        for tracker in list(self._open):
            self._call(tracker, lambda t: t.images(step, images))

    def close(self) -> None:
        """Close every tracker (a failure is a warning); a second call does nothing."""
        trackers, self._open = self._open, []
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as exc:
                log.warning("tracker %s failed to close: %s", tracker_name(tracker), describe(exc))

    def _call(self, tracker: Tracker, call: Callable[[Tracker], None]) -> None:
        try:
            call(tracker)
        except Exception as exc:
            self._open.remove(tracker)
            log.warning(
                "tracker %s failed (%s) and is dropped; training goes on without it",
                tracker_name(tracker),
                describe(exc),
            )
            log.debug("tracker %s failure", tracker_name(tracker), exc_info=exc)
            with contextlib.suppress(Exception):
                tracker.close()


def describe(exc: BaseException) -> str:
    """``Kind: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_trackers(names: Sequence[str]) -> None:
    """Before training: a UserError when a named tracker is unknown or its package is not
    installed (it names the extra to install). Nothing is imported."""
    _refuse_unknown(names)
    for name in dict.fromkeys(names):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(
                f"train.trackers: {name} needs the {PACKAGES[name]} package, which is not "
                f"installed: pip install 'fdm-cli[{name}]'"
            )


def _refuse_unknown(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in PACKAGES]
    if unknown:
        raise UserError(
            f"train.trackers: {', '.join(map(str, unknown))} unknown; choose from "
            f"{', '.join(PACKAGES)}"
        )


def open_trackers(
    names: Sequence[str],
    run_dir: Path,
    config: Mapping[str, Any],
    resume_step: int | None,
    is_main: bool,
) -> Trackers:
    """The trackers `names` of the run in `run_dir` with `config`, opened on rank 0
    (`is_main`); `resume_step`: None for a fresh run, the checkpoint's step on resume (what was
    logged after it is dropped where the tracker can). A tracker that fails to open is a
    warning; the others open."""
    if not is_main or not names:
        return Trackers()
    _refuse_unknown(names)
    openers: dict[str, Callable[[Path, Mapping[str, Any], int | None], Tracker]] = {
        "tensorboard": TensorBoardTracker,
        "wandb": WandbTracker,
    }
    opened: list[Tracker] = []
    for name in dict.fromkeys(names):
        try:
            opened.append(openers[name](run_dir, config, resume_step))
        except Exception as exc:
            log.warning(
                "tracker %s could not be opened (%s); training goes on without it",
                name,
                describe(exc),
            )
    return Trackers(opened)


# ---------------------------------------------------------------------------------------------
# TensorBoard


def config_text(config: Mapping[str, Any]) -> str:
    """The config as a Markdown code block (TensorBoard's text plugin renders Markdown)."""
    body = json.dumps(dict(config), indent=2, sort_keys=False, default=str)
    return "```json\n" + body + "\n```"


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard (see the module docstring)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(run_dir) / TENSORBOARD_DIR
        fresh = resume_step is None or not any(log_dir.glob("events.out.tfevents.*"))
        purge_step = None if resume_step is None else resume_step + 1  # hides steps > resume
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        if fresh:
            self.writer.add_text("config", config_text(config), 0)
            self.writer.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def images(self, step: int, images: Mapping[str, Path]) -> None:
        for name, path in images.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # gray and palette PNGs as RGB
            self.writer.add_image(name, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------
# Weights & Biases


def new_run_id() -> str:
    """A fresh W&B run id: 8 lowercase letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of the run in `run_dir`: on resume the one RUN_DIR/wandb-run.json keeps;
    on a fresh run (or when there is none to read) a new one, written there."""
    path = Path(run_dir) / WANDB_RUN_FILE
    if resuming and path.exists():
        try:
            run_id = json.loads(path.read_text())["id"]
            if isinstance(run_id, str) and run_id:
                return run_id
            raise ValueError(f"bad id {run_id!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s): a new W&B run", path, describe(exc))
    run_id = new_run_id()
    atomic_write_bytes(path, (json.dumps({"id": run_id}) + "\n").encode())
    return run_id


class WandbTracker:
    """A W&B run, online or offline (see the module docstring)."""

    name = "wandb"

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_step: int | None) -> None:
        import wandb

        self.wandb = wandb
        run_dir = Path(run_dir)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fdm"),
            name=run_dir.resolve().name,
            dir=str(run_dir),
            config=dict(config),
            id=wandb_run_id(run_dir, resume_step is not None),
            resume="allow",
        )
        self.run.define_metric("step")  # the training step: every metric's x-axis
        self.run.define_metric("*", step_metric="step")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"step": step, **{name: float(v) for name, v in values.items()}})

    def images(self, step: int, images: Mapping[str, Path]) -> None:
        shown = {name: self.wandb.Image(str(path)) for name, path in images.items()}
        self.run.log({"step": step, **shown})

    def close(self) -> None:
        self.run.finish()
