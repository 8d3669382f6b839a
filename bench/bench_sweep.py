"""The recipe sweep for sample quality at a fixed CPU budget (issue 24): every setting trained for
the same number of *quiet* minutes, converted once into optimizer steps, then scored.

Run from the repository root, on an otherwise idle machine for the timing phase:

    python bench/bench_sweep.py time                 # quiet steps/min of every compute shape
    python bench/bench_sweep.py screen               # train + score every setting, in order
    python bench/bench_sweep.py screen --only fdm-ds fdm-ds-lr2e-3 ddpm
    python bench/bench_sweep.py confirm fdm-ds-lr2e-3 --minutes 20 --num 2000 --steps 100
    python bench/bench_sweep.py table                # the Markdown table of everything scored
    python bench/bench_sweep.py rank --out bench/results/sweep/confirm-20min-2000
    python bench/bench_sweep.py confirm ddpm fdm-blur-g --train-steps 636 --num 2000 --steps 100

Why steps and not minutes: the sweep runs in the background for hours while other work shares
the machine, and a wall-clock budget would then hand each setting whatever CPU was left. The
`time` phase measures each compute shape (preset, UNet, batch size, stage split: the settings
that change the cost of a step) alone: ``--time-steps`` steps after ``--warm-steps`` (the
seconds between those rows of the run's loss.csv, so start-up, data loading and the final grid
are not counted). A setting's budget is then ``round(minutes * steps_per_min)`` steps
(``train.max_steps``, the learning rate decays over them), and the result no longer depends on
what else ran beside it. Settings that change only the arithmetic of a step (learning rate,
EMA, warm-up, weighting, gamma) share their shape's timing. ``--train-steps N`` gives every
setting the same N steps instead (a comparison at equal iterations, as the paper's).

Scoring: `fdm_cli.evaluate` on the EMA weights, ``--num`` samples with ``--steps`` DDIM steps
(eta 0, seeds 0..N-1), FID / KID / precision / recall against the Fashion-MNIST test split, as
`bench_quality.py` scores. Screening defaults: 5 quiet minutes, FID@500 with 25 DDIM steps; the
confirmation is the table's protocol (20 minutes, FID@2000, DDIM-100).

Resumable: a setting whose ``result.json`` exists is skipped; a trained one is only scored.
Results: ``bench/results/sweep/<phase>/<setting>/`` and ``bench/results/sweep/timing.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_quality import cpu_run_flags, loss_csv_summary
from common import RESULTS_DIR, TRAIN_DATA, machine_info, markdown_table, write_json

from fdm_cli import evaluate, train, train_config

SWEEP_DIR = RESULTS_DIR / "sweep"
BASES = ("fdm-ds", "ddpm")
# One change from the preset's recipe per variant, the same list for both models (equal effort),
# in the order they are screened (most promising first, so a cut-short sweep keeps equal effort).
VARIANTS: dict[str, list[str]] = {
    "": [],
    "lr2e-3": ["optim.lr=0.002"],
    "warm50": ["optim.warmup_steps=50"],
    "b64": ["train.batch_size=64"],  # the presets train at 32 since the first screen
    "w48": ["model.base_channels=48"],
    "ema995": ["optim.ema_decay=0.995"],
    "rb2": ["model.num_res_blocks=2"],
    "noattn": ["model.attention_levels=[]"],
    "lr5e-4": ["optim.lr=0.0005"],
    "b128": ["train.batch_size=128"],
    "w24": ["model.base_channels=24"],
    "x0": ["process.parameterization=x0", "process.weighting=min_snr"],
    "constant": ["optim.decay=constant"],
    "eps": ["process.parameterization=eps"],
    "noemawarm": ["optim.ema_warmup=false"],
}
# f-DM only: the share of t each stage gets (equal thirds by default) and the SNR rescaling.
FDM_VARIANTS: dict[str, list[str]] = {
    "split-fine": ["process.stage_schedule={name: explicit, boundaries: [0.5, 0.75]}"],
    "split-coarse": ["process.stage_schedule={name: explicit, boundaries: [0.2, 0.5]}"],
    "gamma0.5": ["process.gamma=0.5"],
}
# Overrides that change what one step costs; the others reuse their shape's timing.
COMPUTE_KEYS = ("model.", "train.batch_size", "process.stage_schedule", "process.transforms")


def settings() -> dict[str, tuple[str, list[str]]]:
    """Every setting, interleaved model by model: name -> (preset, overrides)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for suffix, sets in VARIANTS.items():
        for base in BASES:
            table[f"{base}-{suffix}" if suffix else base] = (base, sets)
    for suffix, sets in FDM_VARIANTS.items():
        table[f"fdm-ds-{suffix}"] = ("fdm-ds", sets)
    return table


