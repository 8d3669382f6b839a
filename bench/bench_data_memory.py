"""Peak memory (RSS) of `fdm train` against the size of the data set: 10k vs 100k synthetic
64x64 RGB images, 1 rank and 2 DDP ranks (torchrun, gloo) on one machine (issue 11, item 2).

Run from the repository root:

    python bench/bench_data_memory.py            # 10,000 and 100,000 images, 10 steps each
    python bench/bench_data_memory.py --quick    # 1,000 and 5,000 images, 3 steps

For each size the script writes a folder of PNGs (1,000 distinct random 64x64 RGB images, each
written N / 1,000 times under its own name, so that writing 100k files takes seconds, not
minutes; the cache decodes every file), then measures, each in a fresh process:

- ``in memory``: ``fdm_cli.open_data(FOLDER, 64, in_memory=True)`` (which loads the folder with
  `load_dataset`), the path `fdm train` took before the decoded cache (one uint8 tensor per
  process); for comparison;
- ``1 rank, builds cache``: ``fdm train --data FOLDER`` with an empty cache directory;
- ``1 rank``: the same run again, the cache reused;
- ``2 ranks``: ``torchrun --standalone --nproc_per_node 2 -m fdm_cli train ...``, cache reused.

Peak RSS is each process's ``VmHWM`` (/proc, Linux), polled every 50 ms until it exits (it only
grows, so the last poll holds the peak up to that point). The runs use a small UNet
(base_channels 8) at batch 64, so the data path's share of the memory is visible; samples and
checkpoints are written as usual. Results: a Markdown table and
``bench/results/bench_data_memory.json`` (``-quick`` for --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import format_machine, machine_info, markdown_table, save_results
from PIL import Image

DISTINCT = 1000
TRAIN_FLAGS = (
    "--resolution 64 --batch-size 64 --device cpu --no-progress --set model.base_channels=8 "
    "--set model.num_heads=2 --set sample.num=4 --set sample.steps=6 --set sample.strip_rows=2"
).split()
IN_MEMORY = "import sys, fdm_cli; fdm_cli.open_data(sys.argv[1], 64, in_memory=True)"


def make_folder(folder: Path, n: int) -> Path:
    """`n` 64x64 RGB PNGs in `folder` (kept between runs when complete)."""
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(min(n, DISTINCT)):
        path = folder / "tmp.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        encoded.append(path.read_bytes())
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(encoded[i % len(encoded)])
    (folder / "tmp.png").unlink()
    return folder


def _children(root: int) -> list[int]:
    """`root` and its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss(cmd: list[str], env: dict[str, str], marker: str) -> list[float]:
    """Run `cmd`; the peak RSS (MiB) of each descendant whose command line holds `marker`."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in _children(proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in cmdline and b"torch.distributed.run" not in cmdline:
                if (kib := _peak_kib(pid)) is not None:
                    peaks[pid] = max(peaks.get(pid, 0), kib)
        time.sleep(0.05)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return [peaks[p] / 1024 for p in sorted(peaks)]


def measure(args: argparse.Namespace, n: int, work: Path) -> list[dict[str, Any]]:
    folder = make_folder(work / f"images-{n}", n)
    cache = work / f"cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FDM_DATA_CACHE": str(cache)}
    run = work / "run"
    train = ["-m", "fdm_cli", "train", "--out", str(run), "--max-steps", str(args.steps)]
    train += [*TRAIN_FLAGS, "--data", str(folder)]
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = [
        ("in memory (load_dataset)", [py, "-c", IN_MEMORY, str(folder)], "in_memory=True"),
        ("1 rank, builds cache", [py, *train], "fdm_cli"),
        ("1 rank", [py, *train], "fdm_cli"),
        ("2 ranks", [*torchrun, *train], "fdm_cli"),
    ]
    rows = []
    for label, cmd, marker in runs:
        shutil.rmtree(run, ignore_errors=True)
        peaks = peak_rss(cmd, env, marker)
        rows.append({"images": n, "run": label, "ranks": len(peaks), "peak_rss_mib": peaks})
        print(f"{n} images, {label}: peak RSS {' / '.join(f'{p:.0f}' for p in peaks)} MiB")
    cache_bytes = sum(p.stat().st_size for p in cache.glob("*.u8"))
    rows.append({"images": n, "run": "cache file", "bytes": cache_bytes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="data set sizes (images)")
    parser.add_argument("--steps", type=int, help="training steps per run (default 10)")
    work = Path(tempfile.gettempdir()) / "fdm-bench-data-memory"
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--quick", action="store_true", help="1,000 and 5,000 images, 3 steps")
    parser.add_argument("--json", type=Path, help="results file (default bench/results/...)")
    args = parser.parse_args()
    args.sizes = args.sizes or ([1000, 5000] if args.quick else [10_000, 100_000])
    args.steps = args.steps or (3 if args.quick else 10)
    info = machine_info(threads=1)
    rows = [row for n in args.sizes for row in measure(args, n, args.work)]
    table = [
        (r["images"], r["run"], r["ranks"], " / ".join(f"{p:.0f}" for p in r["peak_rss_mib"]))
        for r in rows
        if "peak_rss_mib" in r
    ]
    command = " ".join(["python", "bench/bench_data_memory.py", *sys.argv[1:]])
    print(f"\n{format_machine(info)}\ncommand: {command}\n")
    print(markdown_table(["images", "run", "ranks", "peak RSS per rank (MiB)"], table))
    for r in rows:
        if "bytes" in r:
            print(f"\ncache file for {r['images']} images: {r['bytes'] / 2**20:.0f} MiB")
    save_results(args, "bench_data_memory", {"machine": info, "command": command, "rows": rows})


if __name__ == "__main__":
    main()
