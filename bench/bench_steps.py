"""Equal-quality sampling cost: the fewest sampler steps at which a model's FID stays within 5%
of its own FID at 100 DDIM steps, and what that step count saves per image against the ddpm
baseline sampled with 100 steps.

Run from the repository root after bench_quality.py, whose trained models it reuses:

    python bench/bench_steps.py                    # fdm-ds at 100, 50, 35, 25 and 20 DDIM steps,
                                                   # FID@2000, against ddpm at 100 steps
    python bench/bench_steps.py --steps 100 40 30 --num 1000
    python bench/bench_steps.py --quick            # bench_quality --quick's models: FID@64,
                                                   # 10 and 5 steps

FID: `fdm_cli.evaluate` on ``<runs>/<model>/model`` with bench_quality's seeds, batch and
reference (the Fashion-MNIST test split), once per step count; the value at
``--base-steps`` is read from bench_quality's ``result.json`` when its N and steps match. Each
FID is kept in ``<runs>/<model>/steps-<S>-<N>.json``, so an interrupted run continues.

Time: one batch of ``--batch`` images per step count of the model and of the baseline at
``--base-steps``, timed side by side (round robin, ``--repeats`` times, median), with the trained
weights. Seconds per image and the speed-up over the baseline at its base steps follow.

Results: a Markdown table and ``bench/results/bench_steps.json`` (``--json PATH``;
``bench_steps-quick.json`` for --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS_DIR,
    format_machine,
    machine_info,
    markdown_table,
    save_results,
    write_json,
)

from fdm_cli import LoadedModel, evaluate, load_model
from fdm_core import SamplerConfig, StageNoise, sample

QUICK = {
    "runs": RESULTS_DIR / "quality-quick",
    "steps": [10, 5],
    "base_steps": 10,
    "num": 64,
    "batch": 4,
    "repeats": 1,
}


def fid_at(run_dir: Path, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """FID/KID of the model at `steps` DDIM steps (cached in the run folder)."""
    cache = run_dir / f"steps-{steps}-{args.num}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    quality = run_dir / "result.json"
    if quality.is_file():
        record = json.loads(quality.read_text()).get("eval", {})
        if record.get("steps") == steps and record.get("num") == args.num:
            return record
    print(f"{run_dir.name}: FID@{args.num} with {steps} DDIM steps", flush=True)
    metrics = evaluate(
        run_dir / "model",
        args.num,
        steps=steps,
        eta=0.0,
        seed=0,
        batch_size=64,
        ref="fashion-mnist",
        ref_split="test",
        device="cpu",
        threads=args.threads,
    )
    write_json(cache, metrics)
    return metrics


def seconds_per_image(
    models: dict[str, LoadedModel], runs: list[tuple[str, int]], args: argparse.Namespace
) -> dict[tuple[str, int], float]:
    """Median seconds per image of each (model, steps), timed round robin."""
    noise = StageNoise(seeds=torch.arange(args.batch))
    times: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    with torch.inference_mode():
        for repeat in range(1 + args.repeats):  # the first round warms up
            shift = repeat % len(runs)
            for name, steps in runs[shift:] + runs[:shift]:
                loaded = models[name]
                start = time.perf_counter()
                sample(loaded.process, loaded.unet, SamplerConfig(steps=steps), noise=noise)
                if repeat:
                    times[(name, steps)].append(time.perf_counter() - start)
    return {run: statistics.median(t) / args.batch for run, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RESULTS_DIR / "quality",
                        help="bench_quality's --out folder")  # fmt: skip
    parser.add_argument("--model", default="fdm-ds", help="the model whose steps are cut")
    parser.add_argument("--baseline", default="ddpm", help="timed at --base-steps")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 50, 35, 25, 20])
    parser.add_argument("--base-steps", type=int, default=100)
    parser.add_argument("--num", type=int, default=2000, help="samples for FID/KID")
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative FID increase")
    parser.add_argument("--batch", type=int, default=64, help="images per timed sampler call")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (pinned)")
    parser.add_argument("--quick", action="store_true", help="bench_quality --quick's models")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    if "--quick" in sys.argv[1:]:  # new defaults; flags given still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    steps = sorted(set(args.steps) | {args.base_steps}, reverse=True)
    dirs = {name: args.runs / name for name in (args.model, args.baseline)}
    for run_dir in dirs.values():
        if not (run_dir / "model").is_dir():
            parser.error(f"{run_dir / 'model'} does not exist: run bench_quality.py first")
    torch.set_num_threads(args.threads)

    info = machine_info(args.threads)
    fids = {s: fid_at(dirs[args.model], s, args) for s in steps}
    models = {name: load_model(run_dir, device="cpu") for name, run_dir in dirs.items()}
    runs = [(args.baseline, args.base_steps)] + [(args.model, s) for s in steps]
    speed = seconds_per_image(models, runs, args)

    base_fid = fids[args.base_steps]["fid"]
    base_s = speed[(args.baseline, args.base_steps)]
    results = [
        {
            "steps": s,
            "fid": fids[s]["fid"],
            "kid": fids[s]["kid"],
            "relative_fid": fids[s]["fid"] / base_fid,
            "within_tolerance": fids[s]["fid"] <= (1 + args.tolerance) * base_fid,
            "s_per_image": speed[(args.model, s)],
            "speedup_vs_baseline": base_s / speed[(args.model, s)],
        }
        for s in steps
    ]
    ok = [r for r in results if r["within_tolerance"]]
    fewest = min(ok, key=lambda r: r["steps"])  # the base steps are always within

    print(format_machine(info))
    print(
        f"{args.model} FID@{args.num} at each step count (DDIM, eta 0) against its own at "
        f"{args.base_steps}; seconds per image with batch {args.batch}, median of "
        f"{args.repeats}; {args.baseline} at {args.base_steps} steps: {base_s:.4f} s/img"
    )
    print()
    rows = [
        [
            r["steps"],
            f"{r['fid']:.2f}",
            f"{r['relative_fid']:.3f}",
            "yes" if r["within_tolerance"] else "no",
            f"{r['s_per_image']:.4f}",
            f"{r['speedup_vs_baseline']:.2f}x",
        ]
        for r in results
    ]
    headers = ["steps", f"FID@{args.num}", f"/ FID at {args.base_steps}",
               f"within {args.tolerance:.0%}", "s/img",
               f"speed-up vs {args.baseline} at {args.base_steps}"]  # fmt: skip
    print(markdown_table(headers, rows))
    print(
        f"\nfewest steps within {args.tolerance:.0%}: {fewest['steps']} "
        f"({fewest['speedup_vs_baseline']:.2f}x faster per image than {args.baseline} at "
        f"{args.base_steps} steps)"
    )
    payload = {"machine": info, "args": vars(args), "results": results, "fewest": fewest}
    save_results(args, "bench_steps", payload)


if __name__ == "__main__":
    main()
