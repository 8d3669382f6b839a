"""`fdm train`'s optimizer step on batches you give: for your own training loop, or to time a
step without a data source or run folder (the GPU benchmarks do).

Example::

    import torch
    import fdm_cli

    config = fdm_cli.train_config("fdm-ds", {"train.batch_size": 64})
    step = fdm_cli.TrainingStep(config, device="cpu")
    for _ in range(10):
        loss = step(torch.rand(64, 1, 32, 32) * 2 - 1)   # a device tensor, nothing read back
"""

from __future__ import annotations

import torch

from fdm_cli.api.common import DeviceLike, device_of
from fdm_cli.config.train import TrainConfig
from fdm_cli.errors import UserError
from fdm_cli.runtime.threads import configure_threads
from fdm_cli.seeding import MODEL_INIT, TRAIN_STEP, derive_seed
from fdm_cli.training.schedule import set_learning_rate
from fdm_cli.training.setup import LossModule, WeightUpdate, make_optimizer, make_scaler
from fdm_cli.training.step import train_step
from fdm_core import FDMProcess
from fdm_models import EMA, MultiStageUNet

__all__ = ["TrainingStep"]


class TrainingStep:
    """The pieces of an f-DM run, built from `config` as `fdm train` builds them, and its step.

    `process` (fdm-core's `FDMProcess`), `unet` (initialised from ``train.seed``), `ema`,
    `optimizer` (AdamW at ``optim.lr``, fused where the device has the kernel) and `threads`
    (the CPU thread tuner: ``train.threads`` pins the count, None adapts it to the load).
    Calling the object runs one step on a batch ``(B, C, R, R)`` in [-1, 1]: the loss
    (docs/design.md §6.3; the packed forward §6.6; under ``train.precision: bf16`` only the
    UNet in autocast, §6.5; ``train.compile`` compiles it), backward, gradient clipping at
    ``optim.grad_clip``, the AdamW step and the EMA update, reading nothing back to the host
    (§6.7); under ``train.compile`` the AdamW step and the EMA update are one compiled
    function too (§6.5). The learning rate stays what the optimizer holds until `set_lr` changes it.
    ``train.grad_accum`` splits the batch into micro-batches (§6.8); ``train.precision: fp16``
    (CUDA) scales the loss (§6.5).
    """

    def __init__(self, config: TrainConfig, device: DeviceLike = "auto") -> None:
        if not isinstance(config, TrainConfig):
            raise UserError(
                f"`config`: give a TrainConfig (from train_config), got {type(config).__name__}"
            )
        opts = config.train
        self.config = config
        self.device = device_of(device)
        self.threads = configure_threads(opts.threads, tune=self.device.type == "cpu")
        self.process = FDMProcess(config.process)
        torch.manual_seed(derive_seed(opts.seed, MODEL_INIT))
        self.unet = MultiStageUNet(config.model).to(self.device)
        self.ema = EMA(self.unet, config.optim.ema_decay, warmup=config.optim.ema_warmup)
        self.optimizer = make_optimizer(self.unet, config.optim, self.device, opts.compile)
        self.scaler = make_scaler(opts.precision, self.device)
        self.loss = LossModule(self.process, self.unet, opts.compile, opts.precision)
        self.weight_update = WeightUpdate(
            self.optimizer, self.ema, self.unet, self.scaler, opts.compile
        )
        self.module = self.loss  # what a step calls (`fdm_cli.training.step.StepParts`)
        self.steps = 0  # steps taken

    @property
    def cfg(self) -> TrainConfig:
        """`config` (`fdm_cli.training.step.StepParts`)."""
        return self.config

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps, for a schedule of your own (a compiled step reads
        it from the device, so changing it compiles nothing new)."""
        set_learning_rate(self.optimizer, lr)

    def generator(self) -> torch.Generator:
        """The generator of the next step's times and noise, seeded as `fdm train` seeds it:
        from (``train.seed``, step)."""
        seed = derive_seed(self.config.train.seed, TRAIN_STEP, self.steps, 0)
        return torch.Generator(self.device).manual_seed(seed)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One optimizer step on the batch `x`; the times and noise come from `generator`
        (default `generator()`). Returns the loss, detached, on the device."""
        shape = tuple(self.process.stage_shapes[0])
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise UserError(f"x: expected a batch (B, {', '.join(map(str, shape))}), got "
                            f"{tuple(x.shape)}")  # fmt: skip
        generator = self.generator() if generator is None else generator
        result = train_step(self, x.to(self.device), generator, self.steps + 1)
        self.threads.tick()
        self.steps += 1
        return result.loss
