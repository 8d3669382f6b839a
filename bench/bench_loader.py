"""Images per second of the data path alone (folder decode, decoded cache, tar shards) against
what the training step consumes at 64x64 RGB (issue 11, item 6).

Run from the repository root:

    python bench/bench_loader.py            # 2,000 images, 20 batches per source, 5 train steps
    python bench/bench_loader.py --quick    # 256 images, 3 batches, 1 train step (a check)

Synthetic data: N random 64x64 RGB PNGs in a folder, and the same folder packed with
``fdm data pack --resolution 64`` (shards of 256). Each data row is what `fdm train` does per
batch of 64 in its own process (no worker processes, one thread):

- ``folder, decode``: `fdm_cli.open_data` of the folder, which decodes its files into the data
  cache (PNG decode, fit, uint8), i.e. the first run's one-time cost, per image;
- ``folder, cache``: batches of the seeded order read from the decoded cache (``os.pread`` per
  image, float conversion, flips), as every later run reads them;
- ``shards``: batches of `fdm_cli.open_data` on the packed folder (tar read, PNG decode, fit,
  flips).

The training row times `fdm_cli.TrainingStep`, the step of ``fdm train --resolution 64``
(``--preset``, default fdm-ds, with the preset's UNet; batch 64, fused AdamW, EMA; after one
warm-up step) with ``--threads`` torch threads, as images per second; each data row shows its
share of a step's time (data / (data + step)).
Results: a Markdown table and ``bench/results/bench_loader.json`` (``-quick`` for --quick).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import format_machine, machine_info, markdown_table, save_results
from PIL import Image

from fdm_cli import TrainingStep, open_data, pack_shards, train_config

BATCH = 64
RESOLUTION = 64


def make_folder(folder: Path, n: int) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:06d}.png")
    return folder


def rate(fn: Any, batches: int) -> float:
    """Images per second of `fn(i)` returning a batch, over `batches` calls."""
    start = time.perf_counter()
    images = sum(len(fn(i)) for i in range(batches))
    return images / (time.perf_counter() - start)


def train_rate(folder: Path, preset: str, steps: int, threads: int) -> tuple[float, int]:
    """Images per second of the `preset` train step at 64x64 (its UNet, batch 64)."""
    options = {
        "data.source": str(folder),
        "process.resolution": RESOLUTION,
        "train.batch_size": BATCH,
        "train.threads": threads,
    }
    step = TrainingStep(train_config(preset, options), device="cpu")
    x = torch.rand(BATCH, 3, RESOLUTION, RESOLUTION) * 2 - 1

    def one(i: int) -> torch.Tensor:
        step(x)
        return x

    one(-1)  # warm-up
    return rate(one, steps), sum(p.numel() for p in step.unet.parameters())


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    folder = make_folder(work / "images", args.images)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    torch.set_num_threads(1)  # the data path runs in the training process
    start = time.perf_counter()
    indexed = open_data(folder, RESOLUTION, channels=3, seed=0, hflip=True, cache_dir=cache)
    decode = args.images / (time.perf_counter() - start)
    shards = work / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    pack_shards(folder, shards, shard_size=256, resolution=RESOLUTION)
    stream = open_data(shards, RESOLUTION, channels=3, seed=0, hflip=True)
    rows = [
        {"source": "folder, decode (cache build, once)", "images_per_s": decode},
        {
            "source": "folder, cache",
            "images_per_s": rate(lambda i: indexed.batch(i * BATCH, BATCH), args.batches),
        },
        {
            "source": "shards",
            "images_per_s": rate(lambda i: stream.batch(i * BATCH, BATCH), args.batches),
        },
    ]
    train, params = train_rate(folder, args.preset, args.steps, args.threads)
    step_s = BATCH / train
    for row in rows:
        data_s = BATCH / row["images_per_s"]
        row["share_of_step"] = data_s / (data_s + step_s)
    return rows, {"images_per_s": train, "unet_params": params, "threads": args.threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images")
    parser.add_argument("--batches", type=int, default=20, help="batches of 64 per data source")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--preset", default="fdm-ds", help="preset of the training step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the train step")
    work = Path(tempfile.gettempdir()) / "fdm-bench-loader"
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--quick", action="store_true", help="256 images, 3 batches, 1 step")
    parser.add_argument("--json", type=Path, help="results file (default bench/results/...)")
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(images=256, batches=3, steps=1)
    args = parser.parse_args()
    info = machine_info(threads=args.threads)
    rows, train = measure(args, args.work)
    command = " ".join(["python", "bench/bench_loader.py", *sys.argv[1:]])
    print(f"\n{format_machine(info)}\ncommand: {command}")
    print(
        f"{args.images} synthetic {RESOLUTION}x{RESOLUTION} RGB PNGs, batch {BATCH}; training "
        f"step: {args.preset}, {train['unet_params'] / 1e6:.2f}M-parameter UNet, "
        f"{args.threads} thread(s)\n"
    )
    table = [
        [r["source"], f"{r['images_per_s']:,.0f}", f"{r['share_of_step']:.1%}"] for r in rows
    ] + [["training step consumes", f"{train['images_per_s']:,.1f}", ""]]
    print(markdown_table(["data path", "images/s", "share of a step"], table))
    payload = {"machine": info, "command": command, "rows": rows, "train": train}
    save_results(args, "bench_loader", payload)


if __name__ == "__main__":
    main()
