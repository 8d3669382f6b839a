"""Issue 21, part C: one process per run folder (`fdm_cli.artifacts.runlock`), and the CLI's late or
silent cases: ``eval --num 0``, output paths that cannot be written (checked before any work),
``sample --steps`` under one step per stage. Every refusal is one line, exit 2, nothing written.

The lock tests really run two processes: a holder started with `subprocess` (a real
``fdm train --resume`` / ``fdm train-autoencoder --resume`` with a budget it never reaches, or
a bare `runlock.acquire`) and the refused second run in this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts import runlock
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.artifacts.outputs import prepare_run_dir
from fdm_cli.data.dataset import EMBEDDED
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_cli.evaluation.evaluate import evaluate_model, summary

from .conftest import refused
from .test_train_autoencoder import TINY_AE

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
HOLDER_START_S = 120  # a loaded 2-core machine: torch import + data + model, a few seconds idle


def _fdm(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fdm_cli", *map(str, args)]


def _wait_for_holder(proc: subprocess.Popen, run_dir: Path, log: Path) -> None:
    """Until `proc` holds `run_dir`'s lock (its pid is in the lock file)."""
    deadline = time.monotonic() + HOLDER_START_S
    lock = run_dir / ckpt.LOCK
    while not (lock.is_file() and lock.read_text().strip() == str(proc.pid)):
        if proc.poll() is not None:
            pytest.fail(f"the holder exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the holder did not take the lock: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still running at the end is killed (by its own pid)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def _start(holder: list, command: list[str], run_dir: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    holder.append(proc)
    _wait_for_holder(proc, run_dir, log)
    return proc


def _steps_increase(run_dir: Path) -> bool:
    steps = [row[0] for row in read_loss_csv(run_dir / "loss.csv")]
    return steps == sorted(set(steps)) and steps[0] == 1


# ---------------------------------------------------------------------------------------------
# One process per run folder


def test_second_train_is_refused_while_the_first_holds_the_run_and_works_after_sigkill(
    ds_run: Path, tmp_path: Path, cli, tiny, holder: list
) -> None:
    """Catches the issue's two concurrent `fdm train --resume` on one folder (both ran, loss.csv
    got duplicated rows, checkpoints overwritten), an --overwrite that deletes a running run's
    checkpoints, a lock that blocks --dry-run, and a stale lock after a SIGKILLed holder."""
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    long = ["--max-steps", "1000000", "--threads", "1", "--set", "train.checkpoint_every=100000"]
    first = _start(
        holder, _fdm("train", "--out", run, "--resume", *long, *tiny), run, tmp_path / "first.log"
    )
    checkpoints = sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir())
    second = cli("train", "--out", run, "--resume", "--max-steps", "5", *tiny)
    refused(second, f"{run} is in use by process {first.pid}", "another --out")
    refused(cli("train", "--out", run, "--overwrite", "--max-steps", "1", *tiny), str(first.pid))
    assert sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir()) == checkpoints
    dry = cli("train", "--out", run, "--resume", "--dry-run", *tiny)  # reads only: no lock
    assert dry.exit_code == 0 and "RUN_DIR" in dry.output, dry.output

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (run / ckpt.LOCK).read_text().strip() == str(first.pid)  # left behind, not held
    step = int(ckpt.latest_checkpoint(run).stem.split("-")[1])
    again = cli("train", "--out", run, "--resume", "--max-steps", str(step + 1), *tiny)
    assert again.exit_code == 0, again.output
    assert not (run / ckpt.LOCK).exists() and _steps_increase(run)


def test_second_autoencoder_run_is_refused_while_the_first_holds_it(
    tmp_path: Path, cli, holder: list
) -> None:
    """The same for `fdm train-autoencoder --resume`; its holder stops with SIGTERM (a clean
    exit: checkpoint written, lock file removed). Catches the lock missing from this loop."""
    run = tmp_path / "ae"
    made = cli("train-autoencoder", "--out", run, "--max-steps", "2", *TINY_AE)
    assert made.exit_code == 0 and not (run / ckpt.LOCK).exists(), made.output
    long = ["--max-steps", "1000000", "--threads", "1", "--set", "train.checkpoint_every=100000"]
    command = _fdm("train-autoencoder", "--out", run, "--resume", *long, *TINY_AE)
    first = _start(holder, command, run, tmp_path / "first.log")
    second = cli("train-autoencoder", "--out", run, "--resume", "--max-steps", "3", *TINY_AE)
    refused(second, f"{run} is in use by process {first.pid}")

    deadline = time.monotonic() + HOLDER_START_S  # training (SIGTERM handled): a step logged
    while read_loss_csv(run / "loss.csv")[-1][0] <= 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-2000:]
    assert not (run / ckpt.LOCK).exists()
    step = int(ckpt.latest_checkpoint(run).stem.split("-")[1])
    again = cli("train-autoencoder", "--out", run, "--resume", "--max-steps", str(step + 1))
    assert again.exit_code == 0, again.output
    assert _steps_increase(run)


