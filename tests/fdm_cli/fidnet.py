"""A tiny stand-in for the 87 MB Inception FID network, for tests: pooled pixels through a fixed
random projection, saved as TorchScript and named by ``FDM_FID_NETWORK`` exactly as a real
network file would be (the `network_file` fixture of conftest.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURES = 12


class StandIn(torch.nn.Module):
    """(N, 3, 299, 299) -> (N, 12): 6x6 average pooling, a fixed projection, tanh."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 6 * 6, FEATURES, generator=g) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        return torch.tanh(F.adaptive_avg_pool2d(x, 6).flatten(1) @ self.proj)
