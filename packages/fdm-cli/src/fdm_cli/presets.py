"""Named starting points for `fdm train --preset P` (the paper's models and its DDPM baseline).

Every preset is a partial `TrainConfig` (a nested dict) laid over `BASE`; a config file and
``--set key=value`` overrides then go on top. The paper's ablations are switches, not presets:
``--set process.gamma=0`` (no resolution-aware SNR rescaling) and
``--set process.interpolation=false`` (no interpolation inside a stage).

=============  ==========================================================================
preset         process
=============  ==========================================================================
fdm-ds         three stages 32 -> 16 -> 8 by 2x mean-pool down-sampling (the default)
fdm-blur-g     three stages of increasing Gaussian blur (sigma 1 per transform)
fdm-blur-u     three stages of increasing box blur (3x3 per transform)
fdm-vae        f-DM-VAE: stage 0 in pixels, stage 1 the latent of a pretrained autoencoder
ldm            latent diffusion (the paper's LDM baseline): one stage, all in that latent
ddpm           K = 0: one stage, a plain DDPM/DDIM with the same UNet
=============  ==========================================================================

``fdm-vae`` and ``ldm`` read the autoencoder from ``runs/autoencoder`` (where
``fdm train-autoencoder`` writes it); ``fdm train --autoencoder DIR`` (or
``--set process.autoencoder=DIR``) names another. The run keeps a copy of it (docs/design.md
§10.5).
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_PRESET = "fdm-ds"

# Defaults shared by every preset, sized so that `fdm train` (no arguments) trains fdm-ds on the
# embedded Fashion-MNIST within ~8 minutes on 2 CPU cores and then samples recognisable garments.
BASE: dict[str, Any] = {
    "process": {
        "resolution": 32,
        "noise_schedule": {"name": "cosine"},
        "stage_schedule": {"name": "equal"},
        "gamma": 1.0,
        "interpolation": True,
        "parameterization": "v",
    },
    "model": {
        "base_channels": 32,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attention_levels": [2],
        "num_heads": 4,
        "dropout": 0.0,
    },
    "data": {"source": "fashion-mnist"},
    "optim": {},
    "train": {"minutes": 7.5},
    "sample": {},
}

_DOWNSAMPLE = {"name": "downsample", "factor": 2}
_GAUSSIAN = {"name": "blur", "kind": "gaussian", "sigma": 1.0}
_BOX = {"name": "blur", "kind": "uniform", "size": 3}
DEFAULT_AUTOENCODER = "runs/autoencoder"
_AUTOENCODER = {"name": "autoencoder", "path": DEFAULT_AUTOENCODER}

PRESETS: dict[str, dict[str, Any]] = {
    "fdm-ds": {"process": {"transforms": [_DOWNSAMPLE, _DOWNSAMPLE]}},
    "fdm-blur-g": {"process": {"transforms": [_GAUSSIAN, _GAUSSIAN]}},
    "fdm-blur-u": {"process": {"transforms": [_BOX, _BOX]}},
    "fdm-vae": {"process": {"transforms": [_AUTOENCODER]}},
    "ldm": {"process": {"transforms": [], "latent": _AUTOENCODER}},
    "ddpm": {"process": {"transforms": []}},
}

DESCRIPTIONS: dict[str, str] = {
    "fdm-ds": "f-DM-DS: 3 stages by 2x down-sampling (32 -> 16 -> 8)",
    "fdm-blur-g": "f-DM-Blur-G: 3 stages of Gaussian blur (sigma 1 each)",
    "fdm-blur-u": "f-DM-Blur-U: 3 stages of box blur (3x3 each)",
    "fdm-vae": "f-DM-VAE: 2 stages, pixels then an autoencoder's latent",
    "ldm": "LDM baseline: one stage in an autoencoder's latent, same UNet",
    "ddpm": "DDPM baseline: K = 0, one stage, same UNet",
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_dict(name: str) -> dict[str, Any]:
    """BASE with the preset laid over it; KeyError (with the allowed names) for an unknown one."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return deep_merge(deep_merge(BASE, PRESETS[name]), {"preset": name})
