"""``SamplerConfig.compile`` (docs/design.md §7.3): each stage's steps run one compiled graph,
their numbers read from a device tensor, and the samples are the eager sampler's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

from fdm_core import FDMProcess, ProcessConfig, SampleOutput, SamplerConfig, StageNoise, sample
from fdm_models import MultiStageUNet, UNetConfig

STEPS = [3, 4, 5]  # steps of stages 0, 1, 2


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Compile through dynamo + AOTAutograd without inductor's C++ build (minutes on 2 cores)."""
    monkeypatch.setenv("FDM_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _sample(
    process: FDMProcess, unet: MultiStageUNet, eta: float, compiled: bool
) -> tuple[SampleOutput, list[tuple[int, torch.Tensor]]]:
    """Three samples, and the (stage, clean prediction) of every step."""
    seen: list[tuple[int, torch.Tensor]] = []

    def keep(k: int, t: float, z: torch.Tensor, clean: torch.Tensor) -> None:
        seen.append((k, clean))

    sampler = SamplerConfig(steps_per_stage=STEPS, eta=eta, clip=1.0, compile=compiled)
    out = sample(process, unet, sampler, StageNoise(seeds=torch.arange(3)), callback=keep)
    return out, seen


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_each_stage_runs_one_graph_and_samples_as_eager(aot_eager: None, eta: float) -> None:
    """A tiny UNet on a 3-stage down-sampling chain: dynamo compiles once per stage (3 frames,
    3 graphs, no graph break), not once per step, however the numbers of the steps differ, and
    z, x and every clean prediction equal the eager run's. Catches a step's number reaching the
    graph as a Python constant (a recompile every step: the frame count would be the step
    count)."""
    process = FDMProcess(ProcessConfig(resolution=16, transforms=[{"name": "downsample"}] * 2))
    shapes = [list(s) for s in process.stage_shapes]
    torch.manual_seed(0)
    config = UNetConfig(stage_shapes=shapes, base_channels=8, num_heads=2, channel_mult=[1, 2, 2])
    unet = MultiStageUNet(config).eval()
    eager, eager_seen = _sample(process, unet, eta, compiled=False)
    out, seen = _sample(process, unet, eta, compiled=True)
    assert counters["frames"]["total"] == 3, dict(counters["frames"])  # one per stage
    assert counters["stats"]["unique_graphs"] == 3 and not counters["graph_break"]
    assert [k for k, _ in seen] == [k for k, _ in eager_seen] == [2] * 5 + [1] * 4 + [0] * 3
    torch.testing.assert_close(out.z, eager.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x, eager.x, rtol=1e-5, atol=1e-5)
    for (_, got), (_, want) in zip(seen, eager_seen, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
