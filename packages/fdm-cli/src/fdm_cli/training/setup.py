"""Setting up an f-DM training run: data, process, model, EMA, optimizer, and the state of a
resumed run.

`setup` builds a `Run` (a `fdm_cli.training.trainer.TrainingRun`, which writes and restores its
checkpoints), which `fdm_cli.training.loop` then steps; the run also writes its sample images
(EMA weights, split over DDP ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
from fdm_cli.training.update import optimizer_step
from fdm_core import (
    FDMProcess,
    LossBatch,
    LossOutput,
    batch_loss,
    compile_options,
    draw_loss_batch,
    packs_stages,
    stage_loss,
    stratified_counts,
)
from fdm_models import EMA, MultiStageUNet

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # one AdamW kernel for all parameters (4x faster on CPU)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision -> F's


class Network:
    """F as the loss calls it, under autocast when the run asks for bf16 or fp16: the UNet per
    stage and, when it declares that it can (``packs_stages``), packed, every stage in one call
    (docs/design.md §6.6)."""

    def __init__(self, unet: nn.Module, precision: str) -> None:
        self.unet = unet
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.packs_stages = packs_stages(unet)

    def _autocast(self, device: torch.device) -> torch.autocast:
        dtype = self.dtype or torch.bfloat16
        return torch.autocast(device.type, dtype=dtype, enabled=self.dtype is not None)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        with self._autocast(z.device):
            return self.unet(z, t, stage)

    def forward_packed(
        self, zs: list[torch.Tensor | None], t: torch.Tensor
    ) -> list[torch.Tensor | None]:
        with self._autocast(t.device):
            return self.unet.forward_packed(zs, t)


class LossModule(nn.Module):
    """The training loss: `draw` takes a step's times and noise for its batch (fdm-core's
    `draw_loss_batch`), the call runs `batch_loss` (the process math, the network and (E23))
    on that batch or on one of its micro-batches (``LossBatch.split``, docs/design.md §6.8), so
    DDP sees one forward per micro-batch.

    With `precision` bf16 or fp16, only the network call runs under autocast; the process math
    around it (stage signals, interpolation, noise, targets) and the loss stay fp32
    (docs/design.md §6.5). With `compile`, `stage_loss` runs as one ``torch.compile`` graph with
    static shapes (every step has the same rows per stage): process math, packed UNet and loss,
    forward and backward. The random draws stay outside it, so compiled and eager runs see the
    same noise.
    """

    def __init__(
        self, process: FDMProcess, unet: nn.Module, compile: bool, precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.process = process
        self.unet = unet
        self.network = Network(unet, precision)
        self.static_loss = torch.compile(stage_loss, **compile_options()) if compile else None

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> LossBatch:
        """The step's stratified times, weights and eps for the batch `x`."""
        return draw_loss_batch(self.process, x, generator=generator)

    def forward(self, batch: LossBatch) -> LossOutput:
        """The loss, the per-stage losses (device tensors) and the rows per stage of `batch`."""
        return batch_loss(self.process, self.network, batch, self.static_loss)


