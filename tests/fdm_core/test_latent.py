"""Latent diffusion (docs/design.md §10.3): with ``latent`` set, every stage lives in the
latent's output space; training signals are encoded, samples decoded."""

from __future__ import annotations

import torch

from fdm_core import (
    Boundary,
    FDMProcess,
    ProcessConfig,
    SamplerConfig,
    StageNoise,
    diffusion_loss,
    load_registry,
    sample,
)
from fdm_transforms import DownsampleTransform

from .helpers import assert_marginal, oracle, stage_ends


class Encoder(DownsampleTransform):
    """An encoder stand-in: 2x mean pooling with a gain, declared `renoise`."""

    name = "test_latent_encoder"
    boundary = Boundary.RENOISE

    def encode(self, x):
        return 3.0 * super().encode(x)

    def decode(self, y):
        return super().decode(y / 3.0)


def latent_process(transforms=()) -> FDMProcess:
    reg = load_registry(load_plugins="")
    reg.add("transform", Encoder.name, Encoder, "tests", "0")
    data = {"resolution": 8, "latent": Encoder.name, "transforms": list(transforms)}
    return FDMProcess(ProcessConfig.model_validate(data, context={"registry": reg}), reg)


def test_stages_live_in_the_latent_space():
    process = latent_process([{"name": "downsample"}])
    assert process.stage_shapes == [(1, 4, 4), (1, 2, 2)]
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(process.stage_signal(x, 0), 3.0 * torch.nn.functional.avg_pool2d(x, 2))
    assert process.to_data_space(process.stage_signal(x, 1), 1).shape == x.shape


def test_the_loss_trains_on_encoded_signals():
    process = latent_process()
    seen = []

    def model(z, t, stage):
        seen.append(z.shape)
        return torch.zeros_like(z)

    diffusion_loss(process, model, torch.randn(4, 1, 8, 8))
    assert seen == [torch.Size([4, 1, 4, 4])]


def test_samples_are_decoded_and_the_latent_noisy_path_is_exact():
    """The oracle predicts the clean latent; the output must be its decoding (data space), and
    z at t = 0 must have the marginal of the latent-space process (a bug that samples in data
    space, or returns the latent, fails one of the two)."""
    process = latent_process()
    x = torch.randn(1, 1, 8, 8)
    n = 1000
    callback, seen = stage_ends(process)
    out = sample(
        process,
        oracle(process, x),
        SamplerConfig(steps=8, eta=1.0),
        StageNoise(seeds=torch.arange(n)),
        callback=callback,
    )
    expected = process.to_data_space(process.stage_signal(x, 0), 0)
    assert out.x.shape == (n, 1, 8, 8)
    assert torch.allclose(out.x, expected.expand(n, -1, -1, -1), atol=1e-5)
    t, z, _ = seen[0]
    assert z.shape == (n, 1, 4, 4)
    assert_marginal(process, z, x, 0, t)
