"""Data sources: embedded Fashion-MNIST, IDX files, image folders, and the seeded order."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdm_cli.data import (
    DataOrder,
    fit_to_resolution,
    load_dataset,
    probe_channels,
    read_idx,
)
from fdm_cli.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# The full Fashion-MNIST (IDX files) beside the checkout, or wherever FDM_FASHION_MNIST_DIR says.
SHARED_FMNIST = Path(
    os.environ.get("FDM_FASHION_MNIST_DIR") or REPO.parent / "shared" / "data" / "fashion-mnist"
)


def shared_fmnist() -> Path:
    """The shared Fashion-MNIST directory, or skip the test (saying where it was looked for)."""
    if not (SHARED_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"full Fashion-MNIST not found in {SHARED_FMNIST} (set FDM_FASHION_MNIST_DIR)")
    return SHARED_FMNIST


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_embedded_fashion_mnist_is_padded_to_32() -> None:
    ds = load_dataset("fashion-mnist", 32)
    assert ds.images.shape == (10000, 1, 32, 32)
    assert ds.images.dtype == torch.uint8
    # 28 -> 32 by zero padding: a 2-pixel black border, the garment inside.
    assert int(ds.images[:, :, :2].max()) == 0 and int(ds.images[:, :, :, -2:].max()) == 0
    assert int(ds.images[:, :, 2:30, 2:30].max()) == 255
    x = ds.batch(torch.arange(4))
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32


def test_licence_travels_with_the_embedded_data() -> None:
    import fdm_cli

    folder = Path(fdm_cli.__file__).parent / "data"
    assert "Zalando" in (folder / "FASHION-MNIST-LICENSE.txt").read_text()


def test_embedded_matches_the_shared_copy() -> None:
    import fdm_cli

    shared = shared_fmnist()
    ours = read_idx(Path(fdm_cli.__file__).parent / "data" / "t10k-images-idx3-ubyte.gz")
    theirs = read_idx(shared / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(ours, theirs)


def test_idx_directory_prefers_train_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (5, 28, 28)), True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (3, 28, 28)))
    assert len(load_dataset(str(tmp_path), 32)) == 5
    assert len(load_dataset(str(tmp_path / "t10k-images-idx3-ubyte"), 32)) == 3
    resized = load_dataset(str(tmp_path), 16)
    assert resized.images.shape == (5, 1, 16, 16)


def test_full_fashion_mnist_train_split_loads() -> None:
    ds = load_dataset(str(shared_fmnist()), 32)
    assert ds.images.shape == (60000, 1, 32, 32)


def test_truncated_and_bad_idx_are_user_errors(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((2, 4, 4)))
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut-images-idx3-ubyte")
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(UserError, match="bad magic"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")
    (tmp_path / "z-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read IDX"):
        read_idx(tmp_path / "z-images-idx3-ubyte.gz")


def test_image_folder_recursive_gray_and_rgb(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("L", (40, 30), 200).save(tmp_path / "a" / "one.png")
    Image.new("L", (32, 32), 10).save(tmp_path / "a" / "b" / "two.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    gray = load_dataset(str(tmp_path), 16)
    assert gray.images.shape == (2, 1, 16, 16)
    assert probe_channels(str(tmp_path)) == 1
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "three.webp")
    rgb = load_dataset(str(tmp_path), 16)
    assert rgb.images.shape == (3, 3, 16, 16) and probe_channels(str(tmp_path)) == 3
    forced = load_dataset(str(tmp_path), 8, channels=1)
    assert forced.images.shape == (3, 1, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no images found"):
        load_dataset(str(tmp_path), 32)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png"):
        load_dataset(str(tmp_path), 32)
    with pytest.raises(UserError, match="not found"):
        load_dataset(str(tmp_path / "missing"), 32)


def test_fit_pads_small_and_resizes_large() -> None:
    x = torch.full((1, 1, 28, 28), 255.0)
    padded = fit_to_resolution(x, 32)
    assert padded.shape[-2:] == (32, 32) and padded[0, 0, 0, 0] == 0
    resized = fit_to_resolution(torch.full((1, 3, 64, 96), 100.0), 32)
    assert resized.shape == (1, 3, 32, 32) and torch.allclose(resized, torch.tensor(100.0))


def test_data_order_is_a_function_of_seed_and_position() -> None:
    order = DataOrder(10, seed=3, hflip=True)
    whole_idx, whole_flip = order.take(0, 25)  # crosses two epoch boundaries
    assert sorted(whole_idx[:10].tolist()) == list(range(10))
    assert sorted(whole_idx[10:20].tolist()) == list(range(10))
    assert not torch.equal(whole_idx[:10], whole_idx[10:20])  # a fresh permutation per epoch
    fresh = DataOrder(10, seed=3, hflip=True)
    parts = [fresh.take(p, n) for p, n in ((0, 7), (7, 6), (13, 12))]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_idx)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_flip)
    other = DataOrder(10, seed=4).take(0, 10)[0]
    assert not torch.equal(other, whole_idx[:10])
