"""Setting up an f-DM training run: data, process, model, EMA, optimizer, and the state of a
resumed run.

`setup` builds a `Run` (a `fdm_cli.training.trainer.TrainingRun`, which writes and restores its
checkpoints), which `fdm_cli.training.loop` then steps; the run also writes its sample images
(EMA weights, split over DDP ranks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import LossLog
from fdm_cli.artifacts.pictures import make_grid, save_png, stage_strip
from fdm_cli.config.train import OptimConfig, TrainConfig, bundle_run_assets
from fdm_cli.errors import UserError
from fdm_cli.generation.sampling import LoadedModel, Samples, generate, strip_columns, strip_tile
from fdm_cli.runtime import distributed as dist_
from fdm_cli.runtime.threads import ThreadTuner, configure_threads
from fdm_cli.seeding import MODEL_INIT, TRAIN_STEP, derive_seed
from fdm_cli.training.data import TrainingData, open_training_data
from fdm_cli.training.trainer import Say, Stateful, TrainingRun, open_run_dir
from fdm_core import (
    FDMProcess,
    diffusion_loss,
    packs_stages,
    stage_loss,
)
from fdm_models import EMA, MultiStageUNet

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
class Run(TrainingRun):
    """An f-DM run being trained: its pieces (built by `setup`) and where it stands."""

    COMMAND = "train"
    RESUME_COMPARED = ("process", "model")

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

    def weights(self) -> dict[str, Stateful]:
        """The UNet's raw weights and their EMA."""
        return {"model": self.unet, "ema": self.ema}

    def progress(self) -> dict[str, Any]:
        """The shared progress entry and the world size it was trained at."""
        return super().progress() | {"world_size": self.ctx.world_size}

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
            f"`batch_size` {opts.batch_size} must be divisible by the "
            f"{ctx.world_size} ranks (it is the global batch)"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)) if ctx.enabled else 1
    threads = configure_threads(opts.threads, local, tune=ctx.device.type == "cpu")
    latest = open_run_dir(run_dir, resume, ctx, say)
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
    module = LossModule(process, unet, opts.compile, bf16=opts.precision == "bf16")
    log = LossLog(run_dir / "loss.csv", process.num_stages)
    run = Run(cfg, ctx, run_dir, dataset, process, unet, ema, optimizer, module, log, threads)
    run.begin(latest, resume, say)
    if ctx.enabled:  # wrapped once the weights are loaded
        find_unused = opts.find_unused_parameters
        if find_unused == "auto":
            find_unused = opts.batch_size // ctx.world_size < process.num_stages
        run.module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=bool(find_unused),
        )
    return run


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
