"""The FID reference-statistics cache files (`fdm_cli.evaluation.fid.reference_stats`), checked
on read.

A cache file is safetensors (``mu``, ``sigma``, ``features``) with its key as JSON metadata,
written atomically by `fdm_core.save_tensors`, which stores a SHA-256 digest of the whole file
in it. The cache folder is user-editable and may be shared, so a file is used only when

- its digest matches (a damaged byte, or an edit with a tool that does not recompute fdm's
  digest, fails it),
- its key is the one asked for (the file name is a digest of the key), and
- ``mu`` and ``sigma`` are those of ``features`` (the mean exactly, the covariance checked
  along a few random directions): an edit that recomputed the digest but changed the
  statistics, which every score depends on, fails this;

otherwise the statistics are computed again and the file replaced, with one warning saying why.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fdm_cli.evaluation.metrics import FeatureStats
from fdm_core import CheckpointError, load_tensors, save_tensors

PROBES = 4  # random directions the covariance is checked along
TOLERANCE = 1e-6  # relative: float64 rounding is ~1e-12, an edit that matters is far above
log = logging.getLogger(__name__)


def _consistent(mu: np.ndarray, sigma: np.ndarray, features: np.ndarray) -> bool:
    """Whether `mu` and `sigma` are the mean and covariance of `features` (float64)."""
    if features.ndim != 2 or features.shape[0] < 2:
        return False
    n, d = features.shape
    if mu.shape != (d,) or sigma.shape != (d, d):
        return False
    f64 = features.astype(np.float64)
    mean = f64.mean(axis=0)
    if not np.allclose(mu, mean, rtol=TOLERANCE, atol=TOLERANCE * (np.abs(mean).max() + 1e-30)):
        return False
    probes = np.random.default_rng().standard_normal((d, PROBES))  # unpredictable directions
    centred = f64 - mean
    expected = centred.T @ (centred @ probes) / (n - 1)
    scale = np.abs(expected).max() + 1e-30
    return bool(np.abs(sigma @ probes - expected).max() <= TOLERANCE * scale)


def read_stats(path: Path, key: dict) -> FeatureStats | None:
    """The statistics cached in `path` for `key`, or None (with one warning when the file
    exists but is damaged, edited, or of another key) so that they are computed again."""
    if not path.is_file():
        return None
    try:
        tensors, saved = load_tensors(path)
    except CheckpointError as exc:
        log.warning("FID reference statistics %s; computing them again", exc)
        return None
    if saved != key or not {"mu", "sigma", "features"} <= set(tensors):
        log.warning(
            "FID reference statistics %s were not written for these images and settings "
            "(edited); computing them again",
            path,
        )
        return None
    mu, sigma = tensors["mu"].double().numpy(), tensors["sigma"].double().numpy()
    features = tensors["features"].numpy()
    if not _consistent(mu, sigma, features):
        log.warning(
            "FID reference statistics %s: mu or sigma do not match the features stored with "
            "them (edited); computing them again",
            path,
        )
        return None
    return FeatureStats(mu, sigma, features, len(features))


def write_stats(path: Path, stats: FeatureStats, key: dict) -> None:
    """Cache `stats` for `key` in `path` (atomically); a read-only cache is no error."""
    tensors = {
        "mu": torch.from_numpy(stats.mu),
        "sigma": torch.from_numpy(stats.sigma),
        "features": torch.from_numpy(np.ascontiguousarray(stats.features)),
    }
    try:
        save_tensors(path, tensors, config=key)
    except OSError:  # a read-only cache is no reason to fail the evaluation
        pass
