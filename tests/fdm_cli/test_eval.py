"""`fdm eval` and `fdm_cli.evaluation.fid`: FID/KID formulas, preprocessing, the reference cache,
the CLI.

A tiny stand-in TorchScript network (pooled pixels through a fixed random projection) replaces
the 87 MB Inception network everywhere: it is saved to a temporary file and named by
``FDM_FID_NETWORK``, exactly as a real network file would be.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fdm_cli.data.dataset import EMBEDDED, load_dataset
from fdm_cli.data.images import fit_to_resolution
from fdm_cli.evaluation import fid, metrics


class Counting(torch.nn.Module):
    """Wraps a network and counts the images it sees."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.net(x)


@pytest.fixture
def env(network_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in network via FDM_FID_NETWORK, a fresh cache and a temporary working folder
    (for a default metrics.json); returns the cache dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(fid.NETWORK_ENV, str(network_file))
    monkeypatch.setenv(fid.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "fid"


def _stats(mu: np.ndarray, sigma: np.ndarray) -> fid.FeatureStats:
    return fid.FeatureStats(np.asarray(mu, float), np.asarray(sigma, float), None, 0)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------
# FID and KID formulas


def test_frechet_distance_of_commuting_gaussians_is_closed_form() -> None:
    """Same eigenvectors: Tr sqrt(S1 S2) = sum sqrt(a_i b_i), so FID = |dmu|^2 +
    sum (sqrt(a_i) - sqrt(b_i))^2 (diagonal, then rotated by one orthogonal Q)."""
    rng = np.random.default_rng(1)
    d = 6
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    for s1, s2 in ((np.diag(a), np.diag(b)), (q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T)):
        got = fid.frechet_distance(_stats(mu1, s1), _stats(mu2, s2))
        assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_non_commuting_gaussians() -> None:
    """2x2 by hand: Tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2 (its eigenvalues are
    real and positive); 5x5 against torch's general eigenvalues of S1 S2."""
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    assert fid.frechet_distance(_stats(mu1, s1), _stats(mu2, s2)) == pytest.approx(expected, 1e-6)

    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 5), _random_spd(rng, 5)
    eig = torch.linalg.eigvals(torch.from_numpy(s1 @ s2))
    assert float(eig.imag.abs().max()) < 1e-9
    expected = float(np.trace(s1) + np.trace(s2) - 2 * eig.real.sqrt().sum().item())
    zero = np.zeros(5)
    assert fid.frechet_distance(_stats(zero, s1), _stats(zero, s2)) == pytest.approx(expected, 1e-6)


def test_identical_sets_give_zero_fid_and_kid() -> None:
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 16)).astype(np.float32)
    stats = fid.FeatureStats.from_features(feats)
    assert stats.n == 300 and stats.mu.dtype == np.float64 and stats.sigma.shape == (16, 16)
    assert fid.frechet_distance(stats, stats) < 1e-9 * np.trace(stats.sigma)
    # Singular covariances (fewer samples than features), as with 2048 Inception features:
    few = fid.FeatureStats.from_features(rng.normal(size=(10, 40)))
    assert fid.frechet_distance(few, few) < 1e-9 * np.trace(few.sigma)
    kid, kid_std = fid.kernel_inception_distance(feats, feats, subsets=20, subset_size=100)
    shifted, _ = fid.kernel_inception_distance(feats, feats + 0.5, subsets=20, subset_size=100)
    assert abs(kid) < 0.05 * shifted and abs(kid) < 3 * kid_std


def test_kid_of_a_shift_is_positive_with_a_finite_std_and_matches_the_formula() -> None:
    rng = np.random.default_rng(4)
    fa = rng.normal(size=(120, 8))
    fb = rng.normal(size=(150, 8)) + 0.4
    kid, kid_std = fid.kernel_inception_distance(fa, fb, subsets=30, subset_size=50)
    assert kid > 0 and math.isfinite(kid_std) and 0 < kid_std < kid
    # One subset holding every feature (n = 120 from each set; sampling only permutes fa):
    x, y = torch.from_numpy(fa), torch.from_numpy(fb[:120])
    one, std = fid.kernel_inception_distance(fa, fb[:120], subsets=1, subset_size=120)

    def k(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p @ q.T / 8 + 1) ** 3

    n = 120
    mmd = (
        (k(x, x).sum() - k(x, x).diagonal().sum()) / (n * (n - 1))
        + (k(y, y).sum() - k(y, y).diagonal().sum()) / (n * (n - 1))
        - 2 * k(x, y).mean()
    )
    assert one == pytest.approx(float(mmd), rel=1e-9) and std == 0.0


