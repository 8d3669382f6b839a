"""One process per run folder: `fdm train` and `fdm train-autoencoder` (and their ``--resume``)
hold an exclusive lock on RUN_DIR while they run (RELIABILITY.md, "One process per run folder").

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock`` (`fdm_cli.artifacts.checkpoints.LOCK`), taken
without waiting before anything is written into the folder: before the "already holds a run" check,
the sweep of stale temporary files, ``--overwrite``'s clean-up, config.yaml and loss.csv. A
second process on the same folder is refused (`RunDirBusy`, one line naming the holder's pid,
which the holder writes into the file). The kernel drops a flock when its process ends in any
way (SIGKILL included), so a crash never leaves a stale lock: the file a killed holder leaves
behind is taken over by the next run. A clean exit removes the file (and RUN_DIR itself when
this process created it and left it empty, so a refused run leaves nothing behind).

Under DDP (torchrun) rank 0 alone holds the lock for every rank; the ranks agree in one small
all-reduce whether it was taken (`fdm_cli.runtime.distributed`), so a refusal stops all of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.outputs import prepare_run_dir
from fdm_cli.errors import UserError
from fdm_cli.runtime import distributed as dist_

log = logging.getLogger(__name__)
PID_WAIT_S = 0.5  # how long a refused process waits for a new holder to write its pid
_OPEN_TRIES = 20  # the file or folder vanished between open and lock (a holder releasing)


class RunDirBusy(UserError):
    """Another process holds the run folder's lock."""


@dataclass
class RunLock:
    """A held lock: the open lock file (its descriptor holds the flock)."""

    run_dir: Path
    fd: int
    created_dir: bool  # this process created RUN_DIR (removed again if left empty)

    @property
    def path(self) -> Path:
        return self.run_dir / ckpt.LOCK


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file (it writes it right after locking)."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _same_file(fd: int, path: Path) -> bool:
    """`fd` is still the file at `path` (a releasing holder unlinks it: then lock the new one)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _open(run_dir: Path, path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{path} is a symbolic link: a run folder's lock file must be a plain file "
                "(remove the link, or train into another `run_dir`)"
            ) from None
        raise


def acquire(run_dir: Path) -> RunLock:
    """Lock `run_dir` for this process (creating the folder if needed) or raise `RunDirBusy`
    naming the holder's pid. Never waits for the holder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"`run_dir` {run_dir} is a file, not a folder: choose another `run_dir`")
    created = not run_dir.exists()
    path = run_dir / ckpt.LOCK
    for _ in range(_OPEN_TRIES):
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = _open(run_dir, path)
        except FileNotFoundError:  # the folder was removed by a holder releasing it: again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            holder = f"process {pid}" if pid is not None else "another process"
            raise RunDirBusy(
                f"{run_dir} is in use by {holder} (an fdm training run holds {path}): wait "
                "for it to finish or stop it, then run again; or train into another `run_dir`"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return RunLock(run_dir, fd, created)
        os.close(fd)  # locked a file its holder had just removed: lock the new one
    raise UserError(f"could not lock {path}: it keeps disappearing; is another process using it?")


def release(lock: RunLock) -> None:
    """Remove the lock file (while still holding it), close it, and remove RUN_DIR when this
    process created it and nothing else is in it."""
    try:
        if _same_file(lock.fd, lock.path):
            lock.path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only folder now: the lock itself still goes with the fd
        log.debug("could not remove %s: %s", lock.path, exc)
    finally:
        os.close(lock.fd)
    if lock.created_dir:
        with contextlib.suppress(OSError):
            lock.run_dir.rmdir()  # only succeeds when empty


@contextlib.contextmanager
def locked_run_dir(
    run_dir: Path, overwrite: bool, resume: bool, ctx: dist_.DistContext | None = None
) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block and prepare the folder under it (`prepare_run_dir`:
    the empty / ``--resume`` / ``--overwrite`` rules). Under DDP (`ctx` enabled) rank 0 locks
    and prepares, then every rank learns in one all-reduce whether that worked; on any rank a
    refusal is a `UserError` (rank 0's names the reason, the others point to it)."""
    main = ctx is None or ctx.is_main
    lock: RunLock | None = None
    error: BaseException | None = None
    if main:
        try:
            lock = acquire(run_dir)
            prepare_run_dir(run_dir, overwrite, resume)
        except (UserError, OSError) as exc:
            error = exc
    if ctx is not None and ctx.enabled:
        flag = torch.tensor([0.0 if error is None else 1.0])
        if dist_.sum_over_ranks(ctx, flag).item() > 0 and error is None:
            error = UserError(f"rank 0 could not take the run folder {run_dir} (see its error)")
    try:
        if error is not None:
            raise error
        yield
    finally:
        if lock is not None:
            release(lock)