def parse_combo(name: str, table: dict[str, tuple[str, list[str]]]) -> tuple[str, list[str]]:
    """A setting by name, a preset's own recipe by the preset's name, or a combination
    "preset+variant+variant" of the variants above."""
    if name in table:
        return table[name]
    base, *parts = name.split("+")  # an unknown preset is refused by train_config
    every = {**VARIANTS, **FDM_VARIANTS}
    sets = []
    for part in parts:
        if part not in every:
            sys.exit(f"unknown variant {part!r} in {name!r}: one of {', '.join(every)}")
        sets += every[part]
    return base, sets


def config(preset: str, sets: list[str], args: argparse.Namespace, max_steps: int) -> Any:
    flags = {"train.minutes": None, "train.max_steps": max_steps}
    return train_config(preset, {**cpu_run_flags(args, 64), **flags}, sets=sets)


def shape_key(preset: str, sets: list[str], args: argparse.Namespace) -> str:
    """The preset and its compute-changing overrides, then a fingerprint of what they resolve
    to (UNet, batch, stages), so a timing is never reused after a preset's defaults change."""
    cfg = config(preset, sets, args, 1)
    resolved = {"model": cfg.model.model_dump(mode="json"), "batch": cfg.train.batch_size,
                "process": cfg.process.model_dump(mode="json", include={"stage_schedule",
                                                                        "transforms"})}  # fmt: skip
    digest = hashlib.sha1(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:8]
    return " ".join([preset, *sorted(s for s in sets if s.startswith(COMPUTE_KEYS)), digest])