def test_kid_without_the_whole_gram_matrices_gives_the_same_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    fa, fb = rng.normal(size=(80, 6)), rng.normal(size=(90, 6)) + 0.2
    gram = fid.kernel_inception_distance(fa, fb, subsets=7, subset_size=40, seed=3)
    monkeypatch.setattr(metrics, "KID_GRAM_MAX", 0)
    direct = fid.kernel_inception_distance(fa, fb, subsets=7, subset_size=40, seed=3)
    assert direct == pytest.approx(gram, rel=1e-12)


def test_precision_recall_of_the_same_set_is_one_and_of_far_sets_zero() -> None:
    rng = np.random.default_rng(6)
    real = rng.normal(size=(200, 8))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_precision_recall_separate_fidelity_from_coverage() -> None:
    """A mode-collapsed model (samples from one of two real clusters) keeps its precision and
    loses half its recall; wide noise samples lose precision and cover everything. Catches
    swapped arguments (precision and recall trade places) and radii taken from the wrong set or
    from the point itself (k = 0: every ball has radius 0, both scores fall to about 0)."""
    rng = np.random.default_rng(7)
    cluster = np.zeros(8)
    cluster[0] = 20.0
    real = np.concatenate([rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + cluster])
    collapsed = rng.normal(size=(300, 8))  # only the first cluster
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision > 0.75 and 0.35 < recall < 0.5  # measured: 0.86, 0.44
    noise = rng.normal(size=(300, 8)) * 6.0 + cluster / 2  # spread between and beyond both
    precision, recall = metrics.precision_recall(real, noise)
    assert precision < 0.1 and recall > 0.9  # measured: 0.0, 1.0


