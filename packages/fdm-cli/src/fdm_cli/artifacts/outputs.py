"""What a command may write over: nothing the user has, unless asked with ``--overwrite``, and
never one of the command's own inputs, even then.

Every command checks all its output paths here before it does any work, so a refusal costs
nothing and leaves every file as it was. (Like the Hugging Face training scripts, which refuse a
non-empty output folder without ``--overwrite_output_dir``.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.errors import UserError

MODEL_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml")  # what load_model may read


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def model_inputs(model: Path) -> list[Path]:
    """The files sampling from `model` (a RUN_DIR, MODEL_DIR or checkpoint) may read."""
    if not model.is_dir():
        return [model]
    return [p for p in model.rglob("*") if p.suffix in MODEL_SUFFIXES or p.name == ckpt.LATEST]


def check_outputs(
    targets: Iterable[Path], overwrite: bool, inputs: Iterable[Path] = (), flag: str = "`out`"
) -> None:
    """Refuse (UserError) a target that is one of `inputs` (always) or that exists (unless
    `overwrite`): the first such target is named, with how many more there are."""
    targets, inputs = list(targets), list(inputs)
    for target in targets:
        if any(_same(target, source) for source in inputs):
            raise UserError(
                f"{target} is one of this command's inputs: choose another {flag} "
                "(outputs never replace inputs, even with `overwrite=True`)"
            )
    check_writable(targets, flag)
    if overwrite:
        return
    existing = [t for t in targets if os.path.lexists(t)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]} already exists{more}: pass `overwrite=True` to replace it, or choose "
            f"another {flag}"
        )


def check_writable(targets: Iterable[Path], flag: str = "`out`") -> None:
    """Refuse (UserError) an output file that cannot be written, before any work: a path that
    is a folder, a parent path through a file, or a folder this user may not write in (a
    missing folder is created when written, so its nearest existing ancestor is checked)."""
    checked: set[Path] = set()
    for target in targets:
        if target.is_dir():
            raise UserError(
                f"cannot write {target}: it is a folder; give a file name, or choose another {flag}"
            )
        folder = target.parent
        if folder in checked:
            continue
        checked.add(folder)
        existing = folder
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(
                f"cannot write {target}: {existing} is a file, not a folder; choose another {flag}"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write {target}: the folder {existing} is not writable (permission "
                f"denied or a read-only file system); choose another {flag}"
            )


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """A new run writes into a missing or empty RUN_DIR. One that holds files needs --resume
    (it has a checkpoint; the training commands say so) or --overwrite (then its old checkpoints
    are deleted, so they can never be mixed with the new run's; other files are replaced as the
    new run writes them)."""
    if resume or not run_dir.is_dir() or all(p.name == ckpt.LOCK for p in run_dir.iterdir()):
        return  # a folder holding only the lock (`fdm_cli.artifacts.runlock`) is empty
    if overwrite:
        shutil.rmtree(run_dir / ckpt.CHECKPOINTS, ignore_errors=True)  # DDP: every rank may
        return
    if ckpt.latest_checkpoint(run_dir) is None:
        raise UserError(
            f"{run_dir} is not empty and holds no checkpoint to resume: pass `overwrite=True` to "
            "write the new run into it (its files are replaced), or choose another `run_dir`"
        )