def time_shapes(args: argparse.Namespace, table: dict[str, tuple[str, list[str]]]) -> None:
    """Quiet steps/min of every compute shape among the chosen settings (kept in timing.json)."""
    path = SWEEP_DIR / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.only or table:
        preset, sets = parse_combo(name, table)
        key = shape_key(preset, sets, args)
        if key in timing:
            continue
        run_dir = SWEEP_DIR / "timing" / key.replace(" ", "_").replace("/", "-")[:120]
        shutil.rmtree(run_dir, ignore_errors=True)
        steps = args.warm_steps + args.time_steps
        cfg = config(preset, sets, args, steps)
        cfg.sample.num, cfg.sample.steps = 4, 2  # the final grid is not timed: keep it short
        train(cfg, run_dir, progress=False)
        rows = (run_dir / "loss.csv").read_text().splitlines()[1:]
        elapsed = {int(r.split(",")[0]): float(r.split(",")[-1]) for r in rows}
        seconds = elapsed[steps] - elapsed[args.warm_steps]
        timing[key] = {"steps_per_min": 60 * args.time_steps / seconds, "timed_steps":
                       args.time_steps, "seconds": seconds, "machine": machine_info(args.threads),
                       "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
        write_json(path, timing)
        print(f"{key}: {timing[key]['steps_per_min']:.1f} steps/min", flush=True)


def run_setting(name: str, args: argparse.Namespace, table: dict, timing: dict) -> dict:
    """Train `name` for its quiet-minutes budget in steps (unless done), score it, record it."""
    preset, sets = parse_combo(name, table)
    key = shape_key(preset, sets, args)
    if args.train_steps:
        steps = args.train_steps
    elif key in timing:
        steps = round(args.minutes * timing[key]["steps_per_min"])
    else:
        sys.exit(f"{name}: no timing for {key!r}; run `bench_sweep.py time {name}` first")
    run_dir = args.out / name
    result_file, train_file = run_dir / "result.json", run_dir / "train.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if not train_file.is_file():
        print(f"{name}: {steps} steps into {run_dir}", flush=True)
        resume = any((run_dir / "checkpoints").glob("step-*.safetensors"))
        result = train(config(preset, sets, args, steps), run_dir, resume=resume)
        if result.interrupted:
            sys.exit(f"{name}: interrupted at step {result.step}; rerun to continue it")
        train_s, last_loss = loss_csv_summary(run_dir)
        write_json(train_file, {"setting": name, "preset": preset, "overrides": sets,
                                "steps": result.step,
                                "quiet_minutes": None if args.train_steps else args.minutes,
                                "shape": key, "train_s": train_s, "final_loss": last_loss,
                                "unet_params": sum(p.numel() for p in result.model.parameters())
                                })  # fmt: skip
    record = json.loads(train_file.read_text())
    print(f"{name}: FID@{args.num}, {args.steps} DDIM steps", flush=True)
    start = time.monotonic()
    metrics = evaluate(run_dir / "model", args.num, steps=args.steps, eta=0.0, seed=0,
                       batch_size=64, ref="fashion-mnist", ref_split="test", device="cpu",
                       threads=args.threads)  # fmt: skip
    record.update({"num": args.num, "sample_steps": args.steps, "eval_wall_s":
                   time.monotonic() - start, **{k: float(metrics[k]) for k in
                   ("fid", "kid", "kid_std", "precision", "recall") if k in metrics}})  # fmt: skip
    write_json(result_file, record)
    print(f"{name}: FID {record['fid']:.2f}, KID {record['kid'] * 1e3:.2f}e-3", flush=True)
    return record


def print_table(folder: Path) -> None:
    rows = []
    for file in sorted(folder.glob("*/result.json"), key=lambda f: f.stat().st_mtime):
        r = json.loads(file.read_text())
        rows.append([f"`{r['setting']}`", " ".join(r["overrides"]) or "(preset)",
                     f"{r['unet_params'] / 1e6:.2f} M", r["steps"], f"{r['fid']:.2f}",
                     f"{r['kid'] * 1e3:.2f}", f"{r.get('precision', 0):.3f}",
                     f"{r.get('recall', 0):.3f}"])  # fmt: skip
    headers = ["setting", "overrides", "UNet", "steps", "FID", "KID x 1e3", "prec.", "recall"]
    print(markdown_table(headers, rows))


def ranks(values: list[float]) -> list[float]:
    """1-based ranks of `values`, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_correlation(screen: Path, confirm: Path) -> None:
    """Spearman's rho between the screening FID and the confirmed FID of the settings scored in
    both folders: whether the cheap protocol orders settings as the full one does."""
    scores = {}
    for folder in (screen, confirm):
        for file in folder.glob("*/result.json"):
            r = json.loads(file.read_text())
            scores.setdefault(r["setting"], {})[folder] = r["fid"]
    both = sorted(name for name, s in scores.items() if len(s) == 2)
    if len(both) < 3:
        sys.exit(f"{len(both)} settings scored in both {screen} and {confirm}: need at least 3")
    a = ranks([scores[n][screen] for n in both])
    b = ranks([scores[n][confirm] for n in both])
    mean = (len(both) + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(a, b, strict=True))
    var = (sum((x - mean) ** 2 for x in a) * sum((y - mean) ** 2 for y in b)) ** 0.5
    rows = [[f"`{n}`", f"{scores[n][screen]:.2f}", f"{x:g}", f"{scores[n][confirm]:.2f}", f"{y:g}"]
            for n, x, y in zip(both, a, b, strict=True)]  # fmt: skip
    print(markdown_table(["setting", "screen FID", "rank", "confirmed FID", "rank"], rows))
    print(f"Spearman rho = {cov / var:.3f} over {len(both)} settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["time", "screen", "confirm", "table", "rank"])
    parser.add_argument("only", nargs="*", help="settings (default: all, in table order)")
    parser.add_argument("--minutes", type=float, default=5.0, help="quiet minutes per setting")
    parser.add_argument("--num", type=int, default=500, help="samples for FID/KID")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps when scoring")
    parser.add_argument("--train-steps", type=int, default=None, help="steps, not minutes")
    parser.add_argument("--warm-steps", type=int, default=20, help="untimed steps first")
    parser.add_argument("--time-steps", type=int, default=60, help="timed steps per shape")
    parser.add_argument("--data", type=Path, default=TRAIN_DATA, help="training data")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", type=Path, default=None, help="default sweep/<phase>-<min>")
    parser.add_argument("--screen-dir", type=Path, default=SWEEP_DIR / "screen-5min-500",
                        help="rank: the screening results compared with --out's")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = settings()
    args.out = args.out or SWEEP_DIR / f"{args.phase}-{args.minutes:g}min-{args.num}"
    if args.phase == "time":
        return time_shapes(args, table)
    if args.phase == "table":
        return print_table(args.out)
    if args.phase == "rank":
        return rank_correlation(args.screen_dir, args.out)
    timing_file = SWEEP_DIR / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    for name in args.only or table:
        run_setting(name, args, table, timing)


if __name__ == "__main__":
    main()