def test_precision_recall_k_nearest_neighbour_radius_by_hand() -> None:
    """1-D points, k = 1: real {0, 1, 3} has radii {1, 1, 2}; fake {0.5, 2.5, 10} has radii
    {2, 2, 7.5}. Precision: 0.5 (within 1 of 0) and 2.5 (within 2 of 3) of 3 samples; recall:
    0, 1 and 3 are all within a fake ball."""
    real, fake = np.array([[0.0], [1.0], [3.0]]), np.array([[0.5], [2.5], [10.0]])
    precision, recall = metrics.precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3) and recall == 1.0


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_network_input_quantises_resizes_and_maps_to_the_tf_range() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, 0.001]).view(1, 1, 2, 2)
    out = fid.network_input(x)
    assert out.shape == (1, 3, 299, 299) and out.dtype == torch.float32
    assert torch.equal(
        fid.quantize(x).flatten(), torch.tensor([0, 255, 128, 128], dtype=torch.uint8)
    )
    assert float(out.min()) == -1.0 and float(out.max()) == 255 / 128 - 1
    assert torch.equal(out[:, 0], out[:, 2])  # gray repeated
    u = fid.quantize(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert torch.equal(fid.network_input(u), fid.network_input(u.float() / 127.5 - 1))


def test_crop_undoes_the_28_to_32_padding(network_file: Path) -> None:
    net = fid.load_fid_network(str(network_file))
    originals = load_dataset(EMBEDDED, 28).images[:64]
    padded = fit_to_resolution(originals.float(), 32, "pad").to(torch.uint8)
    assert padded.shape[-1] == 32 and fid.padded_crop(EMBEDDED, 32) == 28
    a = fid.fid_features(originals.float() / 127.5 - 1, net, batch_size=16)
    b = fid.fid_features(padded.float() / 127.5 - 1, net, batch_size=24, crop=28)
    assert np.array_equal(a, b)
    sa, sb = fid.FeatureStats.from_features(a), fid.FeatureStats.from_features(b)
    assert fid.frechet_distance(sa, sb) < 1e-9
    uncropped = fid.FeatureStats.from_features(fid.fid_features(padded, net))
    assert fid.frechet_distance(sa, uncropped) > 1e-3


# ---------------------------------------------------------------------------------------------
# Reference statistics cache


def test_reference_stats_cache_hit_is_bit_identical_and_skips_the_network(
    env: Path, network_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(fid.load_fid_network(str(network_file)))
    first = fid.reference_stats(EMBEDDED, 40, network=counting, crop=28)
    assert counting.seen == 40 and len(list(env.glob("*.safetensors"))) == 1
    again = fid.reference_stats(EMBEDDED, 40, network=counting, crop=28)
    assert counting.seen == 40  # served from the cache
    for name in ("mu", "sigma", "features"):
        x, y = getattr(first, name), getattr(again, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    # Through the network file (FDM_FID_NETWORK): a hit does not even load the network.
    by_file = fid.reference_stats(EMBEDDED, 40, crop=28)
    monkeypatch.setattr(fid, "load_fid_network", lambda *a: pytest.fail("network loaded"))
    hit = fid.reference_stats(EMBEDDED, 40, crop=28)
    assert hit.sigma.tobytes() == by_file.sigma.tobytes()
    # Another key (N, crop or range) is another entry.
    monkeypatch.undo()
    monkeypatch.setenv(fid.CACHE_ENV, str(env.parent))
    fid.reference_stats(EMBEDDED, 40, network=counting, crop=None)
    fid.reference_stats(EMBEDDED, 40, network=counting, crop=28, offset=40)
    assert counting.seen == 120 and len(list(env.glob("*.safetensors"))) == 4


# ---------------------------------------------------------------------------------------------
# The command


def test_missing_network_is_one_line_with_the_install_hint(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(fid.NETWORK_ENV, raising=False)
    monkeypatch.setattr(fid, "NETWORK_PACKAGE", "fdm_no_such_fid_package")
    result = cli("eval", "--real", EMBEDDED, "--real", EMBEDDED, "--num", "4")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"fdm: error: {fid.INSTALL_HINT}"
    monkeypatch.setenv(fid.NETWORK_ENV, str(tmp_path / "nope.pt"))
    result = cli("eval", "--real", EMBEDDED, "--real", EMBEDDED, "--num", "4")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "FDM_FID_NETWORK=" in result.output and "no such file" in result.output


def test_eval_of_a_tiny_model_writes_metrics(ds_run: Path, env: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "metrics.json"
    args = ["eval", ds_run, "--num", "8", "--steps", "4", "--batch-size", "4", "--out", out]
    result = cli(*args, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("FID ") and len(result.output.strip().splitlines()) == 1
    metrics = json.loads(out.read_text())
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert math.isfinite(metrics["kid"]) and math.isfinite(metrics["kid_std"])
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["num"] == 8 and metrics["steps"] == 4 and metrics["eta"] == 0.0
    assert metrics["ref"] == EMBEDDED and metrics["crop"] == 28  # trained on 28 -> 32 padding
    assert metrics["sample_s"] > 0 and metrics["sample_s_per_image"] == metrics["sample_s"] / 8
    assert len(list(env.glob("*.safetensors"))) == 1  # the reference statistics


def test_eval_real_uses_disjoint_halves_of_one_source(env: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "floor.json"
    result = cli("eval", "--real", EMBEDDED, "--real", EMBEDDED, "--num", "16", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["ranges"] == [[0, 16], [16, 32]] and metrics["crop"] == 28
    assert metrics["fid"] > 0 and math.isfinite(metrics["kid"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a MODEL"),
        (["--real", EMBEDDED], "--real takes exactly two image sets"),
        (["--real", EMBEDDED, "--real", EMBEDDED, "--num", "6000"], "holds 10000 images"),
        (["--real", EMBEDDED, "--real", EMBEDDED, "--ref-split", "train"], "only the test split"),
        (["--real", EMBEDDED, "--real", EMBEDDED, "--ref-split", "dev"], "unknown split 'dev'"),
    ],
)
def test_eval_user_errors(args: list[str], message: str, env: Path, cli) -> None:
    result = cli("eval", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_eval_model_needs_num(ds_run: Path, env: Path, cli) -> None:
    result = cli("eval", ds_run)
    assert result.exit_code == 2 and "--num is required" in result.output


def test_a_model_dir_names_its_training_fit_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    """model-best/ and model/ record ``data.fit``, so `fdm eval MODEL_DIR` crops as the run's
    own evaluation did (a resized data set is not centre-cropped back)."""
    from fdm_cli.evaluation.evaluate import training_data

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"fdm": {"data": "photos", "fit": "resize"}}))
    assert training_data(tmp_path) == ("photos", "resize")
    config.write_text(json.dumps({"fdm": {"data": "photos", "fit": "$(rm -rf /)"}}))
    assert training_data(tmp_path) == ("photos", "auto")
    config.write_text(json.dumps({"fdm": "not a mapping"}))
    assert training_data(tmp_path) == (None, "auto")