class WeightUpdate:
    """What an applied step changes once its gradients are final: the AdamW step, then the EMA
    update (E24); `fdm_cli.training.update.update` calls it in place of the optimizer step.

    With `compile` both run as one ``torch.compile``d function (`compile_options`; PyTorch's
    compiled-optimizer recipe, docs/design.md §6.5). The EMA update is a graph; the fused AdamW
    kernel runs as it is between graphs, since torch does not trace fused optimizers (dynamo
    disables ``torch.optim.adam._fused_adam``; ``Optimizer.step`` breaks the graph around its
    body). The learning rate is a 0-dim tensor in each param group (`make_optimizer`, written
    with ``fill_`` by `fdm_cli.training.schedule.set_learning_rate`) and 1 - d_n the EMA's
    0-dim ``weight`` (`EMA.advance`): the compiled code reads both from the device, so a step
    with a new learning rate or warm-up decay compiles nothing new (a float would be a guarded
    constant). Under fp16 (an enabled `scaler`, §6.5) it stays eager: ``GradScaler.step`` reads
    the overflow flag on the host to decide whether to step at all, which compiled code cannot
    hold."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        ema: EMA,
        unet: nn.Module,
        scaler: torch.amp.GradScaler,
        compile: bool,
    ) -> None:
        self.optimizer, self.ema, self.unet, self.scaler = optimizer, ema, unet, scaler
        self.compiled: Callable[[torch.Tensor], None] | None = None
        if compile and not scaler.is_enabled():
            for shadow in ema.shadow.values():  # written in place, never moved: CUDA graphs
                torch._dynamo.mark_static_address(shadow)  # may write them where they are
            self.compiled = torch.compile(self._step_and_average, **compile_options())

    def _step_and_average(self, weight: torch.Tensor) -> None:
        self.optimizer.step()
        self.ema.average(self.unet, weight)

    def __call__(self) -> None:
        if self.compiled is not None:
            self.compiled(self.ema.advance())
            return
        optimizer_step(self.optimizer, self.scaler)
        self.ema.update(self.unet)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of ``train.precision: fp16`` (docs/design.md §6.5); disabled (a no-op)
    for fp32 and bf16. fp16 on a device other than CUDA is refused."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"`precision` fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32"
        )
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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
    module: nn.Module  # `loss`, in DistributedDataParallel under torchrun
    loss: LossModule
    scaler: torch.amp.GradScaler  # fp16's loss scaler; disabled for fp32 and bf16
    weight_update: WeightUpdate  # AdamW and the EMA, compiled under train.compile
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

    def optional_states(self) -> dict[str, Stateful]:
        """fp16's loss scaler (docs/design.md §6.5)."""
        return {"scaler": self.scaler} if self.scaler.is_enabled() else {}

    def progress(self) -> dict[str, Any]:
        """The shared progress entry and the world size it was trained at."""
        return super().progress() | {"world_size": self.ctx.world_size}

    def write_images(self, grid: str, strip: str) -> dict[str, Path]:
        """A sample grid and a stage strip from the EMA weights (all ranks sample); returns
        them as the trackers name them (``samples/grid``, ``samples/strip``)."""
        model = LoadedModel(self.process, self.ema.averaged_model(self.unet), "ema")
        folder = self.run_dir / ckpt.SAMPLES
        write_samples(self.ctx, self.cfg, model, folder / grid, folder / strip)
        return {"samples/grid": folder / grid, "samples/strip": folder / strip}


def setup(cfg: TrainConfig, run_dir: Path, resume: bool, ctx: dist_.DistContext, say: Say) -> Run:
    """Data, process, model, EMA and optimizer; the checkpoint's state when resuming."""
    opts = cfg.train
    if opts.batch_size % ctx.world_size:
        raise UserError(
            f"`batch_size` {opts.batch_size} must be divisible by the "
            f"{ctx.world_size} ranks (it is the global batch)"
        )
    if opts.grad_accum > opts.batch_size // ctx.world_size:
        raise UserError(
            f"train.grad_accum {opts.grad_accum} is more than the "
            f"{opts.batch_size // ctx.world_size} images of a rank's batch (each micro-batch "
            "needs at least one); lower it or raise `batch_size`"
        )
    scaler = make_scaler(opts.precision, ctx.device)  # fp16 off CUDA: refused before any work
    if opts.eval_every is not None:  # a missing FID network: refused before anything is written
        from fdm_cli.evaluation.fid import network_path

        network_path()
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
    optimizer = make_optimizer(unet, cfg.optim, ctx.device, opts.compile)
    module = LossModule(process, unet, opts.compile, opts.precision)
    weight_update = WeightUpdate(optimizer, ema, unet, scaler, opts.compile)
    log = LossLog(run_dir / "loss.csv", process.num_stages)
    run = Run(
        cfg, ctx, run_dir, dataset, process, unet, ema, optimizer, module, module, scaler,
        weight_update, log, threads,
    )  # fmt: skip
    run.begin(latest, resume, say)
    if ctx.enabled:  # wrapped once the weights are loaded
        find_unused = opts.find_unused_parameters
        if find_unused == "auto":  # a micro-batch without a stage leaves its heads unused
            counts = stratified_counts(process, opts.batch_size // ctx.world_size)
            find_unused = counts is None or min(counts) < opts.grad_accum
        run.module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=bool(find_unused),
        )
    return run


def make_optimizer(
    unet: nn.Module, optim: OptimConfig, device: torch.device, compile: bool = False
) -> torch.optim.AdamW:
    """AdamW over the UNet's parameters, fused (one kernel for every parameter, no host read of
    its step counters) on the devices that have the fused kernel. For a compiled step
    (`WeightUpdate`) the learning rate is a 0-dim tensor on `device` (float64 on the CPU, whose
    fused kernel reads it as a double, so it steps exactly as a float does; float32, which
    CUDA's kernel reads, elsewhere), and on CUDA the step is capturable (its counters stay on
    the GPU, as torch's compiled optimizer expects)."""
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    lr = torch.tensor(optim.lr, dtype=dtype, device=device) if compile else optim.lr
    return torch.optim.AdamW(
        unet.parameters(),
        lr=lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        fused=device.type in FUSED_ADAMW_DEVICES or None,
        capturable=compile and device.type == "cuda",
    )


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
