"""The `autoencoder` transform (docs/design.md §5.4 (E17, E17a)): conformance for `renoise`, a
frozen network, shapes from the latent, the sampler's renoise boundary with a real autoencoder,
and diffusers folders through the optional extra."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fdm_core import FDMProcess, ProcessConfig, SamplerConfig, StageNoise, sample
from fdm_core.testing import TransformConformance
from fdm_models import Autoencoder, AutoencoderConfig, save_autoencoder
from fdm_transforms import AutoencoderTransform

from ..fdm_core.helpers import assert_marginal, oracle, stage_ends

TINY = {"resolution": 8, "factor": 2, "latent_channels": 2, "base_channels": 8}


def tiny_autoencoder(folder, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = Autoencoder(AutoencoderConfig(**{**TINY, **overrides}))
    model.fit_latent_scale(torch.rand(64, 1, 8, 8) * 2 - 1)
    save_autoencoder(model, folder)
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ae") / "autoencoder"
    tiny_autoencoder(path)
    return path


class TestAutoencoderConformance(TransformConformance):
    input_shape = (1, 8, 8)

    @pytest.fixture(autouse=True)
    def _folder(self, folder):
        self.folder = folder

    def make_transform(self):
        return AutoencoderTransform(path=str(self.folder))


def test_encode_is_the_normalised_posterior_mean_and_decode_inverts_the_normalisation(folder):
    transform = AutoencoderTransform(path=str(folder))
    model = transform.network.module
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    mean = model._raw_latent(x)
    expected = (mean - model.latent_shift.view(1, -1, 1, 1)) * model.latent_scale.view(1, -1, 1, 1)
    assert torch.allclose(transform.encode(x), expected, atol=1e-6)
    assert torch.equal(transform.encode(x), transform.encode(x))  # never a posterior sample
    assert torch.allclose(transform.decode(expected), model.decode_latent(expected))
    assert transform.out_shape((1, 8, 8)) == (2, 4, 4) and transform.dim_ratio((1, 8, 8)) == 0.5


def test_the_network_is_frozen_but_the_input_gets_gradients(folder):
    transform = AutoencoderTransform(path=str(folder))
    assert not any(p.requires_grad for p in transform.network.module.parameters())
    assert not transform.network.module.training
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    transform.decode(transform.encode(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_run_folder_is_accepted_and_bad_shapes_are_explained(folder, tmp_path):
    run = tmp_path / "run"
    tiny_autoencoder(run / "model")
    assert AutoencoderTransform(path=str(run)).out_shape((1, 8, 8)) == (2, 4, 4)
    transform = AutoencoderTransform(path=str(folder))
    with pytest.raises(ValueError, match="takes 1-channel images, got 3"):
        transform.out_shape((3, 8, 8))
    with pytest.raises(ValueError, match="down-samples by 2, which must divide the stage size"):
        transform.out_shape((1, 9, 9))
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        AutoencoderTransform(path=str(tmp_path))


def test_the_renoise_boundary_keeps_the_noisy_path_exact_with_a_real_autoencoder(folder):
    """f-DM-VAE: stage 0 pixels, stage 1 the latent. With the oracle, z must have the marginal
    q(z_t | x) at the end of each stage: a renoise up-step that forgot to decode, used the
    wrong alpha/sigma, or kept the latent noise fails the stage-0 check."""
    process = FDMProcess(
        ProcessConfig(resolution=8, transforms=[{"name": "autoencoder", "path": str(folder)}])
    )
    assert process.stage_shapes == [(1, 8, 8), (2, 4, 4)]
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    n = 1000
    for eta in (0.0, 1.0):
        callback, seen = stage_ends(process)
        out = sample(
            process,
            oracle(process, x),
            SamplerConfig(steps=10, eta=eta),
            StageNoise(seeds=torch.arange(n)),
            callback=callback,
        )
        for k in (1, 0):
            t, z, _ = seen[k]
            assert_marginal(process, z, x, k, t)
        assert torch.allclose(out.x, x.expand(n, -1, -1, -1), atol=1e-4)


@pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None,
    reason="diffusers is not installed (pip install 'fdm-transforms[diffusers]'; nox installs it)",
)
@pytest.mark.parametrize("kind", ["AutoencoderTiny", "AutoencoderKL"])
def test_a_diffusers_autoencoder_folder_encodes_and_decodes(kind, tmp_path):
    import diffusers

    torch.manual_seed(0)
    if kind == "AutoencoderTiny":
        model = diffusers.AutoencoderTiny(
            in_channels=1,
            out_channels=1,
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=2,
        )
    else:
        model = diffusers.AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 8),
            norm_num_groups=4,
            latent_channels=3,
            scaling_factor=0.5,
        )
    model.save_pretrained(tmp_path / "vae")
    transform = AutoencoderTransform(path=str(tmp_path / "vae"))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    shape = transform.out_shape((1, 16, 16))
    assert shape == ((2, 8, 8) if kind == "AutoencoderTiny" else (3, 8, 8))
    y = transform.encode(x)
    assert y.shape == (2, *shape) and transform.decode(y).shape == x.shape
    if kind == "AutoencoderKL":  # the scaled posterior mean, not a sample
        assert torch.allclose(y, 0.5 * model.encode(x).latent_dist.mean, atol=1e-5)
    process = FDMProcess(
        ProcessConfig(
            resolution=16, transforms=[{"name": "autoencoder", "path": str(tmp_path / "vae")}]
        )
    )
    assert process.stage_shapes[1] == shape
