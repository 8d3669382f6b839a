"""Setting up a training run: data, process, model, EMA, optimizer, and the state of a resumed run.

`setup` builds a `Run`, which `fdm_cli.train` then steps; the run also knows how to write its
checkpoint and its sample images (EMA weights, split over DDP ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fdm_core import (
    FDMProcess,
    diffusion_loss,
    packs_stages,
    stage_loss,
)
from fdm_models import EMA, MultiStageUNet

from . import checkpointing as ckpt
from . import distributed as dist_
from .config import OptimConfig, TrainConfig, bundle_run_assets
from .errors import UserError
from .images import atomic_write_bytes, make_grid, save_png, stage_strip
from .losslog import LossLog
from .sample import LoadedModel, Samples, generate, strip_columns, strip_tile
from .seeding import MODEL_INIT, TRAIN_STEP, derive_seed
from .threads import ThreadTuner, configure_threads
from .training_data import TrainingData, open_training_data

Say = Callable[..., None]  # say(message, markup=False): print on rank 0 only
COMPILE_BACKEND_ENV = "FDM_COMPILE_BACKEND"  # torch.compile backend of train.compile
COMPILE_MODE_ENV = "FDM_COMPILE_MODE"  # torch.compile mode of train.compile
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # one AdamW kernel for all parameters (4x faster on CPU)


class Network:
    """F as the loss calls it, under bf16 autocast when the run asks for it: the UNet per stage
    and, when it declares that it can (``packs_stages``), packed, every stage in one call
    (docs/design.md §6.6)."""

    def __init__(self, unet: nn.Module, bf16: bool) -> None:
        self.unet = unet
        self.bf16 = bf16
        self.packs_stages = packs_stages(unet)

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        with self._autocast(z.device):
            return self.unet(z, t, stage)

    def forward_packed(
        self, zs: list[torch.Tensor | None], t: torch.Tensor
    ) -> list[torch.Tensor | None]:
        with self._autocast(t.device):
            return self.unet.forward_packed(zs, t)


class LossModule(nn.Module):
    """The training loss of a batch: draws the step's times and noise, then runs `stage_loss`
    (the process math, the network and (E23)), so DDP sees one forward per step.

    With `bf16`, only the network call runs under bf16 autocast; the process math around it
    (stage signals, interpolation, noise, targets) and the loss stay fp32 (docs/design.md §6.5).
    With `compile`, `stage_loss` runs as one ``torch.compile`` graph with static shapes (every
    step has the same rows per stage): process math, packed UNet and loss, forward and
    backward. The random draws stay outside it, so compiled and eager runs see the same noise.
    """

    def __init__(self, process: FDMProcess, unet: nn.Module, compile: bool, bf16: bool) -> None:
        super().__init__()
        self.process = process
        self.unet = unet
        self.network = Network(unet, bf16)
        self.static_loss = torch.compile(stage_loss, **compile_options()) if compile else None

    def forward(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The loss, the per-stage losses (device tensors) and the rows per stage."""
        out = diffusion_loss(
            self.process, self.network, x, generator=generator, static_loss=self.static_loss
        )
        return out.loss, out.per_stage, out.counts


@dataclass
class Run:
    """A run being trained: its pieces (built by `setup`) and where it stands."""

    cfg: TrainConfig
    ctx: dist_.DistContext
    run_dir: Path
    dataset: TrainingData
    process: FDMProcess
    unet: MultiStageUNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    module: nn.Module  # LossModule, in DistributedDataParallel under torchrun
    log: LossLog
    threads: ThreadTuner
    step: int = 0
    position: int = 0  # images of the data stream consumed, all ranks together
    elapsed: float = 0.0  # training seconds, summed over resumes
    resumed: bool = False

    def batch(self) -> tuple[torch.Tensor, torch.Generator]:
        """This rank's slice of the batch at the stream position, and the step's generator."""
        ctx, per_rank = self.ctx, self.cfg.train.batch_size // self.ctx.world_size
        seed = derive_seed(self.cfg.train.seed, TRAIN_STEP, self.step, ctx.rank)
        torch.manual_seed(seed)
        generator = torch.Generator(ctx.device).manual_seed(seed)
        x = self.dataset.rank_batch(self.position, per_rank, ctx.rank, ctx.world_size)
        return x.to(ctx.device), generator

    def checkpoint(self) -> None:
        """Rank 0 saves the whole training state (and flushes the loss log and its plot)."""
        if not self.ctx.is_main:
            return
        state = {
            "model": self.unet.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": ckpt.optimizer_to_tree(self.optimizer.state_dict()),
            "rng": ckpt.rng_state(),
            "progress": {
                "step": self.step,
                "position": self.position,
                "elapsed_s": self.elapsed,
                "seed": self.cfg.train.seed,
                "world_size": self.ctx.world_size,
            },
        }
        self.log.flush()
        ckpt.save_checkpoint(
            self.run_dir, self.step, state, self.cfg.to_dict(), self.cfg.train.keep_checkpoints
        )
        self.log.save_plot(self.run_dir / "loss.png")

    def write_images(self, grid: str, strip: str) -> None:
        """A sample grid and a stage strip from the EMA weights (all ranks sample)."""
        model = LoadedModel(self.process, self.ema.averaged_model(self.unet), "ema")
        folder = self.run_dir / ckpt.SAMPLES
        write_samples(self.ctx, self.cfg, model, folder / grid, folder / strip)


