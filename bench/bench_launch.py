"""The launch structure of a training step, measured on any machine: aten ops and host reads.

On a GPU a small-image training step is bound by kernel launches and by every read of a value
back to the host, not by FLOPs. Both are counted here on the CPU, so the structure of the step
is measured on every machine, GPU or not:

- aten ops per step: every ``aten::`` event that ``torch.profiler`` records during one training
  step (forward, backward, gradient clipping, AdamW, EMA update), nested ones included; each
  leaf op is one kernel launch or more on a GPU;
- host reads per step: the calls that bring a tensor's values to the host (``.item()``,
  ``float()``, ``bool()``, ``tolist``, ``nonzero``, ...; `fdm_core.HostReads`), each one a
  synchronisation that drains the GPU queue.

Run from the repository root:

    python bench/bench_launch.py            # ddpm, fdm-ds, fdm-blur-g, default UNet, batch 64
    python bench/bench_launch.py --quick    # batch 16

Each preset's step is `bench_training.Trainer.update` (what `fdm train` does per step: the
packed UNet call when the UNet packs its stages). Two more rows per preset isolate the parts:
``per-stage calls`` runs the same UNet once per stage (the path for networks that cannot pack),
and ``1x1 stand-in`` replaces the UNet by one 1x1 convolution per stage, leaving the process,
the loss and the optimizer alone. Targets (BENCHMARKS.md): fdm-ds at most 1.15x the aten ops of
ddpm, fdm-blur-g at most 1.2x, and 0 host reads per step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from bench_training import Trainer, load_data
from common import format_machine, machine_info, markdown_table, save_results
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fdm_core import HostReads

PRESETS = ["ddpm", "fdm-ds", "fdm-blur-g"]


class StandIn(nn.Module):
    """One 1x1 convolution per stage: a network with almost no ops of its own."""

    def __init__(self, stage_shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s[0], s[0], 1) for s in stage_shapes)

    def forward(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        return self.convs[stage](z)


def measure(trainer: Trainer, warmup: int) -> dict[str, Any]:
    """aten ops and host reads of one step after `warmup` steps."""
    for _ in range(warmup):
        trainer.step()
    x, generator = trainer.batch_and_generator()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.update(x, generator)
    aten = sum(1 for event in prof.events() if event.name.startswith("aten::"))
    x, generator = trainer.batch_and_generator()
    with HostReads() as reads:
        trainer.update(x, generator)
    return {"aten_ops": aten, "host_reads": reads.total, "read_sites": reads.sites}


def variants(preset: str, dataset: Any, batch: int) -> dict[str, Trainer]:
    """The preset's step as `fdm train` runs it, with per-stage UNet calls, and with a stand-in."""
    threads = torch.get_num_threads()  # as set from --threads
    packed = Trainer(preset, dataset, batch, threads=threads)
    per_stage = Trainer(preset, dataset, batch, threads=threads)
    per_stage.network = lambda z, t, k: per_stage.unet(z, t, k)  # no packs_stages capability
    stand_in = Trainer(preset, dataset, batch, threads=threads)
    stand_in.unet = StandIn(stand_in.process.stage_shapes)
    stand_in.network = stand_in.unet
    stand_in.optimizer = torch.optim.AdamW(stand_in.unet.parameters(), fused=True)
    stand_in.ema = type(stand_in.ema)(stand_in.unet)
    return {"fdm train step": packed, "per-stage calls": per_stage, "1x1 stand-in": stand_in}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--quick", action="store_true", help="batch 16")
    parser.add_argument("--json", type=Path, help="results JSON (default bench/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch = 16
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    dataset = load_data()
    results = []
    for preset in args.presets:
        for variant, trainer in variants(preset, dataset, args.batch).items():
            results.append({"preset": preset, "variant": variant, **measure(trainer, args.warmup)})
    base = {r["variant"]: r["aten_ops"] for r in results if r["preset"] == "ddpm"}
    rows = [
        [
            r["preset"],
            r["variant"],
            r["aten_ops"],
            f"{r['aten_ops'] / base[r['variant']]:.2f}x" if r["variant"] in base else "-",
            r["host_reads"],
        ]
        for r in results
    ]
    print(format_machine(info))
    print(f"batch {args.batch}, one training step after {args.warmup} warm-up steps\n")
    headers = ["preset", "step", "aten ops", "vs ddpm", "host reads"]
    print(markdown_table(headers, rows))
    for r in results:
        if r["host_reads"]:
            print(f"\n{r['preset']} ({r['variant']}) reads: {r['read_sites']}", file=sys.stderr)
    save_results(args, "bench_launch", {"machine": info, "batch": args.batch, "results": results})


if __name__ == "__main__":
    main()
