"""FID, KID, precision and recall from feature sets (docs/design.md §13 (E35-E38)), numpy
float64; the feature extraction and the reference sets are in `fdm_cli.evaluation.fid`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdm_cli.errors import UserError

KID_GRAM_MAX = 4096  # up to this many features per set, KID reuses the whole Gram matrices


@dataclass
class FeatureStats:
    """Mean and covariance (float64) of a feature set, and the features (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] < 2:
            raise UserError(f"need at least 2 feature vectors (N, D), got {features.shape}")
        f64 = features.astype(np.float64)
        return cls(f64.mean(axis=0), np.cov(f64, rowvar=False), features, features.shape[0])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues,
    rounding noise, are clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) = sum of sqrt(eigenvalues of sqrt(S1) S2 sqrt(S1)) (E36)."""
    r = _psd_sqrt(np.asarray(s1, dtype=np.float64))
    m = r @ np.asarray(s2, dtype=np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID (E35): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)), at least 0."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise UserError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu.astype(np.float64) - b.mu.astype(np.float64)
    value = (
        float(diff @ diff)
        + float(np.trace(a.sigma))
        + float(np.trace(b.sigma))
        - 2.0 * trace_sqrt_product(a.sigma, b.sigma)
    )
    return max(0.0, value)


def kernel_inception_distance(
    fa: np.ndarray, fb: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (E37): (mean, sample std over subsets) of the unbiased MMD^2 with the kernel
    ``(x.y / d + 1)^3`` on `subsets` pairs of random subsets (without replacement, seeded) of
    size ``min(subset_size, len(fa), len(fb))``. The std is 0 for a single subset."""
    fa, fb = np.asarray(fa, dtype=np.float64), np.asarray(fb, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise UserError(f"feature sets must be (N, D) with equal D: {fa.shape}, {fb.shape}")
    m = min(subset_size, len(fa), len(fb))
    if m < 2 or subsets < 1:
        raise UserError(f"KID needs subsets of at least 2 features and >= 1 subset (got {m})")
    d = fa.shape[1]
    rng = np.random.default_rng(seed)
    full = max(len(fa), len(fb)) <= KID_GRAM_MAX  # the Gram matrices fit: compute them once
    if full:
        kaa, kbb, kab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((fa, fa), (fb, fb), (fa, fb)))
    values = np.empty(subsets)
    for i in range(subsets):
        ia = rng.choice(len(fa), m, replace=False)
        ib = rng.choice(len(fb), m, replace=False)
        if full:
            xx, yy, xy = kaa[np.ix_(ia, ia)], kbb[np.ix_(ib, ib)], kab[np.ix_(ia, ib)]
        else:
            x, y = fa[ia], fb[ib]
            xx, yy, xy = ((p @ q.T / d + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = xx.sum() - np.trace(xx) + yy.sum() - np.trace(yy)
        values[i] = off / (m * (m - 1)) - 2.0 * xy.sum() / (m * m)
    std = float(values.std(ddof=1)) if subsets > 1 else 0.0
    return float(values.mean()), std


def _pairwise_distances(a: np.ndarray, b: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64, `rows` rows of `a` at a time."""
    b_sq = (b * b).sum(axis=1)
    out = np.empty((len(a), len(b)))
    for i in range(0, len(a), rows):
        x = a[i : i + rows]
        sq = (x * x).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * x @ b.T
        out[i : i + rows] = np.sqrt(np.clip(sq, 0.0, None))
    return out


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """The fraction of `points` inside at least one ball (centre, radius)."""
    return float((_pairwise_distances(points, centres) <= radii[None, :]).any(axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (E38) of `fake` against `real` with k-NN balls."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise UserError(f"feature sets must be (N, D) with equal D: {real.shape}, {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise UserError(f"precision/recall with k = {k} need more than {k} features per set")
    # the (k + 1)-th smallest distance in a row: the point itself is at distance 0
    radius = [np.partition(_pairwise_distances(x, x), k, axis=1)[:, k] for x in (real, fake)]
    return _coverage(fake, real, radius[0]), _coverage(real, fake, radius[1])
