"""Training images/s and sampling s/img of f-DM against its one-stage baseline, side by side in
one process, on a GPU (or, with ``--device cpu --quick``, a check that the script runs).

Run from the repository root (`bench/gpu_check.sh` runs all three parts):

    python bench/bench_gpu.py train --pairs fdm-ds:ddpm --batch 64 512 \\
        --precision fp32 bf16 --compile off on              # the default UNet
    python bench/bench_gpu.py train --pairs fdm-ds-64:ddpm-64 --batch 128 --precision bf16
    python bench/bench_gpu.py train --pairs fdm-ds-256:ddpm-256 --batch 32 --precision bf16
    python bench/bench_gpu.py sample --pairs fdm-ds:ddpm fdm-ds-64:ddpm-64 --batch 256
    python bench/bench_gpu.py train --device cpu --quick    # a check on any machine

A training step is exactly `fdm train`'s (`fdm_cli.TrainingStep`: the packed loss, backward,
clip, fused AdamW, EMA; `--compile on` compiles the loss and the update as ``train.compile``
does) on random data of the preset's shape, so the data path is not timed. Each configuration
builds both presets of a pair, warms them up (compiling when asked), then times windows of steps
of the two in turn (A B A B ...), synchronising the device at each window's end; the median
window gives images/s and the ratio A/B. Sampling runs `fdm_core.sample` (DDIM, ``--steps``
total; `--compile on`: one graph per stage, as `fdm sample --compile`) at ``--batch`` images with
untrained weights (the work does not depend on them), A and B
in turn.
Each line printed is one Markdown table row; results go to ``bench/results/bench_gpu-<part>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import format_machine, machine_info, markdown_table, save_results

from fdm_cli import TrainConfig, TrainingStep, train_config
from fdm_core import FDMProcess, SamplerConfig, StageNoise, sample
from fdm_models import MultiStageUNet


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def preset_config(preset: str, batch: int, **options: Any) -> TrainConfig:
    """The preset's config at `batch` (and `options`: dotted key -> value). The data source is
    never opened: the RGB presets, which have none by default, get their channels fixed (3)."""
    rgb = preset.endswith(("-64", "-256"))
    data = {"data.source": "random batches", "data.channels": 3} if rgb else {}
    return train_config(preset, {"train.batch_size": batch, **data, **options})


def build_run(
    preset: str, batch: int, precision: str, compile: bool, device: torch.device
) -> TrainingStep:
    """`fdm train`'s step for `preset`: its process, UNet, EMA, optimizer and loss."""
    options = {"train.precision": precision, "train.compile": compile}
    return TrainingStep(preset_config(preset, batch, **options), device=device)


def time_training(run: TrainingStep, steps: int, device: torch.device) -> float:
    """Seconds for `steps` training steps (the device synchronised before and after)."""
    shape = (run.config.train.batch_size, *run.process.stage_shapes[0])
    if run.process.latent is not None:
        raise SystemExit("latent presets need an autoencoder; not timed here")
    x = torch.rand(shape, device=device) * 2 - 1
    generator = torch.Generator(device).manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run(x, generator)
    synchronize(device)
    return time.perf_counter() - start


def train_part(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    results = []
    for pair, batch, precision, compile_ in itertools.product(
        args.pairs, args.batch, args.precision, args.compile
    ):
        compiled = compile_ == "on"
        runs = {p: build_run(p, batch, precision, compiled, device) for p in pair.split(":")}
        for run in runs.values():
            time_training(run, args.warmup, device)
        windows: dict[str, list[float]] = {p: [] for p in runs}
        for _ in range(args.repeats):
            for preset, run in runs.items():
                windows[preset].append(time_training(run, args.window, device))
        rates = {p: args.window * batch / statistics.median(w) for p, w in windows.items()}
        a, b = runs
        row = {
            "pair": pair, "batch": batch, "precision": precision, "compile": compile_,
            "images_per_s": rates, "steps_per_s": {p: r / batch for p, r in rates.items()},
            "ratio": rates[a] / rates[b],
        }  # fmt: skip
        cells = [pair, batch, precision, compile_, f"{rates[a]:.1f}", f"{rates[b]:.1f}"]
        print("| " + " | ".join(map(str, [*cells, f"{row['ratio']:.2f}x"])) + " |", flush=True)
        results.append(row)
        del runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def sample_part(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    results = []
    batch = args.batch[0]
    for pair, compile_ in itertools.product(args.pairs, args.compile):
        config = SamplerConfig(steps=args.steps, compile=compile_ == "on")  # a graph per stage
        models = {}
        for preset in pair.split(":"):
            cfg = preset_config(preset, batch)
            process = FDMProcess(cfg.process)
            models[preset] = (process, MultiStageUNet(cfg.model).to(device).eval())
        seconds: dict[str, list[float]] = {p: [] for p in models}
        for repeat in range(args.repeats + 1):
            for preset, (process, unet) in models.items():
                synchronize(device)
                start = time.perf_counter()
                sample(process, unet, config, StageNoise(torch.arange(batch)), device=device)
                synchronize(device)
                if repeat:  # the first round is the warm-up
                    seconds[preset].append(time.perf_counter() - start)
        per_image = {p: statistics.median(s) / batch for p, s in seconds.items()}
        a, b = models
        ratio = per_image[b] / per_image[a]
        print(f"| {pair} | {batch} | {args.steps} | {compile_} | {per_image[a]:.5f} | "
              f"{per_image[b]:.5f} | {ratio:.2f}x |", flush=True)  # fmt: skip
        results.append(
            {"pair": pair, "compile": compile_, "s_per_image": per_image, "speedup": ratio}
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["train", "sample"])
    parser.add_argument("--pairs", nargs="+", default=["fdm-ds:ddpm"], help="A:B preset pairs")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"]
    )
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=100, help="sampling: total DDIM steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=20, help="training steps per window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny: batch 4, 2-step windows")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.window, args.repeats, args.steps = [4], 1, 2, 1, 6
    device = torch.device(args.device)
    print(format_machine(machine_info()))
    if device.type == "cuda":
        print(f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}\n")
    if args.part == "train":
        print(
            "| pair A:B | batch | precision | compile | A img/s | B img/s | A/B |\n|" + "---|" * 7
        )
        results = train_part(args, device)
    else:
        print(
            markdown_table(
                ["pair A:B", "batch", "steps", "compile", "A s/img", "B s/img", "B/A"], []
            )
        )
        results = sample_part(args, device)
    save_results(args, f"bench_gpu-{args.part}", {"machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
