"""`fdm eval`: FID, KID, precision and recall of a model's samples against real images, or of two
real image sets.

Exact commands::

    fdm eval runs/fdm-ds --num 2000 --steps 100 --out metrics.json     # vs embedded t10k
    fdm eval runs/mine --num 5000 --ref /usr/share/datasets/fashion-mnist --ref-split train
    fdm eval --real fashion-mnist --real fashion-mnist --num 2000      # the FID floor at N

A model is sampled like ``fdm sample`` (sample i uses noise seed ``seed + i``, so the images do
not depend on the batch size); its samples and the first N reference images go through the same
preprocessing (`fdm_cli.evaluation.fid`). The reference images are loaded the way the model's
training data was (resolution, channels, fit); if that data was zero-padded (28 -> 32) both sets are
centre-cropped back to the original size before scoring. The crop is read from the model's
training data source (the run's ``config.yaml``, a checkpoint's config or a MODEL_DIR's
``config.json``); when that source is not available here, from the reference's geometry. These
steps (reference, sampling, scores) are `fdm_cli.evaluation.modeleval`'s, which the evaluation
during training (``train.eval_every``) runs too, so both score a model the same way.

``--real A --real B``: two real sets, no model, each brought to 32 x 32 like training data and
both cropped to the smaller padded size of the two. When A and B hold the same images (the same
source twice, or the embedded Fashion-MNIST and the same t10k file), A is images 0..N-1 and B
images N..2N-1, so the sets are disjoint; otherwise both are images 0..N-1 of their source.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.config.files import load_config
from fdm_cli.data import Fit
from fdm_cli.data.dataset import EMBEDDED, load_dataset
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_cli.evaluation.modeleval import (
    local_source,
    model_reference,
    sample_images,
    score_samples,
    scores,
)
from fdm_cli.runtime.threads import configure_threads
from fdm_core import SamplerConfig, atomic_write, steps_per_stage

DEFAULT_REAL_NUM = 2000
MIN_NUM = 4  # precision/recall's k = 3 nearest neighbours need k + 1 images (FID needs 2)
REAL_RESOLUTION = 32


def _fit(value: object) -> Fit:
    """A saved ``data.fit`` when it is one of the fits, else "auto" (a folder's text is not
    trusted)."""
    return value if value in ("auto", "pad", "resize") else "auto"  # type: ignore[return-value]


def training_data(model_path: Path) -> tuple[str | None, Fit]:
    """(data source, fit) the model at `model_path` was trained on; source None if unknown or
    a command or URL (a run or model folder never chooses what eval runs or downloads). A config
    file over the limits of `fdm_cli.config.files` is a UserError naming it."""
    config: Any = {}
    try:
        if model_path.is_dir() and (model_path / "config.json").is_file():  # MODEL_DIR
            document = load_config(model_path / "config.json")
            fdm = document.get("fdm") if isinstance(document, dict) else None
            fdm = fdm if isinstance(fdm, dict) else {}
            return local_source(fdm.get("data")), _fit(fdm.get("fit"))
        run_dir = model_path
        if model_path.is_file():
            parent = model_path.parent
            run_dir = parent.parent if parent.name == ckpt.CHECKPOINTS else parent
        if (run_dir / ckpt.CONFIG_FILE).is_file():
            config = load_config(run_dir / ckpt.CONFIG_FILE) or {}
        elif model_path.is_file():
            from safetensors import safe_open

            from fdm_core.checkpoint import CONFIG_KEY

            with safe_open(str(model_path), framework="pt") as handle:
                config = json.loads((handle.metadata() or {}).get(CONFIG_KEY, "{}"))
    except (OSError, ValueError, yaml.YAMLError):
        return None, "auto"
    data = config.get("data") if isinstance(config, dict) else None
    data = data if isinstance(data, dict) else {}
    return local_source(data.get("source", EMBEDDED if config else None)), _fit(data.get("fit"))


def evaluate_model(
    model_path: str | Path,
    num: int,
    steps: int = 100,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    ref: str = "fashion-mnist",
    ref_split: str = "test",
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    ema: bool = True,
    network: torch.nn.Module | None = None,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Sample `num` images from the model and score them against the first `num` images of
    `ref` (`ref_split`); returns the metrics.json content. `threads` pins the CPU thread count
    (default: adapted to the load while sampling, `fdm_cli.runtime.threads`)."""
    from fdm_cli.generation.sampling import load_model

    check_num(num)
    _check_positive(steps=steps, batch_size=batch_size)
    config = SamplerConfig(steps=steps, eta=eta)
    network = fid.load_fid_network() if network is None else network  # fail before sampling
    model_path = Path(model_path)
    loaded = load_model(model_path, ema=ema, device=device)
    tuner = configure_threads(threads, tune=torch.device(device).type == "cpu")
    resolution, channels = loaded.process.config.resolution, loaded.process.config.channels
    source, fit = training_data(model_path)
    network.to(device)
    reference = model_reference(
        network, ref, ref_split, num, resolution, channels, source, fit, cache_dir,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    x = sample_images(loaded, range(num), seed, config, batch_size, device, progress, tuner)
    sample_s = time.perf_counter() - t0
    per_stage = steps_per_stage(loaded.process, config)  # >= 1 each: may exceed --steps (E28)
    return {
        **score_samples(x, reference, network, batch_size, progress),
        "num": num,
        "steps": sum(per_stage),  # the steps that ran, not only the ones asked for
        "steps_requested": steps,
        "steps_per_stage": per_stage,
        "eta": eta,
        "seed": seed,
        "ref": ref,
        "ref_split": ref_split,
        "model": str(model_path),
        "model_description": loaded.description,
        "sample_s": sample_s,
        "sample_s_per_image": sample_s / num,
        "crop": reference.crop,
        "resolution": resolution,
        "network_sha256": fid.network_digest(network),
    }


def evaluate_images(
    images: torch.Tensor,
    ref: str = "fashion-mnist",
    ref_split: str = "test",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    network: torch.nn.Module | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score images ``(N, C, H, W)`` in [-1, 1] (made anywhere: another implementation's
    samples) against the first N images of `ref` (`ref_split`), loaded at their resolution
    and channels; both sets are centre-cropped back when the reference was zero-padded to that
    resolution. Returns the metrics of `evaluate_model` that do not depend on a model."""
    if images.ndim != 4:
        raise UserError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    num = len(images)
    check_num(num)
    _check_positive(batch_size=batch_size)
    network = fid.load_fid_network() if network is None else network
    network.to(device)
    resolution, channels = int(images.shape[-1]), int(images.shape[1])
    reference = model_reference(
        network, ref, ref_split, num, resolution, channels, None, "auto", cache_dir, batch_size,
        progress,
    )  # fmt: skip
    crop = reference.crop
    feats = fid.fid_features(images, network, batch_size, crop, progress)
    return {
        **scores(reference.stats, fid.FeatureStats.from_features(feats)),
        "num": num,
        "ref": ref,
        "ref_split": ref_split,
        "crop": crop,
        "resolution": resolution,
        "network_sha256": fid.network_digest(network),
    }


def evaluate_real(
    a: str,
    b: str,
    num: int = DEFAULT_REAL_NUM,
    split: str = "test",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    network: torch.nn.Module | None = None,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """FID and KID between `num` images of two real sources (disjoint when they hold the same
    images, see the module docstring): the floor a model's score at that `num` can reach.
    `threads` pins the CPU thread count (default: torch's)."""
    check_num(num)
    _check_positive(batch_size=batch_size)
    configure_threads(threads, tune=False)  # feature extraction only: nothing to adapt
    network = fid.load_fid_network() if network is None else network
    network.to(device)
    res = REAL_RESOLUTION
    resolved = [fid.resolve_source(s, split) for s in (a, b)]
    crop = min((c for c in (fid.padded_crop(r, res) for r in resolved) if c), default=None)
    full = [load_dataset(r, res).images for r in resolved]
    same = resolved[0] == resolved[1] or (
        full[0].shape == full[1].shape and torch.equal(full[0], full[1])
    )
    offsets = (0, num) if same else (0, 0)
    channels = max(x.shape[1] for x in full)
    for source, images, offset in zip((a, b), full, offsets, strict=True):
        if offset + num > len(images):  # before any features are computed
            raise UserError(
                f"{source} ({split}) holds {len(images)} images; images {offset}.."
                f"{offset + num - 1} were asked for (lower --num)"
            )
    del full
    stats = [
        fid.reference_stats(
            s,
            num,
            res,
            split,
            network,
            cache_dir,
            crop,
            channels=channels,
            offset=o,
            batch_size=batch_size,
            progress=progress,
        )
        for s, o in zip((a, b), offsets, strict=True)
    ]
    return {
        **scores(*stats),
        "num": num,
        "real": [a, b],
        "ranges": [[o, o + num] for o in offsets],
        "ref_split": split,
        "crop": crop,
        "resolution": res,
        "network_sha256": fid.network_digest(network),
    }


def check_num(num: int) -> None:
    if num < MIN_NUM:
        raise UserError(
            f"--num {num}: must be at least {MIN_NUM} (precision and recall compare each image "
            f"with its 3 nearest neighbours); FID needs thousands for a stable score"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be positive")


def write_metrics(metrics: dict[str, Any], out: Path) -> None:
    """metrics.json, written atomically."""
    with atomic_write(out, "w") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")


def steps_text(metrics: dict[str, Any]) -> str:
    """The sampler steps that ran, and when --steps asked for fewer (under one per stage)."""
    asked = metrics.get("steps_requested", metrics["steps"])
    raised = f" (--steps {asked} is under one per stage)" if asked != metrics["steps"] else ""
    return f"{metrics['steps']} steps{raised}"


def summary(metrics: dict[str, Any]) -> str:
    """One line: FID, KID +- std, precision, recall, N and what was compared."""
    what = (
        f"{metrics['real'][0]} {metrics['ranges'][0]} vs {metrics['real'][1]} "
        f"{metrics['ranges'][1]}"
        if "real" in metrics
        else f"{metrics['model_description']} ({steps_text(metrics)}, eta {metrics['eta']:g}, "
        f"{metrics['sample_s_per_image']:.3f} s/image) vs {metrics['ref']} {metrics['ref_split']}"
    )
    return (
        f"FID {metrics['fid']:.3f}  KID {metrics['kid']:.5f} ± {metrics['kid_std']:.5f}  "
        f"precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}  "
        f"N={metrics['num']}: {what}"
    )
