"""The latent autoencoder: training signal, latent normalisation, determinism, shapes, I/O."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from fdm_models import (
    Autoencoder,
    AutoencoderConfig,
    MultiStageUNet,
    UNetConfig,
    WeightsMismatchError,
    is_autoencoder_dir,
    load_autoencoder,
    save_autoencoder,
    save_pretrained,
)


def tiny(**overrides: object) -> AutoencoderConfig:
    """16x16 gray images, factor 4, 8 base channels: a few thousand parameters."""
    fields = {"resolution": 16, "factor": 4, "base_channels": 8, "latent_channels": 3}
    return AutoencoderConfig(**{**fields, **overrides})


def images(n: int, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (blurred noise): something an autoencoder can learn."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return x.tanh()


def perturbed(model: Autoencoder, seed: int = 0) -> Autoencoder:
    """Random non-zero weights everywhere (zero-initialised convolutions included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
def test_a_few_steps_lower_the_reconstruction_loss(bottleneck: str) -> None:
    torch.manual_seed(0)
    model = Autoencoder(tiny(bottleneck=bottleneck, codebook_size=32))
    x = images(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def reconstruction() -> float:
        with torch.no_grad():
            return float(model.loss(x, torch.Generator().manual_seed(0)).reconstruction)

    before = reconstruction()
    for step in range(25):
        out = model.loss(x, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    assert reconstruction() < 0.7 * before


def test_kl_loss_terms_and_reproducible_sampling() -> None:
    model = perturbed(Autoencoder(tiny(kl_weight=0.5)))
    x = images(4)
    a = model.loss(x, torch.Generator().manual_seed(1))
    b = model.loss(x, torch.Generator().manual_seed(1))
    c = model.loss(x, torch.Generator().manual_seed(2))
    assert torch.equal(a.total, b.total) and not torch.equal(a.total, c.total)
    assert a.regularization > 0 and a.codebook_usage is None and a.perplexity is None
    torch.testing.assert_close(a.total, a.reconstruction + 0.5 * a.regularization)


def test_vq_reports_codebook_usage_and_perplexity() -> None:
    model = perturbed(Autoencoder(tiny(bottleneck="vq", codebook_size=16)))
    x = images(6)
    out = model.loss(x)
    assert 0 < out.codebook_usage <= 1 and 1 <= out.perplexity <= 16
    indices = model.encode_indices(x)
    used = indices.unique().numel()
    assert out.codebook_usage == used / 16
    assert out.perplexity <= used + 1e-9  # perplexity never exceeds the number of codes used
    torch.testing.assert_close(out.total, out.reconstruction + out.regularization)
    # encode_latent is exactly the (normalised) code of each position
    codes = model.quantizer.codebook.weight[indices].permute(0, 3, 1, 2)
    assert torch.equal(model.encode_latent(x), codes)
    with pytest.raises(ValueError, match="vq autoencoder"):
        Autoencoder(tiny()).encode_indices(x)


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
def test_fit_latent_scale_gives_unit_variance_per_channel(bottleneck: str) -> None:
    model = perturbed(Autoencoder(tiny(bottleneck=bottleneck, codebook_size=64)))
    x = images(32, seed=3)
    shift, scale = model.fit_latent_scale(x, batch_size=10)
    assert torch.equal(shift, model.latent_shift) and torch.equal(scale, model.latent_scale)
    assert not torch.allclose(shift, torch.zeros_like(shift))  # something was fitted
    z = model.encode_latent(x).detach().double()
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    # an iterable of batches fits the same statistics
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.latent_shift.zero_()
        other.latent_scale.fill_(1.0)
    other.fit_latent_scale(iter(x.split(7)))
    torch.testing.assert_close(other.latent_shift, model.latent_shift)
    torch.testing.assert_close(other.latent_scale, model.latent_scale)
    # decode_latent undoes the normalisation: it sees the raw latent again
    raw = model.encoder(x)[:, :3] if bottleneck == "kl" else model.quantizer(model.encoder(x))[0]
    torch.testing.assert_close(model.decode_latent(model.encode_latent(x)), model.decoder(raw))


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
def test_encode_latent_is_deterministic_and_per_sample(bottleneck: str) -> None:
    model = perturbed(Autoencoder(tiny(bottleneck=bottleneck, codebook_size=64)))
    with torch.no_grad():
        model.latent_shift.fill_(0.3)
        model.latent_scale.fill_(2.0)
    x = images(5, seed=4)
    model.train()  # no sampling and no batch statistics in train mode either
    z = model.encode_latent(x)
    assert torch.equal(z, model.encode_latent(x))
    alone = torch.cat([model.encode_latent(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, z, atol=1e-5, rtol=1e-5)
    changed = x.clone()
    changed[0] = -changed[0]
    torch.testing.assert_close(model.encode_latent(changed)[1:], z[1:], atol=1e-5, rtol=1e-5)
    y = model.decode_latent(z)
    alone = torch.cat([model.decode_latent(z[i : i + 1]) for i in range(len(z))])
    torch.testing.assert_close(alone, y, atol=1e-5, rtol=1e-5)


def test_transform_pair_is_differentiable_in_float64() -> None:
    model = perturbed(Autoencoder(tiny(resolution=8, factor=2, latent_channels=2))).double()
    with torch.no_grad():
        model.latent_shift.fill_(0.1)
        model.latent_scale.fill_(1.5)
    x = images(1, size=8).double().requires_grad_()
    assert torch.autograd.gradcheck(model.encode_latent, (x,))
    z = model.encode_latent(x).detach().requires_grad_()
    assert torch.autograd.gradcheck(model.decode_latent, (z,))
    assert model.encode_latent(x).dtype == torch.float64
    # other input dtypes are computed in the weights' dtype and returned in their own
    assert model.encode_latent(x.float()).dtype == torch.float32
    single = Autoencoder(tiny(resolution=8, factor=2))
    assert single.encode_latent(images(2, size=8).double()).dtype == torch.float64


def test_vq_encode_latent_passes_gradients_straight_through() -> None:
    model = perturbed(Autoencoder(tiny(bottleneck="vq", codebook_size=16))).double()
    x = images(2).double().requires_grad_()
    model.encode_latent(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("factor", "latent_channels"), [(2, 2), (4, 4), (8, 5)])
def test_shapes_follow_factor_and_latent_channels(factor: int, latent_channels: int) -> None:
    config = tiny(resolution=32, factor=factor, latent_channels=latent_channels, in_channels=3)
    model = Autoencoder(config)
    side = 32 // factor
    assert config.latent_shape == model.latent_shape == (latent_channels, side, side)
    x = images(2, channels=3, size=32)
    z = model.encode_latent(x)
    assert z.shape == (2, latent_channels, side, side)
    assert model.decode_latent(z).shape == x.shape
    assert model.latent_shift.shape == model.latent_scale.shape == (latent_channels,)
    assert len(config.level_channels) == {2: 2, 4: 3, 8: 4}[factor]


def test_attention_variant_runs() -> None:
    model = perturbed(Autoencoder(tiny(attention=True, num_heads=2, attention_backend="math")))
    x = images(2)
    assert model(x).shape == x.shape
    assert any("attention" in name or "qkv" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resolution": 12, "factor": 8}, "resolution = 12 is not divisible by factor = 8"),
        ({"factor": 3}, "Input should be 2, 4 or 8"),
        ({"channel_mult": (1, 2)}, "needs log2\\(factor\\) \\+ 1 = 3"),
        ({"attention": True, "num_heads": 3}, "num_heads = 3 must divide the 16 channels"),
        ({"bottleneck": "ae"}, "Input should be 'kl' or 'vq'"),
        ({"latent_dim": 4}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation_errors_are_clear(fields: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        tiny(**fields)


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
def test_save_load_round_trip_is_exact(bottleneck: str, tmp_path: Path) -> None:
    model = perturbed(Autoencoder(tiny(bottleneck=bottleneck, codebook_size=32))).eval()
    x = images(4)
    model.fit_latent_scale(x)
    path = save_autoencoder(model, tmp_path / "ae")
    assert path == tmp_path / "ae"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    document = json.loads((path / "config.json").read_text())
    assert document["_class_name"] == "Autoencoder" and "_fdm_models_version" in document
    assert document["autoencoder"] == model.config.model_dump(mode="json")
    loaded = load_autoencoder(path)
    assert loaded.config == model.config and not loaded.training
    assert all(p.requires_grad for p in loaded.parameters())  # the caller freezes
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and {"latent_shift", "latent_scale"} <= set(ours)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():
        assert torch.equal(loaded.encode_latent(x), model.encode_latent(x))
        assert torch.equal(loaded(x), model(x))
    again = Autoencoder.from_pretrained(model.save_pretrained(tmp_path / "alias"), device="cpu")
    assert torch.equal(again.latent_scale, model.latent_scale)


def test_is_autoencoder_dir(tmp_path: Path) -> None:
    save_autoencoder(Autoencoder(tiny()), tmp_path / "ae")
    unet = MultiStageUNet(UNetConfig.for_stages([(1, 16, 16)], size="tiny", base_channels=8))
    save_pretrained(unet, tmp_path / "unet")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert is_autoencoder_dir(tmp_path / "ae")
    assert not is_autoencoder_dir(tmp_path / "unet")
    assert not is_autoencoder_dir(tmp_path / "broken")
    assert not is_autoencoder_dir(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no 'autoencoder' entry"):
        load_autoencoder(tmp_path / "unet")


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    save_autoencoder(Autoencoder(tiny()), tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    document["autoencoder"]["latent_channels"] = 2
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches \[.*latent_s") as info:
        load_autoencoder(tmp_path)
    assert "encoder.conv_out.weight: file (6, 16, 3, 3) vs config (4, 16, 3, 3)" in str(info.value)

    save_autoencoder(Autoencoder(tiny()), tmp_path)
    document["autoencoder"].update(latent_channels=3, bottleneck="vq")
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(WeightsMismatchError, match=r"missing keys \['quantizer.codebook.weight'\]"):
        load_autoencoder(tmp_path)

    save_autoencoder(Autoencoder(tiny()), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["latent_shift"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match=r"missing keys \['latent_shift'\]") as info:
        load_autoencoder(tmp_path)
    assert "unexpected keys ['extra.weight']" in str(info.value)


def test_invalid_saved_config_is_a_validation_error(tmp_path: Path) -> None:
    save_autoencoder(Autoencoder(tiny()), tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    document["autoencoder"]["resolution"] = 18
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(pydantic.ValidationError, match="not divisible by factor = 4"):
        load_autoencoder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_autoencoder(tmp_path)