@pytest.mark.reliability
def test_ddp_ranks_are_all_refused_while_another_process_holds_the_run(
    ds_run: Path, tmp_path: Path, tiny, holder: list
) -> None:
    """torchrun with 2 ranks on a held folder: rank 0 names the holder, every rank stops
    (catches rank 1 waiting forever in the first collective while rank 0 has given up)."""
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    hold = "import sys, time; from pathlib import Path; "
    hold += "from fdm_cli.artifacts.runlock import acquire; "
    hold += "acquire(Path(sys.argv[1])); time.sleep(600)"
    first = _start(holder, [sys.executable, "-c", hold, str(run)], run, tmp_path / "first.log")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    args = ["2", "-m", "fdm_cli", "train", "--out", str(run), "--resume", "--max-steps", "5"]
    done = subprocess.run(
        [*torchrun, *args, *tiny], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert done.returncode != 0
    assert f"is in use by process {first.pid}" in done.stderr, done.stderr[-3000:]
    assert "rank 0 could not take the run folder" in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("fdm: error:")]
    assert len(errors) == 2, done.stderr[-3000:]  # one line per rank (torchrun adds its own)


def test_the_lock_file_is_not_part_of_the_run(ds_run: Path, tmp_path: Path, cli, tiny) -> None:
    """A folder holding only a killed run's `.lock` is still empty (no --overwrite needed), the
    temporary-file sweep keeps it, a finished run (and its model folder) holds none, and a
    symlinked `.lock` is refused. Catches an emptiness check or sweep that counts the lock."""
    assert not [p for p in ds_run.rglob("*") if p.name == ckpt.LOCK]
    left = tmp_path / "left"
    left.mkdir()
    (left / ckpt.LOCK).write_text("99999999\n")
    prepare_run_dir(left, overwrite=False, resume=False)  # no "not empty" refusal
    assert ckpt.sweep_stale_temporaries(left) == [] and (left / ckpt.LOCK).exists()
    result = cli("train", "--out", left, "--max-steps", "1", *tiny)
    assert result.exit_code == 0, result.output
    assert not (left / ckpt.LOCK).exists()
    assert ckpt.latest_checkpoint(left) is not None

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ckpt.LOCK).symlink_to(tmp_path / "victim")
    with pytest.raises(UserError, match="is a symbolic link"):
        runlock.acquire(linked)
    assert not (tmp_path / "victim").exists()


def test_the_lock_names_its_holder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A second holder in the same process is refused too (flock is per open file), and a
    release removes the lock file and the RUN_DIR it created (a run refused after taking the
    lock leaves no empty folder). Catches a lock that is only checked, never held."""
    run = tmp_path / "new"
    lock = runlock.acquire(run)
    assert run.is_dir() and (run / ckpt.LOCK).read_text().strip() == str(os.getpid())
    with pytest.raises(runlock.RunDirBusy, match=f"process {os.getpid()}"):
        runlock.acquire(run)  # a second open file in the same process is a second holder
    runlock.release(lock)
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# eval --num, output paths, --steps


class _Features(torch.nn.Module):
    """(N, 3, 299, 299) -> (N, 48): a stand-in for the Inception network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model or the FID network, or sampling, fails the test: refusals come first."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started its work before checking its outputs")

    import fdm_cli.generation.sampling

    for module, name in (
        (fdm_cli.generation.sampling, "load_model"),
        (fdm_cli.generation.sampling, "generate"),
        (fid, "load_fid_network"),
    ):
        monkeypatch.setattr(module, name, started)


