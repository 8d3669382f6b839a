"""Per-sample, per-stage Gaussian noise for sampling (docs/design.md §8 (E31, E32)).

`StageNoise` draws noise from a counter-based generator: every value is a hash of (sample seed,
stage, draw index, element index), turned into a Gaussian by Box-Muller. So a sample's noise does
not depend on the batch it is drawn in or on the device, and each stage has its own stream:
fixing one stage's seed while varying the others (or the reverse) is one argument. All work is
vectorised over the batch and the pixels.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (lowbias32) on int64 tensors holding uint32 values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


class StageNoise:
    """Noise source for the sampler: one stream per (sample, stage).

    Args:
        seeds: one integer seed per sample, shape (B,). Sample i of a run seeded s is usually
            seeded s + i, which makes images independent of the batch size.
        stage_seeds: stage -> seed. That stage's noise ignores the per-sample seed and uses this
            one for every sample, so all samples share it (fix the coarse stage, vary the rest).
    """

    def __init__(self, seeds: torch.Tensor | list[int], stage_seeds: dict[int, int] | None = None):
        self.seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
        self.stage_seeds = dict(stage_seeds or {})
        self._draws: dict[int, int] = {}

    def __len__(self) -> int:
        return self.seeds.numel()

    def reset(self) -> None:
        self._draws.clear()

    def draw(
        self,
        stage: int,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The next standard-normal draw of per-sample `shape` from each sample's `stage` stream."""
        draw = self._draws.get(stage, 0)
        self._draws[stage] = draw + 1
        seeds = self.seeds.to(device)
        if stage in self.stage_seeds:
            seeds = torch.full_like(seeds, self.stage_seeds[stage])
        key = _hash32(_hash32(_hash32(seeds ^ (seeds >> 32)) ^ stage * 0x9E3779B9) + draw)
        numel = math.prod(shape)
        half = (numel + 1) // 2
        counter = torch.arange(2 * half, device=device, dtype=torch.int64)
        bits = _hash32(key[:, None] ^ _hash32(counter + 0x632BE5AB)[None, :])
        uniform = ((bits >> 8).double() + 0.5) / float(1 << 24)
        u1, u2 = uniform[:, :half], uniform[:, half:]
        radius = torch.sqrt(-2.0 * torch.log(u1))
        angle = 2.0 * math.pi * u2
        normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        return normal[:, :numel].reshape(len(seeds), *shape).to(dtype)