def setup(cfg: TrainConfig, run_dir: Path, resume: bool, ctx: dist_.DistContext, say: Say) -> Run:
    """Data, process, model, EMA and optimizer; the checkpoint's state when resuming."""
    opts = cfg.train
    if opts.batch_size % ctx.world_size:
        raise UserError(
            f"--batch-size {opts.batch_size} must be divisible by the "
            f"{ctx.world_size} ranks (it is the global batch)"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)) if ctx.enabled else 1
    threads = configure_threads(opts.threads, local, tune=ctx.device.type == "cpu")
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(
            f"{run_dir} already holds a run ({latest.name}); pass --resume to "
            "continue it, or choose another --out"
        )
    if ctx.is_main and (stale := ckpt.sweep_stale_temporaries(run_dir)):
        say(f"removed {len(stale)} temporary file(s) an interrupted write left in {run_dir}")
    cfg = bundle_run_assets(cfg, run_dir)  # an autoencoder is copied into the run
    data = cfg.data
    dataset = open_training_data(
        data, cfg.process.resolution, cfg.process.channels, opts.seed, ctx.rank, ctx.world_size, say
    )
    process = FDMProcess(cfg.process)
    first = dataset.rank_batch(0, opts.batch_size // ctx.world_size, ctx.rank, ctx.world_size)
    try:  # a plugin's transform that is wrong at this batch size is named before any step
        process.check_stage_signals(first.to(ctx.device))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    torch.manual_seed(derive_seed(opts.seed, MODEL_INIT))
    unet = MultiStageUNet(cfg.model).to(ctx.device)
    ema = EMA(unet, cfg.optim.ema_decay, warmup=cfg.optim.ema_warmup)
    optimizer = make_optimizer(unet, cfg.optim, ctx.device)
    log = LossLog(run_dir / "loss.csv", process.num_stages)
    step, position, elapsed = 0, 0, 0.0
    if resume and latest is not None:
        step, position, elapsed = _load_state(latest, cfg, unet, ema, optimizer)
        say(f"resuming from {latest} (step {step})")
        if ctx.is_main:
            log.resume(step)
    elif ctx.is_main:
        if resume:
            say(f"no checkpoint in {run_dir}: starting a new run")
        log.start()
    if ctx.is_main:
        atomic_write_bytes(run_dir / ckpt.CONFIG_FILE, cfg.to_yaml().encode())
    module: nn.Module = LossModule(process, unet, opts.compile, bf16=opts.precision == "bf16")
    if ctx.enabled:
        find_unused = opts.find_unused_parameters
        if find_unused == "auto":
            find_unused = opts.batch_size // ctx.world_size < process.num_stages
        module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=bool(find_unused),
        )
    return Run(
        cfg,
        ctx,
        run_dir,
        dataset,
        process,
        unet,
        ema,
        optimizer,
        module,
        log,
        threads,
        step,
        position,
        elapsed,
        resumed=latest is not None and resume,
    )


def make_optimizer(unet: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the UNet's parameters, fused (one kernel for every parameter, no host read of
    its step counters) on the devices that have the fused kernel."""
    return torch.optim.AdamW(
        unet.parameters(),
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        fused=device.type in FUSED_ADAMW_DEVICES or None,
    )


def compile_options() -> dict[str, object]:
    """``torch.compile`` settings of ``train.compile``: the backend $FDM_COMPILE_BACKEND
    (default inductor; the tests use aot_eager), the mode $FDM_COMPILE_MODE (default torch's;
    ``reduce-overhead`` adds CUDA graphs on a GPU), static shapes."""
    options: dict[str, object] = {
        "backend": os.environ.get(COMPILE_BACKEND_ENV, "inductor"),
        "dynamic": False,
    }
    if mode := os.environ.get(COMPILE_MODE_ENV):
        options["mode"] = mode
    return options


def _load_state(
    latest: Path, cfg: TrainConfig, unet: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer
) -> tuple[int, int, float]:
    """Load a checkpoint into the run (refusing a different process or model config); returns
    its step, stream position and elapsed training seconds."""
    state, saved = ckpt.load_checkpoint(latest, ckpt.RESUME_PARTS)
    ckpt.refuse_changed_config(latest, cfg.to_dict(), saved, ("process", "model"))
    with ckpt.restoring(latest):
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(ckpt.optimizer_from_tree(state["optimizer"]))
        ckpt.set_rng_state(state["rng"])
    progress = state["progress"]
    return int(progress["step"]), int(progress["position"]), float(progress["elapsed_s"])


def write_samples(
    ctx: dist_.DistContext, cfg: TrainConfig, model: LoadedModel, grid: Path, strip: Path
) -> None:
    """Sample the grid (split over ranks, gathered on rank 0) and write grid + stage strip."""
    s = cfg.sample
    start, stop = dist_.shard(ctx, s.num)
    local = generate(
        model, range(start, stop), s.seed, s.sampler(), batch_size=s.batch_size, device=ctx.device
    )
    x = dist_.gather_shards(ctx, local.x, s.num)
    preds = [dist_.gather_shards(ctx, p, s.num) for p in local.stage_predictions]
    if not ctx.is_main:
        return
    save_png(make_grid(x), grid)
    tile = strip_tile(cfg.process.resolution)
    columns, labels = strip_columns(model.process, Samples(x, preds), s.strip_rows, tile)
    save_png(stage_strip(columns, labels, tile=tile), strip)
