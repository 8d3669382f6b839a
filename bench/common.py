"""Helpers shared by the benchmark scripts: machine info, Markdown tables, JSON results, FLOPs."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
TRAIN_DATA = ROOT.parent / "shared" / "data" / "fashion-mnist"  # the quality benchmarks' data
BASE_PRESETS = ["ddpm", "fdm-ds", "fdm-blur-g"]  # the presets the speed benchmarks compare
LATENT_PRESETS = ["fdm-vae", "ldm"]  # need --autoencoder DIR


def check_train_data(parser: argparse.ArgumentParser, data: Path) -> None:
    """A usage error unless --data exists or names the embedded data set."""
    embedded = "fashion-mnist"  # the data set embedded in fdm-cli (its t10k split)
    if str(data) != embedded and not Path(data).exists():
        parser.error(
            f"--data {data} does not exist: give the Fashion-MNIST IDX folder (train split "
            "preferred; Debian's dataset-fashion-mnist package installs one), or --data "
            f"{embedded} for the embedded 10,000-image test split (then FID is measured against "
            "the training images)"
        )


def choose_presets(
    parser: argparse.ArgumentParser, presets: list[str] | None, autoencoder: str | None
) -> list[str]:
    """--presets (default: the base presets, + the latent ones with --autoencoder), ddpm first
    (every speed-up is against it); a latent preset without --autoencoder is a usage error."""
    chosen = presets or BASE_PRESETS + (LATENT_PRESETS if autoencoder else [])
    if "ddpm" not in chosen:
        chosen = ["ddpm", *chosen]
    missing = [p for p in chosen if p in LATENT_PRESETS and not autoencoder]
    if missing:
        parser.error(f"{', '.join(missing)} need --autoencoder DIR")
    return chosen


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the machine architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return os.uname().machine


def git_commit() -> str | None:
    """The short commit of the repository (with ``+dirty`` when the work tree has changes)."""

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
        return run.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a result was measured on: CPU, cores, torch, threads, date, commit, load."""
    import torch

    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "usable_cores": usable,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "load_average": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def format_machine(info: dict[str, Any]) -> str:
    """One line for above a table."""
    load = info.get("load_average")
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"torch {info['torch']}, threads {info['threads']}, {info['date']}, "
        f"commit {info['commit'] or '?'}"
        + (f", load average {' / '.join(map(str, load))}" if load else "")
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (cells are str()-ed)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_path(args: argparse.Namespace, script: str) -> Path:
    """``--json PATH``, else ``bench/results/<script>.json`` (``<script>-quick.json`` for a
    --quick run, so a quick check never overwrites a full measurement)."""
    return args.json or RESULTS_DIR / f"{script}{'-quick' if args.quick else ''}.json"


def save_results(args: argparse.Namespace, script: str, payload: dict[str, Any]) -> Path:
    """Write the script's results JSON (see `results_path`), say where, and return the path."""
    path = results_path(args, script)
    write_json(path, payload)
    print(f"\nwrote {path}")
    return path


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON (creating the folder), via a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()` from torch.utils.flop_counter, attention counted through the ``math``
    backend (the CPU SDPA kernel has no FLOP formula; see bench_unet.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    previous = os.environ.get("FDM_ATTENTION")
    os.environ["FDM_ATTENTION"] = "math"
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        if previous is None:
            del os.environ["FDM_ATTENTION"]
        else:
            os.environ["FDM_ATTENTION"] = previous
    return counter.get_total_flops()


def param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
