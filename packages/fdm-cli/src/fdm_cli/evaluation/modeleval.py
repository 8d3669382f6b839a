"""The pieces of a model's evaluation that `fdm eval` (`fdm_cli.evaluation.evaluate`) and the
evaluation during training (`fdm_cli.training.evaluation`) share, so both score a model the
same way:

1. `model_reference`: the crop rule (`model_crop`, the module docstring of
   `fdm_cli.evaluation.evaluate`) and the statistics of the first N reference images, loaded like
   the model's training data, from the cache of `fdm_cli.evaluation.fid.reference_stats`;
2. `sample_images`: samples ``indices`` of the model (sample i uses noise seed ``seed + i``, so
   the images depend neither on the batch size nor on how the indices are split over ranks);
3. `score_samples`: their features (same network, same crop) against the reference: `scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fdm_cli.config.files import is_command_or_url
from fdm_cli.data import Fit
from fdm_cli.data.dataset import load_dataset, locate_source
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_cli.evaluation.metrics import precision_recall
from fdm_core import SamplerConfig

if TYPE_CHECKING:
    from fdm_cli.generation.sampling import LoadedModel
    from fdm_cli.runtime.threads import ThreadTuner


def local_source(source: object) -> str | None:
    """`source` when it names local data, else None (not a string, a command or a URL)."""
    return source if isinstance(source, str) and not is_command_or_url(source) else None


def model_crop(
    source: str | None, ref: str, ref_split: str, resolution: int, fit: Fit
) -> int | None:
    """The crop of the model's training data `source` (when it was zero-padded to
    `resolution`), else the reference's; None: no crop."""
    candidates = [] if source is None else [lambda: str(locate_source(source)[0])]
    candidates.append(lambda: fid.resolve_source(ref, ref_split))
    for resolve in candidates:
        try:
            return fid.padded_crop(resolve(), resolution, fit)
        except UserError:
            continue
    return None


@dataclass(frozen=True)
class ModelReference:
    """The real side of a model's evaluation: the first `num` images of `ref` (`ref_split`),
    their feature statistics and the crop both sets go through."""

    ref: str
    ref_split: str
    num: int
    crop: int | None
    stats: fid.FeatureStats


def reference_size(ref: str, ref_split: str, resolution: int, channels: int, fit: Fit) -> int:
    """How many images `ref` (`ref_split`) holds, loaded like training data (UserError when it
    cannot be read)."""
    return len(load_dataset(fid.resolve_source(ref, ref_split), resolution, channels, fit))


def model_reference(
    network: torch.nn.Module,
    ref: str,
    ref_split: str,
    num: int,
    resolution: int,
    channels: int,
    source: str | None,
    fit: Fit,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> ModelReference:
    """The reference of a model trained on `source` (None: unknown) with `fit` at `resolution`
    and `channels`: crop (`model_crop`) and statistics (cached, `fid.reference_stats`)."""
    crop = model_crop(source, ref, ref_split, resolution, fit)
    stats = fid.reference_stats(
        ref,
        num,
        resolution,
        ref_split,
        network,
        cache_dir,
        crop,
        channels=channels,
        fit=fit,
        batch_size=batch_size,
        progress=progress,
    )
    return ModelReference(ref, ref_split, num, crop, stats)


def sample_images(
    loaded: LoadedModel,
    indices: range,
    seed: int,
    config: SamplerConfig,
    batch_size: int,
    device: str | torch.device,
    progress: bool = False,
    threads: ThreadTuner | None = None,
) -> torch.Tensor:
    """Samples number `indices` of `loaded` (noise seed ``seed + i``), ``(N, C, H, W)`` on the
    CPU, `batch_size` at a time, under inference mode. Touches no global random state: the
    noise is `fdm_core.StageNoise`'s (counter-based) and the model is in eval mode."""
    from fdm_cli.generation.sampling import generate

    chunks = []
    with fid.progress_bar("sampling", len(indices), progress) as advance, torch.inference_mode():
        for first in range(indices.start, indices.stop, batch_size):
            part = range(first, min(indices.stop, first + batch_size))
            chunks.append(
                generate(loaded, part, seed, config, None, batch_size, device, threads=threads).x
            )
            advance(len(part))
    if not chunks:
        return torch.empty(0, *loaded.process.stage_shapes[0])
    return torch.cat(chunks)


def score_samples(
    images: torch.Tensor,
    reference: ModelReference,
    network: torch.nn.Module,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """FID, KID, precision and recall of `images` against `reference` (`scores`), their
    features computed by `network` with the reference's crop."""
    feats = fid.fid_features(images, network, batch_size, reference.crop, progress)
    return scores(reference.stats, fid.FeatureStats.from_features(feats))


def scores(real: fid.FeatureStats, fake: fid.FeatureStats) -> dict[str, float]:
    """FID, KID (mean and std over subsets), precision and recall of `fake` against `real`
    (docs/design.md §13 (E35-E38))."""
    kid, kid_std = fid.kernel_inception_distance(fake.features, real.features)
    precision, recall = precision_recall(real.features, fake.features)
    return {
        "fid": fid.frechet_distance(fake, real),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
