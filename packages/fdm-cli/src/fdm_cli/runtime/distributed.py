"""Single-process or DDP execution, chosen by the environment (`torchrun` sets it).

Under ``torchrun --nproc_per_node N fdm train ...`` (or ``python -m torch.distributed.run``)
every rank runs the same command: the process group is initialised from the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) with gloo on CPU
and nccl on CUDA, each rank takes its slice of the global batch, and only rank 0 writes files.
Sampling is split over the ranks and gathered on rank 0.

Several nodes (``torchrun --nnodes N --rdzv_backend c10d``, one agent per node, e.g. under
``srun``): ``RANK`` is the global rank, ``LOCAL_RANK`` the index on the node. Only the device
(this node's GPU ``LOCAL_RANK``) and the CPU thread share (``LOCAL_WORLD_SIZE``) are per node;
the data slice, the noise seeds and `DistContext.is_main` (the one writer of RUN_DIR, which all
nodes share) follow the global rank (tests/e2e/test_multinode.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from fdm_cli.errors import UserError
from fdm_cli.runtime.device import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_preference: str, timeout_s: float = 1800.0) -> DistContext:
    """Initialise DDP from torchrun's environment, or return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        _refuse_copies_under_srun()
        return DistContext(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank, world_size, local_rank, device, backend)


def _refuse_copies_under_srun() -> None:
    """``srun -n N fdm train`` without torchrun would start N independent single-process runs,
    all writing the same RUN_DIR: refuse it (SLURM sets SLURM_STEP_NUM_TASKS in a step's tasks;
    torchrun workers have WORLD_SIZE)."""
    try:
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return
    if tasks > 1 and "WORLD_SIZE" not in os.environ:
        raise UserError(
            f"this process is one of {tasks} SLURM tasks but not a torchrun worker: each task "
            "would train its own copy into the same `run_dir`. Run one task per node that starts "
            "torchrun: srun --ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES ... -m fdm_cli "
            "train (README: several machines); in an interactive shell of such a step, run "
            "SLURM_STEP_NUM_TASKS=1 fdm train ..."
        )


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def sum_over_ranks(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a small float tensor over all ranks (float64, on the CPU)."""
    if not ctx.enabled:
        return values
    t = values.detach().to(ctx.device, torch.float64).clone()
    dist.all_reduce(t)
    return t.cpu()


def shard(ctx: DistContext, n: int) -> tuple[int, int]:
    """The contiguous index range [start, stop) of `n` items this rank handles."""
    per_rank = -(-n // ctx.world_size)
    start = min(n, ctx.rank * per_rank)
    return start, min(n, start + per_rank)


def gather_shards(ctx: DistContext, local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate each rank's `shard` of an n-item tensor (rows) on every rank, in rank order."""
    if not ctx.enabled:
        return local
    per_rank = -(-n // ctx.world_size)
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    padded = padded.to(ctx.device).contiguous()
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].cpu()
