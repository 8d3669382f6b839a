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
fdm-ds-64      RGB 64x64, four stages 64 -> 32 -> 16 -> 8 (K = 3), a GPU-sized UNet
ddpm-64        RGB 64x64, one stage, the same UNet (the baseline for fdm-ds-64)
fdm-ds-256     RGB 256x256, six stages 256 -> 128 -> ... -> 8 (K = 5), a GPU-sized UNet
ddpm-256       RGB 256x256, one stage, the same UNet (the baseline for fdm-ds-256)
=============  ==========================================================================

Budgets: the CPU presets keep one recipe for every ``--minutes`` (batch 32, the 1.19M-parameter
UNet below): in the sweep in BENCHMARKS.md no other change was confirmed better for fdm-ds, so 7.5
minutes (the default), 20 minutes and 2 hours differ only in ``--minutes``. The ddpm baseline
does better with ``process.parameterization=x0`` and ``process.weighting=min_snr`` (the README's
"Which recipe for which budget" has the FID each budget reached).

``fdm-vae`` and ``ldm`` read the autoencoder from ``runs/autoencoder`` (where
``fdm train-autoencoder`` writes it); ``fdm train --autoencoder DIR`` (or
``--set process.autoencoder=DIR``) names another. The run keeps a copy of it (docs/design.md
§10.5).

The four higher-resolution presets have no default data: ``--data`` names an RGB image folder
or IDX files. Their UNets, batches and learning rates are where a GPU user would start (one
80 GB GPU; ``--batch-size`` is the global batch, split over DDP ranks), not sizes for this CPU;
they train 300k / 500k steps unless ``--max-steps`` or ``--minutes`` says otherwise.

Expected cost per stage: forward FLOPs of one image at stage k over stage 0, the UNet entering
at level k (``torch.utils.flop_counter``, docs/design.md §6.1). Stages are equally long, so a
training step costs the mean of the ratios, against 1 for the ddpm baseline:

- ``fdm-ds-64`` (92.1M parameters, 60.6 GFLOPs at stage 0): 1, 0.620, 0.307, 0.100;
  mean 0.507, 1.97x less than ddpm-64.
- ``fdm-ds-256`` (124M parameters, 498 GFLOPs at stage 0): 1, 0.419, 0.234, 0.099, 0.053,
  0.012; mean 0.303, 3.30x less than ddpm-256.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_PRESET = "fdm-ds"

# Defaults shared by every preset, sized so that `fdm train` (no arguments) trains fdm-ds on the
# embedded Fashion-MNIST within ~8 minutes on 2 CPU cores and then samples recognisable garments.
# Batch 32 (not the loop's 64): the recipe sweep (BENCHMARKS.md, issue 24) found it the best
# change for both fdm-ds and ddpm, screened at 5 minutes and confirmed at 20 (FID@2000 32.6
# against 34.7 for fdm-ds, 42.9 against 50.7 for ddpm): at this budget more, smaller steps win.
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
    "train": {"minutes": 7.5, "batch_size": 32},
    "sample": {},
}

_DOWNSAMPLE = {"name": "downsample", "factor": 2}
_GAUSSIAN = {"name": "blur", "kind": "gaussian", "sigma": 1.0}
_BOX = {"name": "blur", "kind": "uniform", "size": 3}
DEFAULT_AUTOENCODER = "runs/autoencoder"
_AUTOENCODER = {"name": "autoencoder", "path": DEFAULT_AUTOENCODER}

NO_DATA = ""  # data.source of the presets that need --data


def _rgb(
    resolution: int, stages: int, model: dict[str, Any], lr: float, steps: int
) -> dict[str, Any]:
    """A higher-resolution RGB preset: `stages` - 1 halvings of `resolution` (none: ddpm)."""
    return {
        "process": {"resolution": resolution, "transforms": [_DOWNSAMPLE] * (stages - 1)},
        "model": {"num_res_blocks": 2, "num_heads": 4, "dropout": 0.1, **model},
        "data": {"source": NO_DATA, "channels": 3, "fit": "resize"},
        "optim": {"lr": lr, "ema_decay": 0.9999, "warmup_steps": 1000},
        "train": {
            "minutes": None,
            "max_steps": steps,
            "batch_size": 128 if resolution <= 64 else 32,
            "checkpoint_every": 5000,
        },
        "sample": {"num": 16},
    }


_UNET_64 = {"base_channels": 128, "channel_mult": [1, 2, 3, 4], "attention_levels": [2, 3]}
_UNET_256 = {"base_channels": 128, "channel_mult": [1, 1, 2, 2, 4, 4], "attention_levels": [4, 5]}

PRESETS: dict[str, dict[str, Any]] = {
    "fdm-ds": {"process": {"transforms": [_DOWNSAMPLE, _DOWNSAMPLE]}},
    "fdm-blur-g": {"process": {"transforms": [_GAUSSIAN, _GAUSSIAN]}},
    "fdm-blur-u": {"process": {"transforms": [_BOX, _BOX]}},
    "fdm-vae": {"process": {"transforms": [_AUTOENCODER]}},
    "ldm": {"process": {"transforms": [], "latent": _AUTOENCODER}},
    "ddpm": {"process": {"transforms": []}},
    "fdm-ds-64": _rgb(64, 4, _UNET_64, lr=2e-4, steps=300_000),
    "ddpm-64": _rgb(64, 1, _UNET_64, lr=2e-4, steps=300_000),
    "fdm-ds-256": _rgb(256, 6, _UNET_256, lr=1e-4, steps=500_000),
    "ddpm-256": _rgb(256, 1, _UNET_256, lr=1e-4, steps=500_000),
}

DESCRIPTIONS: dict[str, str] = {
    "fdm-ds": "f-DM-DS: 3 stages by 2x down-sampling (32 -> 16 -> 8)",
    "fdm-blur-g": "f-DM-Blur-G: 3 stages of Gaussian blur (sigma 1 each)",
    "fdm-blur-u": "f-DM-Blur-U: 3 stages of box blur (3x3 each)",
    "fdm-vae": "f-DM-VAE: 2 stages, pixels then an autoencoder's latent",
    "ldm": "LDM baseline: one stage in an autoencoder's latent, same UNet",
    "ddpm": "DDPM baseline: K = 0, one stage, same UNet",
    "fdm-ds-64": "f-DM-DS at 64x64 RGB: 4 stages (64 -> 8), 92M-parameter UNet; needs --data",
    "ddpm-64": "DDPM at 64x64 RGB, the fdm-ds-64 UNet; needs --data",
    "fdm-ds-256": "f-DM-DS at 256x256 RGB: 6 stages (256 -> 8), 124M-parameter UNet; --data",
    "ddpm-256": "DDPM at 256x256 RGB, the fdm-ds-256 UNet; needs --data",
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
