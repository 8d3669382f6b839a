"""Sample quality at equal training wall-clock: FID and KID of the presets and the paper's two
ablations, each trained for the same minutes with the same UNet, batch and optimizer.

Run from the repository root:

    python bench/bench_quality.py                        # 6 models x 8 min on the Fashion-MNIST
                                                         # train split, FID@2000, 100 DDIM steps
    python bench/bench_quality.py --autoencoder runs/autoencoder   # + fdm-vae and ldm
    python bench/bench_quality.py --models fdm-ds ddpm --minutes 5 --num 500
    python bench/bench_quality.py --quick                # ddpm + fdm-ds, tiny UNet, 0.3 min each,
                                                         # embedded data, FID@64, 10 steps

Models (``--models``): ddpm, fdm-ds, fdm-blur-g, fdm-blur-u, fdm-vae and ldm (only with
``--autoencoder DIR``), fdm-ds-gamma0 (``--set process.gamma=0``) and fdm-ds-no-interp
(``--set process.interpolation=false``). Each is trained in this process through
`fdm_cli.train_config` + `fdm_cli.train`, exactly as ``fdm train --preset P --minutes M
--batch-size B --device cpu --threads T --data D`` would, into
``--out``/<model> (default ``bench/results/quality/<model>``), with two changes: periodic
checkpoints (and their sample grids, which would eat into the time budget, more for the slower
samplers) are off, and the final grid is sampled with ``--steps``. The presets' default UNet,
AdamW settings, EMA and batch 64 are shared by all models; ``--set key=value`` applies to all.

Data: ``--data`` (default ``../shared/data/fashion-mnist`` relative to the repository root: a
folder of IDX files whose ``train-`` split, 60,000 images, fdm picks; 28 -> 32 px zero-padded).
Evaluation: `fdm_cli.evaluate` on the model's EMA weights, ``--num`` samples with ``--steps``
DDIM steps (eta 0, seeds 0..N-1), FID and KID against the Fashion-MNIST test split (Inception-v3
pool3 features; two disjoint real sets of 2,000 score about 12.3, the floor at N = 2000).

Resumable at model granularity: a model whose ``result.json`` exists is not trained or evaluated
again (``--force`` starts it over); a trained model (``train.json``) is only evaluated; an
interrupted training run continues from its checkpoint. Each model's final grid and stage strip
are copied next to the JSON (``bench/results/bench_quality-<model>-grid.png`` / ``-strip.png``),
with a bar chart of FID per model (``bench_quality-fid.png``, drawn with Pillow).

Every model is trained before any is evaluated, so the training clocks, which the comparison
rests on, run back to back; run it on an otherwise idle machine (the training threads are pinned
to ``--threads``, default 2: a busy neighbour would slow whichever model is training, see
bench_training.py's threading table). The evaluation that follows is not timed against a budget
and may share the machine, but then its sampling s/img is not a speed measurement.

Cost at the defaults on 2 CPU cores: 6 x 8 min of training (49 min with the final grids), then
for each model 2,000 images at 100 DDIM steps (about 0.4 s per image for the full-resolution
presets, half that for the fdm-ds variants) and their Inception features: about 2 h 15 min in
all. ``--minutes 15`` (the issue's first plan) takes 4 to 5 hours.

Results: a Markdown table and ``bench/results/bench_quality.json`` (``--json PATH``;
``bench_quality-quick.json`` and ``bench/results/quality-quick/`` for --quick, which always
starts over).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS_DIR,
    TRAIN_DATA,
    check_train_data,
    format_machine,
    machine_info,
    markdown_table,
    results_path,
    write_json,
)
from plots import bar_chart

from fdm_cli import UserError, evaluate, train, train_config

AUTOENCODER = "process.autoencoder={}"
MODELS: dict[str, tuple[str, list[str], str]] = {
    "ddpm": ("ddpm", [], "DDPM baseline (K = 0)"),
    "fdm-ds": ("fdm-ds", [], "f-DM-DS"),
    "fdm-blur-g": ("fdm-blur-g", [], "f-DM-Blur-G"),
    "fdm-blur-u": ("fdm-blur-u", [], "f-DM-Blur-U"),
    "fdm-vae": ("fdm-vae", [AUTOENCODER], "f-DM-VAE"),
    "ldm": ("ldm", [AUTOENCODER], "LDM baseline"),
    "fdm-ds-gamma0": ("fdm-ds", ["process.gamma=0"], "f-DM-DS, no SNR rescaling (gamma 0)"),
    "fdm-ds-no-interp": (
        "fdm-ds",
        ["process.interpolation=false"],
        "f-DM-DS, no interpolation in a stage",
    ),
}
LATENT = ("fdm-vae", "ldm")
QUICK = {
    "models": ["ddpm", "fdm-ds"],
    "minutes": 0.3,
    "num": 64,
    "steps": 10,
    "grid": 16,
    "force": True,
    "data": "fashion-mnist",
    "set": ["model.base_channels=8", "model.num_heads=2", "sample.strip_rows=4"],
}
FID_FLOOR_2000 = 12.297  # fdm eval --real fashion-mnist --real fashion-mnist --num 2000
NO_CHECKPOINTS = 10**9  # train.checkpoint_every: only the final checkpoint


def default_models(autoencoder: str | None) -> list[str]:
    return [m for m in MODELS if autoencoder or m not in LATENT]


def loss_csv_summary(run_dir: Path) -> tuple[float | None, float | None]:
    """(training seconds, last loss) from the run's loss.csv (its last row)."""
    path = run_dir / "loss.csv"
    if not path.is_file():
        return None, None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None, None
    return float(rows[-1]["elapsed_s"]), float(rows[-1]["loss"])