@pytest.mark.parametrize("num", ["0", "1", "3", "-5"])
def test_eval_num_below_the_minimum_is_refused_up_front(
    num: str, ds_run: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches `fdm eval --real A --real B --num 0` silently scoring 2000 images (`num or
    2000`) and --num 1..3 failing late inside precision/recall."""
    _no_work(monkeypatch)
    out = tmp_path / "metrics.json"
    real = ["--real", EMBEDDED, "--real", EMBEDDED]
    refused(cli("eval", *real, "--num", num, "--out", out), f"--num {num}: must be at least 4")
    refused(cli("eval", ds_run, "--num", num, "--out", out), "must be at least 4")
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "phrase"),
    [
        (["sample", "{model}", "--out", "{folder}", "--overwrite"], "it is a folder"),
        (["sample", "{model}", "--out", "{file}/grid.png"], "is a file, not a folder"),
        (["sample", "{model}", "--out-dir", "{file}/each"], "choose another --out-dir"),
        (["sample", "{model}", "--out", "{new}/g.png", "--strip", "{folder}"], "another --strip"),
        (
            ["eval", "--real", "fashion-mnist", "--real", "fashion-mnist", "--out", "{folder}"],
            "a folder",
        ),
        (["eval", "{model}", "--num", "4", "--out", "{file}/deeper/metrics.json"], "is a file"),
        (["super-resolve", "{model}", "{image}", "--out", "{file}"], "is a file, not a folder"),
        (["deblur", "{model}", "{image}", "--out", "{file}/x"], "is a file, not a folder"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(
    command: list[str],
    phrase: str,
    ds_run: Path,
    tmp_path: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches an output path that cannot be written (a folder, a path through a file) being
    found only after all the sampling, in a message naming a temporary file."""
    _no_work(monkeypatch)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("the user's file")
    (tmp_path / "image.png").write_bytes(b"not read")
    names = {"model": ds_run, "image": tmp_path / "image.png"}
    names |= {k: tmp_path / k for k in ("folder", "file", "new")}
    result = cli(*[a.format(**names) for a in command])
    refused(result, "cannot write", phrase)
    assert ".tmp" not in result.output
    assert (tmp_path / "file").read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "image.png"]


def test_a_read_only_output_folder_is_refused_before_sampling(
    ds_run: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder this user may not write in: catches the refusal coming after all the sampling,
    as "cannot access .grid.png.x8k2.tmp" (the temporary's name, not the user's path). Root
    writes anywhere, so there the folder is made a read-only bind mount (a mount namespace of
    the command's own; skipped where that is not allowed)."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    args = ["sample", ds_run, "--num", "2", "--steps", "3", "--out", readonly / "grid.png"]
    if os.geteuid() != 0:
        readonly.chmod(0o555)
        try:
            _no_work(monkeypatch)
            line = cli(*args).output.strip()
        finally:
            readonly.chmod(0o755)
    else:
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        mounted = ["unshare", "--mount", "sh", "-c", script, "sh", str(readonly)]
        probe = subprocess.run([*mounted, "true"], capture_output=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"root, and no read-only bind mount here: {probe.stderr[-200:]!r}")
        argv = [*mounted, *_fdm(*args, "--device", "cpu")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV)
        assert done.returncode == 2, done.stdout + done.stderr
        line = done.stderr.strip()
    assert line.startswith("fdm: error: cannot write") and "not writable" in line, line
    assert len(line.splitlines()) == 1 and ".tmp" not in line
    assert list(readonly.iterdir()) == []


def test_sample_steps_under_one_per_stage_say_what_ran(ds_run: Path, tmp_path: Path, cli) -> None:
    """`--steps 1` on a 3-stage model runs 3 steps (one per stage, E28): catches `fdm sample`
    and `fdm eval` reporting 1 (metrics.json's "steps" is what ran)."""
    result = cli("sample", ds_run, "--num", "2", "--steps", "1", "--out", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    assert "with 3 sampler steps, one per stage (--steps 1 is fewer" in result.output
    plain = cli("sample", ds_run, "--num", "2", "--steps", "4", "--out", tmp_path / "h.png")
    assert plain.exit_code == 0 and "sampler steps" not in plain.output, plain.output

    metrics = evaluate_model(
        ds_run, 4, steps=1, batch_size=4, network=_Features(), cache_dir=tmp_path / "cache"
    )
    assert metrics["steps"] == 3 and metrics["steps_requested"] == 1
    assert metrics["steps_per_stage"] == [1, 1, 1]
    assert "(3 steps (--steps 1 is under one per stage)" in summary(metrics)


def test_a_failed_write_names_the_users_path_not_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkstemp failing in a folder (read-only, full) raised an error naming the temporary
    (".grid.png.x8k2.tmp"): catches `atomic_write` renaming only errors about a created one."""
    from fdm_core import atomic_write

    def denied(prefix: str = "", suffix: str = "", dir: str | None = None) -> tuple[int, str]:
        name = os.path.join(str(dir), f"{prefix}x8k2{suffix}")
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr("fdm_core.checkpoint.tempfile.mkstemp", denied)
    with pytest.raises(PermissionError) as caught, atomic_write(tmp_path / "grid.png") as f:
        f.write(b"x")
    assert caught.value.filename == str(tmp_path / "grid.png")
