"""The recipes tests/fdm_transforms/test_fuzz_transforms.py fuzzes fdm's own transforms with:
valid and invalid parameters and shapes of each built-in and example-plugin transform (a
`fdm_core.testing.FuzzRecipe` each), and the folders the autoencoder recipe builds from."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

from fdm_core import Shape, SignalTransform
from fdm_core.testing import FuzzRecipe, shape_strategy
from fdm_models import Autoencoder, AutoencoderConfig, save_autoencoder

Bad = list[tuple[Shape, tuple[str, ...]]]  # an invalid shape and what its error must name


@dataclass(frozen=True)
class Assets:
    """Folders the recipes build transforms from (module fixture `assets`)."""

    autoencoders: tuple[str, ...]  # tiny random autoencoders
    missing: str  # a path that does not exist
    empty: str  # a folder without config.json
    not_autoencoder: str  # config.json of another model
    bad_json: str  # config.json that is not JSON


def make_assets(root: Path) -> Assets:
    """Tiny random autoencoders (fdm's, and diffusers' when installed) and broken folders
    under `root`."""
    torch.manual_seed(0)
    folders = []
    for i, config in enumerate(
        [
            AutoencoderConfig(resolution=8, factor=2, latent_channels=2, base_channels=8),
            AutoencoderConfig(
                in_channels=3,
                resolution=16,
                factor=4,
                latent_channels=3,
                base_channels=8,
                bottleneck="vq",
                codebook_size=16,
            ),
        ]
    ):
        folders.append(str(save_autoencoder(Autoencoder(config), root / f"fdm-{i}")))
    if importlib.util.find_spec("diffusers") is not None:
        import diffusers

        tiny = diffusers.AutoencoderTiny(
            in_channels=2,
            out_channels=2,
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=2,
        )
        tiny.save_pretrained(root / "tiny")
        folders.append(str(root / "tiny"))
    for name, text in (("other", json.dumps({"_class_name": "UNet"})), ("bad-json", "{")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "empty").mkdir()
    return Assets(
        tuple(folders),
        str(root / "missing"),
        str(root / "empty"),
        str(root / "other"),
        str(root / "bad-json"),
    )


def _unknown_key(name: str) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.just(({name: 2}, name))


def _downsample_bad_params(assets: Assets) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.one_of(
        st.integers(-(10**6), 1),
        st.floats(-100, 100).filter(lambda v: not v.is_integer()),
        st.sampled_from([math.nan, math.inf, "two", None]),
    ).map(lambda v: ({"factor": v}, "factor")) | _unknown_key("sigma")


def _downsample_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    factor = str(transform.params.factor)
    return [((c, h + 1, w), (factor, f"{h + 1}x{w}")), ((c, h, w + 1), (factor, f"{h}x{w + 1}"))]


def _blur_params(assets: Assets) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.floats(0.0, 4.0).map(lambda s: {"sigma": s}),
        st.floats(0.0, 4.0).map(lambda s: {"kind": "gaussian", "sigma": s}),
        st.integers(0, 4).map(lambda n: {"kind": "uniform", "size": 2 * n + 1}),
    )


def _blur_bad_params(assets: Assets) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    sigmas = st.floats(max_value=-1e-300) | st.sampled_from([math.nan, math.inf, 1e308, "wide"])
    uniform = st.integers(-5, 0) | st.integers(1, 10).map(lambda n: 2 * n)
    return st.one_of(
        sigmas.map(lambda s: ({"sigma": s}, "sigma")),
        uniform.map(lambda n: ({"kind": "uniform", "size": n}, "size")),
        st.just(({"kind": "median"}, "kind")),
        _unknown_key("factor"),
    )


def _blur_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    r = transform.params.radius
    if r == 0:
        return []
    return [((c, r, w), (f"radius {r}", f"{r}x{w}")), ((c, h, r), (f"radius {r}", f"{h}x{r}"))]


def _autoencoder_shapes(transform: SignalTransform) -> st.SearchStrategy[Shape]:
    """Multiples of the factor; an fdm autoencoder (factor known) needs a 2x2 latent."""
    net, size = transform.network, 64
    factor = size // transform.out_shape((net.in_channels, size, size))[1]
    minimum = factor if net.factor is None else 2 * factor
    return shape_strategy(net.in_channels, multiple=factor, minimum=minimum)


def _autoencoder_bad_params(assets: Assets) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.sampled_from(
        [
            ({"path": assets.missing}, assets.missing),
            ({"path": assets.empty}, "config.json"),
            ({"path": assets.not_autoencoder}, "is not an autoencoder"),
            ({"path": assets.bad_json}, "cannot be read as JSON"),
            ({}, "path"),
            ({"path": assets.autoencoders[0], "factor": 2}, "factor"),
        ]
    )


def _autoencoder_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    bad = [
        ((c + 1, h, w), (f"{c}-channel", f"got {c + 1}")),
        ((c, h + 1, w), (f"{h + 1}x{w}",)),
        ((c, h, w + 1), (f"{h}x{w + 1}",)),
    ]
    if (factor := transform.network.factor) is not None:  # a 1x1 latent
        bad.append(((c, factor, w), (f"at least {2 * factor}x{2 * factor}", f"{factor}x{w}")))
    return bad


def _autoencoder_bad_latents(transform: SignalTransform, out: Shape) -> Bad:
    c, h, w = out
    bad = [((c + 1, h, w), (f"{c}-channel", f"got {c + 1}"))]
    if transform.network.factor is not None:
        bad.append(((c, h, 1), ("at least 2x2", f"{h}x1")))
    return bad


def _haar_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    block = 2**transform.params.levels
    needle = f"multiples of 2**levels = {block}"
    return [((c, h + 1, w), (needle, f"{h + 1}x{w}")), ((c, h, w + 1), (needle, f"{h}x{w + 1}"))]


def _grayscale_bad_shapes(transform: SignalTransform, shape: Shape) -> Bad:
    c, h, w = shape
    return [((c + 1, h, w), (f"takes {c} channels", str((c + 1, h, w))))]


def _bad_levels() -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.integers(-3, 0).map(lambda n: ({"levels": n}, "levels")) | _unknown_key("level")


# Each transform's recipe, made from the fixture `assets`. haar and grayscale draw the shapes
# their out_shape takes (the fuzzer's default); the built-ins say which shapes are valid.
RECIPES: dict[str, Callable[[Assets], FuzzRecipe]] = {
    "identity": lambda assets: FuzzRecipe(
        shapes=lambda transform: shape_strategy(),
        bad_params=_unknown_key("factor") | _unknown_key("sigma"),
    ),
    "downsample": lambda assets: FuzzRecipe(
        params=st.integers(2, 8).map(lambda f: {"factor": f}),
        shapes=lambda transform: shape_strategy(multiple=transform.params.factor),
        bad_params=_downsample_bad_params(assets),
        bad_shapes=_downsample_bad_shapes,
    ),
    "blur": lambda assets: FuzzRecipe(
        params=_blur_params(assets),
        shapes=lambda transform: shape_strategy(minimum=transform.params.radius + 1),
        bad_params=_blur_bad_params(assets),
        bad_shapes=_blur_bad_shapes,
    ),
    "autoencoder": lambda assets: FuzzRecipe(
        params=st.sampled_from(assets.autoencoders).map(lambda p: {"path": p}),
        shapes=_autoencoder_shapes,
        bad_params=_autoencoder_bad_params(assets),
        bad_shapes=_autoencoder_bad_shapes,
        bad_latents=_autoencoder_bad_latents,
    ),
    "haar": lambda assets: FuzzRecipe(
        params=st.integers(1, 3).map(lambda n: {"levels": n}),
        bad_params=_bad_levels(),
        bad_shapes=_haar_bad_shapes,
    ),
    "grayscale": lambda assets: FuzzRecipe(
        params=st.integers(2, 4).map(lambda c: {"channels": c}),
        bad_params=st.integers(-1, 1).map(lambda c: ({"channels": c}, "channels")),
        bad_shapes=_grayscale_bad_shapes,
    ),
}