def cpu_run_flags(args: argparse.Namespace, grid: int) -> dict[str, Any]:
    """The settings every quality benchmark run shares: on the CPU at ``--threads``, seeded,
    only the final checkpoint, ``--data``, a final grid of `grid` images at ``--steps``."""
    return {
        "train.device": "cpu",
        "train.threads": args.threads,
        "train.seed": args.seed,
        "train.checkpoint_every": NO_CHECKPOINTS,
        "data.source": str(args.data),
        "sample.steps": args.steps,
        "sample.num": grid,
    }


def train_model(name: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train (or continue) one model; returns what train.json keeps."""
    preset, sets, _ = MODELS[name]
    overrides = [s.format(args.autoencoder) for s in sets] + list(args.set)
    flags = {"train.minutes": args.minutes, "train.batch_size": args.batch}
    cfg = train_config(preset, {**cpu_run_flags(args, args.grid), **flags}, sets=overrides)
    resume = any((run_dir / "checkpoints").glob("step-*.safetensors"))  # continue it
    result = train(cfg, run_dir, resume=resume, progress=args.progress)
    if result.interrupted:
        sys.exit(f"{name}: training interrupted at step {result.step}; rerun to continue it")
    train_s, last_loss = loss_csv_summary(run_dir)
    params = sum(p.numel() for p in result.model.parameters()) if result.model else None
    return {
        "model": name,
        "preset": preset,
        "overrides": overrides,
        "config": cfg.to_dict(),
        "steps": result.step,
        "train_s": train_s,
        "run_wall_s": result.wall_s,
        "final_loss": last_loss if last_loss is not None else result.last_loss,
        "unet_params": params,
        "resumed": resume,
    }


def evaluate_model(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return evaluate(
        model_dir,
        args.num,
        steps=args.steps,
        eta=0.0,
        seed=0,
        batch_size=args.eval_batch,
        ref="fashion-mnist",
        ref_split="test",
        device="cpu",
        progress=args.progress,
        threads=args.threads,
    )


def copy_images(run_dir: Path, name: str, json_path: Path) -> dict[str, str]:
    """Copy the final grid and stage strip next to the JSON; returns their new paths."""
    out = {}
    for kind, file in (("grid", "final.png"), ("strip", "final-strip.png")):
        source = run_dir / "samples" / file
        if source.is_file():
            target = json_path.parent / f"{json_path.stem}-{name}-{kind}.png"
            shutil.copyfile(source, target)
            out[kind] = str(target)
    return out


def fid_plot(results: list[dict[str, Any]], path: Path, num: int) -> str:
    """A bar chart of FID per model (fdm-ds highlighted, the floor at N = 2000 dashed)."""
    rows = [r for r in results if r.get("fid") is not None]
    if not rows:
        return "no FID plot: no model was evaluated"
    bar_chart(
        [r["model"] for r in rows],
        [r["fid"] for r in rows],
        path,
        f"FID@{num} after equal training wall-clock (Fashion-MNIST 32x32, DDIM)",
        "FID (lower is better)",
        highlight={"fdm-ds"},
        reference=(FID_FLOOR_2000, "two real sets of 2000: 12.3") if num == 2000 else None,
    )
    return f"FID plot: {path}"


def train_phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or continue) one model unless an earlier run did; returns train.json's record."""
    run_dir = args.out / name
    result_file, train_file = run_dir / "result.json", run_dir / "train.json"
    if args.force and run_dir.exists():
        shutil.rmtree(run_dir)
    if result_file.is_file():
        print(f"{name}: done before ({result_file}); skipped (--force redoes it)", flush=True)
        return json.loads(result_file.read_text())
    if train_file.is_file():
        print(f"{name}: trained before ({train_file})", flush=True)
        return json.loads(train_file.read_text())
    print(f"{name}: training for {args.minutes:g} min into {run_dir}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = train_model(name, args, run_dir)
    write_json(train_file, trained)
    return trained


def eval_phase(trained: dict[str, Any], args: argparse.Namespace, json_path: Path) -> dict:
    """Evaluate one trained model (unless result.json holds it already) and record it."""
    name = trained["model"]
    run_dir = args.out / name
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    images = copy_images(run_dir, name, json_path)
    record = {**trained, "images": images, "fid": None, "kid": None, "kid_std": None}
    print(f"{name}: FID@{args.num} with {args.steps} DDIM steps", flush=True)
    start = time.monotonic()
    try:
        metrics = evaluate_model(run_dir / "model", args)
    except ImportError as exc:
        record["eval_error"] = f"fdm_cli.evaluate is not available: {exc}"
        print(f"{name}: NOT EVALUATED: {record['eval_error']}", flush=True)
        return record
    record.update(
        {
            "fid": float(metrics["fid"]),
            "kid": float(metrics["kid"]),
            "kid_std": float(metrics["kid_std"]),
            "sample_s_per_image": float(metrics["sample_s_per_image"]),
            "eval_wall_s": time.monotonic() - start,
            "eval": metrics,
        }
    )
    write_json(result_file, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    parser.add_argument(
        "--autoencoder", default=None, help="an autoencoder folder: adds fdm-vae, ldm"
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    parser.add_argument("--data", type=Path, default=TRAIN_DATA, help="training data")
    parser.add_argument("--num", type=int, default=2000, help="samples for FID/KID")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps (eval and final grid)")
    parser.add_argument("--batch", type=int, default=64, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=64, help="images per sampler call")
    parser.add_argument("--grid", type=int, default=64, help="images in each final grid")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (pinned)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every model (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="run folders (one per model)")
    parser.add_argument("--force", action="store_true", help="retrain models that are done")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--quick", action="store_true", help="a minutes-long check (see above)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    if "--quick" in sys.argv[1:]:  # new defaults; flags given still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    check_train_data(parser, args.data)
    models = args.models or default_models(args.autoencoder)
    latent = [m for m in models if m in LATENT]
    if latent and not args.autoencoder:
        parser.error(f"{', '.join(latent)} need --autoencoder DIR")
    args.out = args.out or RESULTS_DIR / ("quality-quick" if args.quick else "quality")
    json_path = results_path(args, "bench_quality")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    info = machine_info(args.threads)
    # Every model is trained before any is evaluated: the training clocks, which the
    # comparison rests on, then all run back to back on the same (quiet) machine.
    trained = []
    for name in models:
        try:
            trained.append(train_phase(name, args))
        except UserError as exc:
            sys.exit(f"{name}: {exc}")
    results = []
    for record in trained:
        results.append(eval_phase(record, args, json_path))
        payload = {"machine": info, "args": vars(args), "results": results}
        write_json(json_path, payload)  # after every model, so a partial run keeps its results
    note = fid_plot(results, json_path.with_name(f"{json_path.stem}-fid.png"), args.num)

    print()
    print(format_machine(info))
    print(
        f"data {args.data}, {args.minutes:g} min training per model, batch {args.batch}, "
        f"FID/KID@{args.num} against the Fashion-MNIST test split, {args.steps} DDIM steps"
    )
    print()
    rows = []
    for r in results:
        fid = "-" if r["fid"] is None else f"{r['fid']:.2f}"
        kid = "-" if r["kid"] is None else f"{r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f}"
        speed = r.get("sample_s_per_image")
        rows.append(
            [
                r["model"],
                MODELS[r["model"]][2],
                "-" if r["unet_params"] is None else f"{r['unet_params'] / 1e6:.2f} M",
                r["steps"],
                "-" if r["train_s"] is None else f"{r['train_s']:.0f}",
                f"{r['run_wall_s']:.0f}",
                fid,
                kid,
                "-" if speed is None else f"{speed:.4f}",
            ]
        )
    headers = ["model", "what", "UNet", "training steps", "training s", "run wall s",
               f"FID@{args.num}", "KID x 1e3 ± std", "sampling s/img"]  # fmt: skip
    print(markdown_table(headers, rows))
    print(f"\n{note}\nwrote {json_path}")
    missing = [r["model"] for r in results if r["fid"] is None]
    if missing:
        sys.exit(f"not evaluated: {', '.join(missing)} (see eval_error in {json_path})")


if __name__ == "__main__":
    main()
