"""Sampling cost per image of the presets at equal total sampler steps: measured and FLOP-model
speed-up against the one-stage DDPM baseline.

Run from the repository root:

    python bench/bench_sampling.py                     # ddpm, fdm-ds, fdm-blur-g; 100 DDIM steps,
                                                       # batch 64, 1 warm-up + 3 timed repeats
    python bench/bench_sampling.py --autoencoder runs/autoencoder   # + fdm-vae and ldm
    python bench/bench_sampling.py --quick             # batch 4, 10 steps, 2 repeats (a check)

Every preset gets the presets' default UNet (`presets.BASE["model"]`) with freshly initialised
(untrained) weights: the sampler's work does not depend on the weights, so the timing is that of
a trained model. The presets are timed side by side: each repeat runs one full sampling call of
every preset in turn (the starting preset rotates), and the median per preset is reported.

The FLOP model: UNet FLOPs of one forward at each stage's shape (torch.utils.flop_counter,
attention through the ``math`` backend) times the number of network evaluations in that stage,
plus everything else the sampler does (boundary up-steps, an autoencoder's decoder) counted by
running the same sampler with a zero network under the FLOP counter. "measured / FLOP" is the
measured speed-up divided by the FLOP speed-up: 1 means time follows FLOPs; below 1, the cheap
stages run fewer FLOPs per second than full resolution (small tensors, per-call overheads).

Results are printed as a Markdown table and written to ``bench/results/bench_sampling.json``
(``--json PATH``; ``bench_sampling-quick.json`` for --quick).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    BASE_PRESETS,
    LATENT_PRESETS,
    choose_presets,
    count_flops,
    format_machine,
    machine_info,
    markdown_table,
    param_count,
    save_results,
)
from plots import bar_chart

from fdm_cli import train_config
from fdm_core import FDMProcess, SamplerConfig, StageNoise, sample
from fdm_models import MultiStageUNet


class Counting(torch.nn.Module):
    """Wraps a denoiser; counts evaluations per stage (and returns zeros with ``zero=True``)."""

    def __init__(self, inner: torch.nn.Module | None) -> None:
        super().__init__()
        self.inner = inner
        self.calls: dict[int, int] = {}

    def forward(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        self.calls[stage] = self.calls.get(stage, 0) + 1
        return torch.zeros_like(z) if self.inner is None else self.inner(z, t, stage)


def build(preset: str, autoencoder: str | None) -> tuple[FDMProcess, MultiStageUNet]:
    overrides = [f"process.autoencoder={autoencoder}"] if preset in LATENT_PRESETS else []
    cfg = train_config(preset, sets=overrides)
    torch.manual_seed(0)
    return FDMProcess(cfg.process), MultiStageUNet(cfg.model).eval()


def flop_model(
    process: FDMProcess, unet: MultiStageUNet, sampler: SamplerConfig, batch: int
) -> dict[str, Any]:
    """Network evaluations per stage, UNet FLOPs per stage, and the sampler's other FLOPs."""
    counter = Counting(None)
    noise = StageNoise(seeds=torch.arange(batch))
    other = count_flops(lambda: sample(process, counter, sampler, noise=noise))
    evals = [counter.calls.get(k, 0) for k in range(process.num_stages)]
    per_stage = []
    with torch.inference_mode():
        for k, shape in enumerate(process.stage_shapes):
            z, t = torch.randn(batch, *shape), torch.rand(batch)
            per_stage.append(count_flops(lambda z=z, t=t, k=k: unet(z, t, k)))
    total = sum(n * f for n, f in zip(evals, per_stage, strict=True)) + other
    return {"evals": evals, "unet_flops": per_stage, "other_flops": other, "total_flops": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=None, help="default: " + " ".join(BASE_PRESETS)
    )
    parser.add_argument(
        "--autoencoder", default=None, help="an autoencoder folder: adds fdm-vae, ldm"
    )
    parser.add_argument("--steps", type=int, default=100, help="total DDIM steps (all stages)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="batch 4, 10 steps, 2 repeats")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    if "--quick" in sys.argv[1:]:  # new defaults; flags given still win
        parser.set_defaults(batch=4, steps=10, repeats=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    presets = choose_presets(parser, args.presets, args.autoencoder)

    sampler = SamplerConfig(steps=args.steps, eta=0.0)
    models = {name: build(name, args.autoencoder) for name in presets}
    flops = {name: flop_model(p, u, sampler, args.batch) for name, (p, u) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in presets}
    noise = StageNoise(seeds=torch.arange(args.batch))
    for repeat in range(args.warmup + args.repeats):
        order = presets[repeat % len(presets) :] + presets[: repeat % len(presets)]
        for name in order:
            process, unet = models[name]
            start = time.perf_counter()
            sample(process, unet, sampler, noise=noise)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)

    info = machine_info(args.threads)
    base_s = statistics.median(times["ddpm"]) / args.batch
    base_flops = flops["ddpm"]["total_flops"]
    rows, results = [], []
    for name in presets:
        process, unet = models[name]
        s_img = statistics.median(times[name]) / args.batch
        speedup, flop_speedup = base_s / s_img, base_flops / flops[name]["total_flops"]
        shapes = " -> ".join("x".join(map(str, s)) for s in process.stage_shapes)
        evals = flops[name]["evals"]
        rows.append(
            [
                name,
                shapes,
                "/".join(map(str, evals)),
                f"{s_img:.4f}",
                f"{flops[name]['total_flops'] / args.batch / 1e9:.1f}",
                f"{speedup:.2f}x",
                f"{flop_speedup:.2f}x",
                f"{speedup / flop_speedup:.2f}",
            ]
        )
        results.append(
            {
                "preset": name,
                "stage_shapes": [list(s) for s in process.stage_shapes],
                "evals_per_stage": evals,
                "unet_params": param_count(unet),
                "seconds": times[name],
                "s_per_image": s_img,
                "speedup_vs_ddpm": speedup,
                "flop_speedup_vs_ddpm": flop_speedup,
                "measured_over_flop": speedup / flop_speedup,
                **flops[name],
            }
        )
    print(format_machine(info))
    print(
        f"{args.steps} DDIM steps in all, batch {args.batch}, untrained weights (same UNet config "
        f"for every preset, {param_count(models['ddpm'][1]) / 1e6:.2f} M parameters for ddpm), "
        f"median of {args.repeats} round-robin repeats after {args.warmup} warm-up"
    )
    print()
    headers = ["preset", "stages", "steps per stage (k = 0..K)", "s/img", "GFLOP/img",
               "speed-up vs ddpm", "FLOP speed-up", "measured / FLOP"]  # fmt: skip
    print(markdown_table(headers, rows))
    path = save_results(
        args, "bench_sampling", {"machine": info, "args": vars(args), "results": results}
    )
    plot = bar_chart(
        [r["preset"] for r in results],
        [r["speedup_vs_ddpm"] for r in results],
        path.with_name(f"{path.stem}-speedup.png"),
        f"Sampling speed-up per image over ddpm, {args.steps} DDIM steps (measured)",
        "x ddpm (higher is faster)",
        highlight={"fdm-ds"},
        reference=(1.0, "ddpm"),
    )
    print(f"wrote {plot}")


if __name__ == "__main__":
    main()
