"""Training throughput (images per second) of the presets with the same UNet, and how the
fdm-ds training step behaves under different CPU threading settings.

Run from the repository root:

    python bench/bench_training.py                     # ddpm, fdm-ds, fdm-blur-g; batch 64,
                                                       # 3 warm-up steps, 5 windows of 10 steps
    python bench/bench_training.py --autoencoder runs/autoencoder   # + fdm-vae and ldm
    python bench/bench_training.py --no-threading      # the preset table only
    python bench/bench_training.py --threading-only    # the threading table only (~10 min)
    python bench/bench_training.py --quick             # batch 16, 2-step windows, 2 s threading

Preset table: every preset gets the presets' default UNet and optimizer (`fdm_cli.TrainingStep`:
fused AdamW, the config's lr and betas, gradient clipping, EMA update), and each iteration is
what `fdm train`'s step does: a batch of the embedded Fashion-MNIST (32x32, random flips, as
`fdm train` reads it, `fdm_cli.open_data`), one `diffusion_loss` forward, backward, clip, AdamW
step, EMA update. The presets are timed side by side: each repeat times one window of steps of
every preset in turn (the starting preset rotates); the median window is reported, in images
per second, with the speed-up against ddpm.
This part runs in this process with ``--threads`` torch threads (default 1).

Threading section: the fdm-ds step (batch as above) in a fresh subprocess per configuration,
since OMP_WAIT_POLICY must be set before torch is imported: (a) torch's default thread count,
(b) the default count with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning at
barriers), (c) 1 thread, (d) what ``fdm train`` does by default: no count pinned, so its
thread tuner (`fdm_cli.runtime.threads`) starts with every core and adapts the count while it
runs. Each is measured alone and with one competing busy process: a second subprocess running
the same fdm-ds training loop with 1 thread (so it holds one core), started first and busy
before the measured window begins. Steps/s over a ``--threading-seconds`` window (default
60 s, long enough for (d)'s first probes to be amortised as in a real run, short enough that
(d) still pays them) after warm-up; the competitor's own rate over the same period is shown too.

Results are printed as Markdown tables and written to ``bench/results/bench_training.json``
(``--json PATH``; ``bench_training-quick.json`` for --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    BASE_PRESETS,
    LATENT_PRESETS,
    choose_presets,
    format_machine,
    machine_info,
    markdown_table,
    param_count,
    save_results,
)

from fdm_cli import DataStream, TrainingStep, open_data, train_config
from fdm_core import diffusion_loss

THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class Trainer:
    """One preset's model, optimizer and data stream; `step()` is one training iteration.

    The pieces are `fdm train`'s (`fdm_cli.TrainingStep`); `threads` pins torch's CPU thread
    count, None adapts it to the load as `fdm train` does (`self.threads` is that tuner)."""

    def __init__(
        self,
        preset: str,
        data: DataStream,
        batch: int,
        autoencoder: str | None = None,
        *,
        threads: int | None,
    ) -> None:
        sets = [f"process.autoencoder={autoencoder}"] if preset in LATENT_PRESETS else []
        options = {"train.batch_size": batch, "train.threads": threads}
        pieces = TrainingStep(train_config(preset, options, sets=sets), device="cpu")
        self.process, self.unet, self.ema = pieces.process, pieces.unet, pieces.ema
        self.optimizer, self.threads = pieces.optimizer, pieces.threads
        clip = pieces.config.optim.grad_clip
        self.clip = clip if clip > 0 else math.inf
        self.data, self.batch = data, batch
        self.steps = 0
        self.network = self.unet  # what diffusion_loss calls (bench_launch.py swaps in others)

    def batch_and_generator(self) -> tuple[torch.Tensor, torch.Generator]:
        x = self.data.batch(self.steps * self.batch, self.batch)
        return x, torch.Generator().manual_seed(self.steps)

    def update(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Loss, backward, clip, AdamW, EMA: the step with nothing read back; returns the loss."""
        self.unet.train()
        loss = diffusion_loss(self.process, self.network, x, generator=generator).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.clip)
        self.optimizer.step()
        self.ema.update(self.unet)
        self.steps += 1
        return loss.detach()

    def step(self) -> float:
        return float(self.update(*self.batch_and_generator()))


def load_data() -> DataStream:
    """The embedded Fashion-MNIST at 32x32 in `fdm train`'s seeded order, with random flips."""
    return open_data("fashion-mnist", 32, channels=1, seed=0, hflip=True)


# ---------------------------------------------------------------------------------------------
# Presets side by side


def preset_table(args: argparse.Namespace, presets: list[str]) -> list[dict[str, Any]]:
    data, threads = load_data(), args.threads
    trainers = {
        name: Trainer(name, data, args.batch, args.autoencoder, threads=threads) for name in presets
    }
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
    windows: dict[str, list[float]] = {name: [] for name in presets}
    for repeat in range(args.repeats):
        order = presets[repeat % len(presets) :] + presets[: repeat % len(presets)]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.window):
                trainers[name].step()
            windows[name].append(time.perf_counter() - start)
    base = args.window * args.batch / statistics.median(windows["ddpm"])
    results = []
    for name in presets:
        rate = args.window * args.batch / statistics.median(windows[name])
        results.append(
            {
                "preset": name,
                "stage_shapes": [list(s) for s in trainers[name].process.stage_shapes],
                "unet_params": param_count(trainers[name].unet),
                "window_seconds": windows[name],
                "images_per_s": rate,
                "steps_per_s": rate / args.batch,
                "speedup_vs_ddpm": rate / base,
            }
        )
    return results


# ---------------------------------------------------------------------------------------------
# Threading: subprocess workers


