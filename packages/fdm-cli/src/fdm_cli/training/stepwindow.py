"""The statistics of a log window of training steps, kept on the device until the window is read.

A training step leaves its loss, gradient norm and per-stage losses on the device; `StepWindow`
stacks them, and `read` brings the whole window to the host in one transfer (under DDP after one
all-reduce over the ranks), so the steps in between never wait for the device. The training
loop (`fdm_cli.training.trainer`, through `fdm_cli.training.loop.FDMTrainer`) reads a window
every ``train.log_every`` steps, before every checkpoint and when the run ends: that is where
the loss log is written, the progress line updated and a non-finite loss stops the run, so a
non-finite step can never reach a saved checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fdm_cli.runtime import distributed as dist_


@dataclass
class StepRow:
    """One step's statistics, averaged over the ranks."""

    step: int
    loss: float
    grad_norm: float
    stage_means: list[float]  # mean loss per stage (NaN for a stage with no rows in the step)
    lr: float
    elapsed: float
    overflow: bool = False  # fp16: the loss scaler skipped the update (docs/design.md §6.5)


class StepWindow:
    """Device-side statistics of the steps since the last `read`."""

    def __init__(self, num_stages: int, ctx: dist_.DistContext) -> None:
        self.num_stages = num_stages
        self.ctx = ctx
        self._rows: list[torch.Tensor] = []
        self._host: list[tuple[int, float, float]] = []  # (step, lr, elapsed) per row
        self._counts: dict[tuple[int, ...], torch.Tensor] = {}
        self._no_overflow: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        step: int,
        lr: float,
        elapsed: float,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        per_stage: torch.Tensor,
        counts: list[int],
        overflow: torch.Tensor | None = None,
    ) -> None:
        """Record a step (tensors stay on the device; nothing is read back); `overflow` (fp16):
        1 when the loss scaler skipped the update."""
        key = tuple(counts)
        if key not in self._counts:  # stratified batches repeat the same counts every step
            self._counts[key] = torch.tensor(key, dtype=torch.float64).to(loss.device)
        n = self._counts[key]
        sums = torch.where(n > 0, per_stage.double() * n, 0.0)  # NaN kept where rows exist
        if overflow is None:  # one device zero for every step without a loss scaler
            if self._no_overflow is None:
                self._no_overflow = loss.new_zeros(())
            overflow = self._no_overflow
        head = torch.stack([loss.detach().double(), grad_norm.detach().double(), overflow.double()])
        self._rows.append(torch.cat([head, sums, n]))
        self._host.append((step, lr, elapsed))

    def read(self) -> list[StepRow]:
        """The window's rows on the host (one transfer; one all-reduce under DDP); empties it."""
        if not self._rows:
            return []
        values = torch.stack(self._rows)
        if self.ctx.enabled:
            values = dist_.sum_over_ranks(self.ctx, values)
            values[:, :2] /= self.ctx.world_size
        k = self.num_stages
        rows = []
        for v, (step, lr, elapsed) in zip(values.tolist(), self._host, strict=True):
            sums, counts = v[3 : 3 + k], v[3 + k : 3 + 2 * k]
            means = [s / c if c > 0 else math.nan for s, c in zip(sums, counts, strict=True)]
            rows.append(StepRow(step, v[0], v[1], means, lr, elapsed, v[2] > 0))
        self._rows, self._host = [], []
        return rows
