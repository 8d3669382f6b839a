"""RUN_DIR layout and training checkpoints (safetensors + JSON through fdm-core, never pickle).

    RUN_DIR/
      config.yaml                     the resolved TrainConfig of the run
      checkpoints/step-00001000.safetensors   model, EMA, optimizer, RNG states, progress
      checkpoints/latest              name of the newest complete checkpoint (atomic pointer)
      samples/step-00001000.png       sample grid (EMA weights) at that step
      samples/strip-00001000.png      stage strip (paper Figure 1) at that step
      samples/final.png, samples/final-strip.png
      loss.csv, loss.png              per-step losses (total and per stage) and their curve
      model/                          the final EMA model (save_pretrained): a MODEL_DIR
      .lock                           held by the training process (pid inside; `runlock`)

Every file is written to a temporary name and renamed into place; `latest` is only moved once
the checkpoint it names is complete, and old checkpoints are pruned after that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fdm_cli.errors import UserError
from fdm_core import CheckpointError, atomic_write, load_state, save_state

CHECKPOINTS = "checkpoints"
LATEST = "latest"
CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"
SAMPLES = "samples"
LOCK = (
    ".lock"  # one process per RUN_DIR (fdm_cli.artifacts.runlock); never swept, moved or published
)
_NAME = re.compile(r"^step-(\d+)\.safetensors$")
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # atomic_write's: "." + name + "." + random + ".tmp"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` points to, or the newest checkpoint file when the pointer is
    missing or does not name one. The pointer can only name a ``step-N.safetensors`` file in
    the run's own checkpoints/ folder: a path ("../x", "/etc/x") or any other name is ignored."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8", errors="replace")[:256].strip()
        except OSError:
            name = ""
        target = run_dir / CHECKPOINTS / name
        if _NAME.match(name) and target.is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def sweep_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmp``, see `fdm_core.atomic_write`) a crash
    left in the run's folders; returns them. Call before the run writes anything."""
    stale = [
        p
        for folder in (run_dir, run_dir / CHECKPOINTS, run_dir / SAMPLES, run_dir / MODEL_DIR)
        if folder.is_dir()
        for p in folder.iterdir()
        if _TEMPORARY.match(p.name) and p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(
    run_dir: Path, step: int, state: dict[str, Any], config: dict[str, Any], keep: int
) -> Path:
    """Write one checkpoint, move `latest` to it, then delete all but the newest `keep`."""
    path = checkpoint_path(run_dir, step)
    save_state(path, state, config)
    with atomic_write(run_dir / CHECKPOINTS / LATEST, "w") as handle:
        handle.write(path.name + "\n")
    for _, old in list_checkpoints(run_dir)[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


SAMPLE_PARTS = ("model", "ema", "progress")  # what sampling reads
RESUME_PARTS = ("model", "ema", "optimizer", "rng", "progress")  # what --resume reads


def load_checkpoint(
    path: Path, parts: tuple[str, ...] = SAMPLE_PARTS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, config) of a checkpoint; UserError if it is missing, corrupt, or lacks one of
    `parts` (or holds it in the wrong form): checked before any of it is used."""
    try:
        state, config = load_state(path)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    if config is None or not isinstance(state, dict):
        raise UserError(f"{path} is not an fdm training checkpoint (no state or no config)")
    missing = [p for p in parts if p not in state]
    if missing:
        raise UserError(
            f"{path} is not a complete fdm training checkpoint: no {', '.join(missing)}"
        )
    for part in ("model", "ema"):
        tensors = state.get(part)
        if part in parts and not (
            isinstance(tensors, dict) and all(isinstance(v, torch.Tensor) for v in tensors.values())
        ):
            raise UserError(f"{path}: its '{part}' entry is not a set of named tensors")
    if "progress" in parts and not _valid_progress(state["progress"]):
        raise UserError(
            f"{path}: its 'progress' entry must hold step and position (integers >= 0) and "
            f"elapsed_s (seconds >= 0), not {str(state['progress'])[:80]}"
        )
    return state, config


def _valid_progress(progress: Any) -> bool:
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(progress, dict):
        return False
    seconds = progress.get("elapsed_s")
    return (
        count(progress.get("step"))
        and count(progress.get("position"))
        and isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds)
        and seconds >= 0
    )


@contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Loading a checkpoint's parts into a model, optimizer or the RNG: a part that does not fit
    (a damaged or foreign file) is a UserError naming the file, not a traceback."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{path}: its state does not fit this run ({type(exc).__name__}: {detail})"
        ) from None


def refuse_changed_config(
    latest: Path, ours: dict[str, Any], saved: dict[str, Any], sections: tuple[str, ...]
) -> None:
    """--resume: a UserError naming every key of `sections` in which the run's config `ours`
    differs from the config saved with the checkpoint `latest`."""
    for section in sections:
        mine, theirs = ours.get(section, {}), saved.get(section, {})
        if mine != theirs:
            keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
            raise UserError(
                f"`resume=True`: the {section} config differs from the checkpoint {latest} in "
                f"{', '.join(f'{section}.{k}' for k in keys)}; resume with the run's own "
                "settings (drop those flags) or train into another `run_dir`"
            )


# ---------------------------------------------------------------------------------------------
# Optimizer and RNG states as checkpoint trees (string keys, tensors and JSON leaves only)


def optimizer_to_tree(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state as a tree; a learning rate held as a 0-dim tensor (a compiled
    step's) is saved as a float, as every run saves it."""
    groups = [dict(g) for g in state_dict["param_groups"]]
    for group in groups:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return {
        "state": {str(k): dict(v) for k, v in state_dict["state"].items()},
        "param_groups": groups,
    }


def optimizer_from_tree(tree: dict[str, Any]) -> dict[str, Any]:
    groups = []
    for group in tree["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": {int(k): dict(v) for k, v in tree["state"].items()}, "param_groups": groups}


def load_optimizer(optimizer: torch.optim.Optimizer, tree: dict[str, Any]) -> None:
    """The state `tree` (`optimizer_to_tree`) into `optimizer`, which keeps how it holds its
    learning rate and whether its step is capturable: torch's ``load_state_dict`` replaces every
    param-group value with the saved one, so a compiled run's 0-dim tensor (the one its graph
    reads) gets the saved value written into it, and an eager run keeps a float, whichever kind
    of run wrote the checkpoint."""
    own = [(group["lr"], group.get("capturable")) for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_from_tree(tree))
    for group, (lr, capturable) in zip(optimizer.param_groups, own, strict=True):
        saved = float(group["lr"])
        if isinstance(lr, torch.Tensor):
            group["lr"] = lr.fill_(saved)
        else:
            group["lr"] = saved
        if capturable is not None:
            group["capturable"] = capturable


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every visible CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])
