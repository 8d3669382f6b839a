"""Per-stage cost of the multi-stage UNet: forward time and FLOPs of each stage of a 2x
down-sampling f-DM (1x32x32 -> 1x16x16 -> 1x8x8, four levels) against the full-resolution stage.

Run from the repository root:

    python bench/bench_unet.py                      # batch 64, CPU, 'small' preset, 7 repeats
    python bench/bench_unet.py --size tiny --batch 32 --repeats 5 --device cuda

Stages are timed side by side (round-robin inside every repeat, median over repeats) so the
time ratios compare like with like. FLOPs come from torch.utils.flop_counter with the ``math``
attention backend (the CPU SDPA kernel has no FLOP formula); timing uses the configured backend.
Targets (docs/design.md §6.1: coarse stages skip the outer levels): stage 1 <= 0.65x and stage 2 <=
0.25x the stage-0 time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import cpu_model
from torch.utils.flop_counter import FlopCounterMode

from fdm_models import MultiStageUNet, UNetConfig, resolve_attention_backend

STAGE_SHAPES = [(1, 32, 32), (1, 16, 16), (1, 8, 8)]
TARGETS = {1: 0.65, 2: 0.25}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: MultiStageUNet, z: torch.Tensor, t: torch.Tensor, stage: int) -> int:
    """Forward FLOPs of one stage, attention counted through the math backend."""
    previous = os.environ.get("FDM_ATTENTION")
    os.environ["FDM_ATTENTION"] = "math"
    try:
        with FlopCounterMode(display=False) as counter:
            model(z, t, stage)
    finally:
        if previous is None:
            del os.environ["FDM_ATTENTION"]
        else:
            os.environ["FDM_ATTENTION"] = previous
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    config = UNetConfig.for_stages(STAGE_SHAPES, size=args.size)
    model = MultiStageUNet(config).to(device).eval()
    inputs = [
        (torch.randn(args.batch, *shape, device=device), torch.rand(args.batch, device=device))
        for shape in STAGE_SHAPES
    ]
    times: dict[int, list[float]] = {stage: [] for stage in range(len(STAGE_SHAPES))}
    with torch.inference_mode():
        flops = [count_flops(model, z, t, stage) for stage, (z, t) in enumerate(inputs)]
        for repeat in range(args.warmup + args.repeats):
            for stage, (z, t) in enumerate(inputs):
                _sync(device)
                start = time.perf_counter()
                model(z, t, stage)
                _sync(device)
                if repeat >= args.warmup:
                    times[stage].append(time.perf_counter() - start)

    print(
        f"torch {torch.__version__}, {cpu_model()}, "
        f"threads {torch.get_num_threads()}, device {device}, "
        f"attention {resolve_attention_backend(config.attention, device)}"
    )
    print(
        f"preset {args.size}: base {config.base_channels}, mult {config.channel_mult}, "
        f"res blocks {config.num_res_blocks}, attention levels {config.attention_levels}, "
        f"batch {args.batch}, median of {args.repeats}"
    )
    print()
    print("| stage | shape | entry level | GFLOPs | FLOP ratio | median ms | time ratio | target |")
    print("|---|---|---|---|---|---|---|---|")
    base_time = statistics.median(times[0])
    for stage, shape in enumerate(STAGE_SHAPES):
        median = statistics.median(times[stage])
        ratio = median / base_time
        target = TARGETS.get(stage)
        verdict = "" if target is None else f"<= {target} {'ok' if ratio <= target else 'MISSED'}"
        print(
            f"| {stage} | {'x'.join(map(str, shape))} | {config.stage_levels[stage]} | "
            f"{flops[stage] / 1e9:.2f} | {flops[stage] / flops[0]:.3f} | {median * 1e3:.1f} | "
            f"{ratio:.3f} | {verdict} |"
        )


if __name__ == "__main__":
    main()