def worker(args: argparse.Namespace) -> None:
    """A subprocess: fdm-ds training steps; prints one JSON line (and 'ready' if competing)."""
    # fdm train's own thread handling: pinned to --worker-threads, or (0) adapted to the load
    trainer = Trainer("fdm-ds", load_data(), args.batch, threads=args.worker_threads or None)
    tuner = trainer.threads
    torch.set_flush_denormal(True)  # as fdm train does on CPU
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    for _ in range(args.warmup):
        trainer.step()
    if args.worker_seconds == 0:  # a competitor: busy until terminated
        print("ready", flush=True)
    start, steps = time.perf_counter(), 0
    while not stop["flag"]:
        trainer.step()
        tuner.tick()
        steps += 1
        if args.worker_seconds and time.perf_counter() - start >= args.worker_seconds:
            break
    elapsed = time.perf_counter() - start
    report = {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed}
    report |= {"threads": tuner.counts[0], "final_threads": tuner.best, "switches": tuner.switches}
    print(json.dumps(report), flush=True)


def worker_command(args: argparse.Namespace, threads: int, seconds: float) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--worker-threads", str(threads),
        "--worker-seconds", str(seconds),
        "--batch", str(args.batch),
        "--warmup", str(args.warmup),
    ]  # fmt: skip


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    return {**env, **extra}


def last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker printed no result:\n{text}")
    return json.loads(lines[-1])


def measure(
    args: argparse.Namespace, env: dict[str, str], threads: int, compete: bool
) -> dict[str, Any]:
    """Steps/s of one worker, alone or beside a 1-thread competitor that is already busy."""
    competitor = None
    if compete:
        competitor = subprocess.Popen(
            worker_command(args, 1, 0), env=clean_env({}), stdout=subprocess.PIPE, text=True
        )
        assert competitor.stdout is not None
        if competitor.stdout.readline().strip() != "ready":
            competitor.kill()
            raise RuntimeError("the competing worker did not start")
    try:
        done = subprocess.run(
            worker_command(args, threads, args.threading_seconds),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        other = None
        if competitor is not None:
            competitor.terminate()
            out, _ = competitor.communicate(timeout=120)
            other = last_json(out) if competitor.returncode == 0 else None
    result = last_json(done.stdout)
    result["competitor"] = other
    return result


def threading_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    configs = [
        ("(a) torch default threads", {}, cores),
        ("(b) default threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, cores),
        ("(c) 1 thread", {}, 1),
        ("(d) fdm's default: adapted to the load (fdm_cli.runtime.threads)", {}, 0),
    ]
    results = []
    for label, extra, threads in configs:
        env = clean_env(extra)
        alone = measure(args, env, threads, compete=False)
        busy = measure(args, env, threads, compete=True)
        results.append({"config": label, "env": extra, "alone": alone, "competing": busy})
    return results


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=None, help="default: " + " ".join(BASE_PRESETS)
    )
    parser.add_argument(
        "--autoencoder", default=None, help="an autoencoder folder: adds fdm-vae, ldm"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per preset/worker")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per preset")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (preset table)")
    parser.add_argument("--threading-seconds", type=float, default=60.0, help="window per run")
    parser.add_argument("--no-threading", action="store_true", help="skip the threading section")
    parser.add_argument("--threading-only", action="store_true", help="skip the preset table")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2-step windows, 2 s runs")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    if "--quick" in sys.argv[1:]:  # new defaults; flags given still win
        parser.set_defaults(batch=16, warmup=1, window=2, repeats=2, threading_seconds=2.0)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as fdm train does on CPU
    presets = choose_presets(parser, args.presets, args.autoencoder)

    info = machine_info(args.threads)
    results = [] if args.threading_only else preset_table(args, presets)
    threading = None if args.no_threading else threading_section(args)

    print(format_machine(info))
    if results:
        print(
            f"batch {args.batch}, {args.warmup} warm-up steps, median of {args.repeats} "
            f"round-robin windows of {args.window} steps; same UNet config for every preset "
            f"({results[0]['unet_params'] / 1e6:.2f} M parameters for ddpm)"
        )
        print()
        rows = [
            [
                r["preset"],
                " -> ".join("x".join(map(str, s)) for s in r["stage_shapes"]),
                f"{r['images_per_s']:.1f}",
                f"{r['steps_per_s']:.2f}",
                f"{r['speedup_vs_ddpm']:.2f}x",
            ]
            for r in results
        ]
        headers = ["preset", "stages", "images/s", "steps/s", "speed-up vs ddpm"]
        print(markdown_table(headers, rows))
    if threading is not None:
        print()
        print(
            f"Threading (fdm-ds training step, batch {args.batch}, one subprocess per run, "
            f"{args.threading_seconds:g} s windows; competitor: the same loop with 1 thread)"
        )
        print()
        rows = []
        for r in threading:
            alone, busy = r["alone"], r["competing"]
            other = busy["competitor"]
            rows.append(
                [
                    r["config"],
                    f"{alone['final_threads']} / {busy['final_threads']}",
                    f"{alone['steps_per_s']:.2f}",
                    f"{busy['steps_per_s']:.2f}",
                    f"{alone['steps_per_s'] / busy['steps_per_s']:.2f}x",
                    "?" if other is None else f"{other['steps_per_s']:.2f}",
                ]
            )
        headers = ["configuration", "threads at the end (alone / competing)", "steps/s alone",
                   "steps/s with a competitor", "slow-down", "competitor steps/s"]  # fmt: skip
        print(markdown_table(headers, rows))
    payload = {"machine": info, "args": vars(args), "results": results, "threading": threading}
    save_results(args, "bench_training", payload)


if __name__ == "__main__":
    main()
