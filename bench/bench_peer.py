"""The peer baseline: what a user would pick instead of f-DM. A diffusers `UNet2DModel` trained
with `DDPMScheduler` by a loop that follows diffusers' unconditional-training example, sampled
with `DDIMScheduler`, scored with the same FID/KID as bench_quality.py.

Run from the repository root:

    python bench/bench_peer.py                         # both recipes, 15 min each on the
                                                       # Fashion-MNIST train split, FID@2000,
                                                       # 100 DDIM steps
    python bench/bench_peer.py --recipes tuned --minutes 5 --num 500
    python bench/bench_peer.py --block-out-channels 32 64 64 64 --layers-per-block 1
    python bench/bench_peer.py --quick                 # tiny model, 6 s training per recipe,
                                                       # embedded data, FID@64, 10 steps

The training loop follows ``examples/unconditional_image_generation/train_unconditional.py``
(diffusers): AdamW (betas 0.95/0.999, weight decay 1e-6, eps 1e-8), linear warm-up then cosine
decay to 0, gradient clipping at 1.0, random horizontal flips, ``EMAModel`` (max decay 0.9999,
warm-up with inv_gamma 1, power 3/4), 1,000 training timesteps, MSE against the prediction
target, the EMA weights for sampling. Differences, so both benchmarks see the same budget and
data: training stops after ``--minutes`` of wall-clock (the cosine decay runs over that time
after the warm-up, instead of over a number of epochs), and the images are the ones `fdm train`
reads (`fdm_cli.open_data`: 28 -> 32 zero-padded, [-1, 1], seeded order and flips) at batch 64.

Recipes (``--recipes``):

- ``example``: the example's defaults: epsilon prediction, linear betas, lr 1e-4 (its
  ``--learning_rate`` default; ``--example-lr`` changes it), 500 warm-up steps.
- ``tuned``: v-prediction, ``squaredcos_cap_v2`` betas, lr 4e-4, 200 warm-up steps.

Model (default about 6.3 M parameters; printed): ``UNet2DModel(sample_size=32, in/out channels
1, layers_per_block=2, block_out_channels=(32, 64, 128, 128))``, plain ``DownBlock2D`` /
``UpBlock2D`` levels with attention (``AttnDownBlock2D`` / ``AttnUpBlock2D``) at the
second-lowest level (8 px), the place the example's 6-level model has it. The example's own
model (128..512 channels, 6 levels, for 64 px) is far too large for a CPU budget.

Sampling: ``DDIMScheduler.from_config`` of the training scheduler, ``--steps`` steps, eta 0,
image i from noise seeded ``seed + i``. FID/KID: `fdm_cli.evaluate_images`, the scoring
`fdm_cli.evaluate` uses (Inception-v3 pool3 features, both sets centre-cropped 28 x 28 when the
data was zero-padded, against the first ``--num`` images of the Fashion-MNIST test split).

Cost at the defaults on 2 CPU cores, 1 thread (measured on a busy machine): a training step of
the 6.3 M model at batch 64 takes about 3 s (some 300 steps in 15 minutes, so the example's
500-step warm-up never completes), and sampling about 1.7 s per image at 100 steps: roughly an
hour per recipe for FID@2000 after its 15 minutes of training. A smaller model
(``--block-out-channels 32 64 64 64 --layers-per-block 1``: 1.5 M parameters, near the f-DM
UNet's 1.2 M) or ``--threads 2`` on an idle machine shortens both.

Resumable per recipe like bench_quality.py (``--out``/<recipe>/result.json; ``--force``);
each recipe's final grid is copied next to the JSON. Results: a Markdown table and
``bench/results/bench_peer.json`` (``--json PATH``; ``bench_peer-quick.json`` and
``bench/results/peer-quick/`` for --quick, which always starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    RESULTS_DIR,
    TRAIN_DATA,
    check_train_data,
    format_machine,
    machine_info,
    markdown_table,
    param_count,
    results_path,
    write_json,
)

from fdm_cli import evaluate_images, load_fid_network, make_grid, open_data, train_config

REF, REF_SPLIT, RESOLUTION = "fashion-mnist", "test", 32
QUICK = {
    "minutes": 0.1,
    "num": 64,
    "steps": 10,
    "grid": 16,
    "force": True,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_groups": 8,
    "data": "fashion-mnist",
}


@dataclass
class Recipe:
    prediction_type: str  # DDPMScheduler's: "epsilon" or "v_prediction"
    beta_schedule: str
    lr: float
    warmup_steps: int
    adam_betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    train_timesteps: int = 1000


RECIPES = {
    "example": Recipe("epsilon", "linear", 1e-4, 500),
    "tuned": Recipe("v_prediction", "squaredcos_cap_v2", 4e-4, 200),
}


def build_unet(args: argparse.Namespace) -> torch.nn.Module:
    from diffusers import UNet2DModel

    channels = tuple(args.block_out_channels)
    n = len(channels)
    attention = n - 2 if n >= 2 else 0  # the second-lowest level, as in the example
    down = ["AttnDownBlock2D" if i == attention else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if n - 1 - i == attention else "UpBlock2D" for i in range(n)]
    return UNet2DModel(
        sample_size=RESOLUTION,
        in_channels=1,
        out_channels=1,
        layers_per_block=args.layers_per_block,
        block_out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=args.norm_groups,
    )


def train_scheduler(recipe: Recipe) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=recipe.train_timesteps,
        beta_schedule=recipe.beta_schedule,
        prediction_type=recipe.prediction_type,
    )


def learning_rate(recipe: Recipe, step: int, elapsed: float, warm_s: float, budget: float) -> float:
    """Linear warm-up over steps, then cosine to 0 over the rest of the time budget."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = min(1.0, max(0.0, (elapsed - warm_s) / max(1e-9, budget - warm_s)))
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(name: str, recipe: Recipe, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train one recipe for the time budget; save the EMA UNet; returns what train.json keeps."""
    from diffusers.training_utils import EMAModel

    t_wall = time.monotonic()
    # fdm train's seeded order, with random flips (RandomHorizontalFlip), in memory
    dataset = open_data(
        args.data, RESOLUTION, channels=1, seed=args.seed, hflip=True, in_memory=True
    )
    torch.manual_seed(args.seed)
    model = build_unet(args)
    scheduler = train_scheduler(recipe)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.lr,
        betas=recipe.adam_betas,
        weight_decay=recipe.weight_decay,
        eps=recipe.adam_eps,
    )
    ema = EMAModel(
        model.parameters(),
        decay=recipe.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=recipe.ema_inv_gamma,
        power=recipe.ema_power,
    )
    budget = args.minutes * 60
    step, elapsed, warm_s, loss_value = 0, 0.0, 0.0, math.nan
    print(
        f"{name}: {param_count(model) / 1e6:.2f} M parameters, {len(dataset)} images, "
        f"batch {args.batch}, {args.minutes:g} min",
        flush=True,
    )
    start = time.monotonic()
    while elapsed < budget:
        lr = learning_rate(recipe, step, elapsed, warm_s, budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean = dataset.batch(step * args.batch, args.batch)
        noise = torch.randn_like(clean)
        t = torch.randint(0, recipe.train_timesteps, (len(clean),)).long()
        noisy = scheduler.add_noise(clean, noise, t)
        model.train()
        pred = model(noisy, t).sample
        if recipe.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(clean, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        ema.step(model.parameters())
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.monotonic() - start
        if step == recipe.warmup_steps:
            warm_s = elapsed
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            sys.exit(f"{name}: the loss is {loss_value} at step {step}")
        if args.progress and step % 50 == 0:
            print(f"  step {step}: loss {loss_value:.4f}, lr {lr:.2e}, {elapsed:.0f} s", flush=True)
    ema.copy_to(model.parameters())
    model.eval()
    model.save_pretrained(run_dir / "unet")
    scheduler.save_pretrained(run_dir / "scheduler")
    print(f"{name}: {step} steps in {elapsed:.0f} s, last loss {loss_value:.4f}", flush=True)
    return {
        "recipe": name,
        "settings": asdict(recipe),
        "block_out_channels": list(args.block_out_channels),
        "layers_per_block": args.layers_per_block,
        "unet_params": param_count(model),
        "steps": step,
        "train_s": elapsed,
        "run_wall_s": time.monotonic() - t_wall,
        "final_loss": loss_value,
        "data": str(args.data),
    }


@torch.inference_mode()
def generate(model: torch.nn.Module, train_config: Any, args: argparse.Namespace) -> torch.Tensor:
    """`--num` images with DDIM (eta 0), image i from noise seeded seed + i; in [-1, 1]."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(train_config)
    scheduler.set_timesteps(args.steps)
    out = []
    for first in range(0, args.num, args.eval_batch):
        last = min(args.num, first + args.eval_batch)
        x = torch.stack(
            [
                torch.randn(1, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(i))
                for i in range(first, last)
            ]
        )
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def evaluate(
    run_dir: Path, args: argparse.Namespace, network: Any
) -> tuple[dict[str, Any], torch.Tensor]:
    """Sample from the saved EMA UNet and score against the reference as `fdm_cli.evaluate`
    does (`fdm_cli.evaluate_images`); returns the metrics and the images."""
    from diffusers import UNet2DModel

    model = UNet2DModel.from_pretrained(run_dir / "unet", low_cpu_mem_usage=False).eval()
    config = json.loads((run_dir / "scheduler" / "scheduler_config.json").read_text())
    start = time.perf_counter()
    x = generate(model, config, args)
    sample_s = time.perf_counter() - start
    scores = evaluate_images(
        x,
        ref=REF,
        ref_split=REF_SPLIT,
        batch_size=args.eval_batch,
        device="cpu",
        progress=args.progress,
        network=network,
    )
    return {
        "fid": scores["fid"],
        "kid": scores["kid"],
        "kid_std": scores["kid_std"],
        "num": args.num,
        "sample_steps": args.steps,
        "eta": 0.0,
        "seed": 0,
        "ref": REF,
        "ref_split": REF_SPLIT,
        "crop": scores["crop"],
        "sample_s": sample_s,
        "sample_s_per_image": sample_s / args.num,
        "network_sha256": scores["network_sha256"],
    }, x


def run_recipe(
    name: str, args: argparse.Namespace, json_path: Path, network: Any
) -> dict[str, Any]:
    run_dir = args.out / name
    result_file, train_file = run_dir / "result.json", run_dir / "train.json"
    if args.force and run_dir.exists():
        shutil.rmtree(run_dir)
    if result_file.is_file():
        print(f"{name}: done before ({result_file}); skipped (--force redoes it)", flush=True)
        return json.loads(result_file.read_text())
    recipe = RECIPES[name]
    if name == "example":
        recipe = Recipe(**{**asdict(recipe), "lr": args.example_lr})
    if train_file.is_file():
        print(f"{name}: trained before; evaluating only", flush=True)
        trained = json.loads(train_file.read_text())
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        trained = train(name, recipe, args, run_dir)
        write_json(train_file, trained)
    print(f"{name}: FID@{args.num} with {args.steps} DDIM steps", flush=True)
    metrics, images = evaluate(run_dir, args, network)
    grid = json_path.parent / f"{json_path.stem}-{name}-grid.png"
    make_grid(images[: args.grid]).save(grid)
    keep = ("fid", "kid", "kid_std", "sample_s_per_image")
    record = {
        **trained,
        **{k: metrics[k] for k in keep},
        "eval": metrics,
        "images": {"grid": str(grid)},
    }
    write_json(result_file, record)
    return record


def fdm_default_params() -> int:
    """Parameters of the f-DM presets' default UNet (fdm-ds), for comparison."""
    from fdm_models import MultiStageUNet

    return param_count(MultiStageUNet(train_config("fdm-ds").model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per recipe")
    parser.add_argument("--data", type=Path, default=TRAIN_DATA, help="training data")
    parser.add_argument("--num", type=int, default=2000, help="samples for FID/KID")
    parser.add_argument("--steps", type=int, default=100, help="DDIM sampling steps")
    parser.add_argument("--batch", type=int, default=64, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=64, help="images per sampler call")
    parser.add_argument("--grid", type=int, default=64, help="images in each saved grid")
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=[32, 64, 128, 128])
    parser.add_argument("--layers-per-block", type=int, default=2)
    parser.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups")
    parser.add_argument("--example-lr", type=float, default=1e-4, help="the example recipe's lr")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="run folders (one per recipe)")
    parser.add_argument("--force", action="store_true", help="retrain recipes that are done")
    parser.add_argument("--progress", action="store_true", help="progress output")
    parser.add_argument("--quick", action="store_true", help="a minutes-long check (see above)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    if "--quick" in sys.argv[1:]:  # new defaults; flags given still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    check_train_data(parser, args.data)
    args.out = args.out or RESULTS_DIR / ("peer-quick" if args.quick else "peer")
    json_path = results_path(args, "bench_peer")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    info = machine_info(args.threads)
    network = load_fid_network()
    results = []
    for name in args.recipes:
        results.append(run_recipe(name, args, json_path, network))
        write_json(json_path, {"machine": info, "args": vars(args), "results": results})
    fdm_params = fdm_default_params()
    payload = {"machine": info, "args": vars(args), "fdm_unet_params": fdm_params}
    write_json(json_path, {**payload, "results": results})

    print()
    print(format_machine(info))
    print(
        f"diffusers UNet2DModel, block_out_channels {tuple(args.block_out_channels)}, "
        f"layers_per_block {args.layers_per_block} (the f-DM presets' UNet: "
        f"{fdm_params / 1e6:.2f} M parameters); data {args.data}, {args.minutes:g} min training "
        f"per recipe, batch {args.batch}, FID/KID@{args.num} against the Fashion-MNIST test "
        f"split, {args.steps} DDIM steps"
    )
    print()
    rows = [
        [
            r["recipe"],
            f"{r['settings']['prediction_type']}, {r['settings']['beta_schedule']}, "
            f"lr {r['settings']['lr']:g}, warm-up {r['settings']['warmup_steps']}",
            f"{r['unet_params'] / 1e6:.2f} M",
            r["steps"],
            f"{r['train_s']:.0f}",
            f"{r['fid']:.2f}",
            f"{r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f}",
            f"{r['sample_s_per_image']:.4f}",
        ]
        for r in results
    ]
    headers = ["recipe", "settings", "UNet", "training steps", "training s", f"FID@{args.num}",
               "KID x 1e3 ± std", "sampling s/img"]  # fmt: skip
    print(markdown_table(headers, rows))
    print(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
