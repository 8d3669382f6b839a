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

from fdm_cli.data.dataset import DataOrder, load_dataset, probe_channels, read_idx
from fdm_cli.data.images import fit_to_resolution
from fdm_cli.errors import UserError

from .conftest import png_header_only

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


def test_an_idx_header_whose_size_overflows_is_refused_with_the_right_count(
    tmp_path: Path,
) -> None:
    """65536^4 = 2^64 bytes: numpy's int64 product wrapped to 0 and the message reported the
    wrong byte count; nothing past the header may be read for such a file."""
    path = tmp_path / "huge-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 4]) + struct.pack(">4I", *[65536] * 4)))
    with pytest.raises(UserError, match="18,446,744,073,709,551,616 bytes"):
        read_idx(path)
    path = tmp_path / "long-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"abcdef")
    with pytest.raises(UserError, match=r"\(3 bytes\) but the file holds more"):
        read_idx(path)


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


def test_a_decompression_bomb_header_is_one_clear_error(tmp_path: Path) -> None:
    """100000 x 100000 pixels: Pillow raises DecompressionBombError (not an OSError), which
    escaped as a traceback from train, super-resolve and deblur."""
    png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(UserError, match=r"bomb\.png is too large to decode"):
        load_dataset(str(tmp_path), 32)


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


def photo_folder(folder: Path) -> Path:
    """Six mixed photos (PNG/JPEG/WebP; gray, RGB, RGBA; sizes from 20 to 300 px, one in a
    subfolder), a corrupt PNG, an empty JPEG, a PNG claiming 56 megapixels and a text file."""
    rng = np.random.default_rng(0)
    specs = [
        ("L", (40, 30), "png"),
        ("RGB", (64, 48), "jpg"),
        ("RGBA", (50, 50), "webp"),
        ("RGB", (300, 200), "png"),
        ("L", (33, 33), "jpeg"),
        ("RGBA", (20, 40), "png"),
    ]
    (folder / "sub").mkdir(parents=True)
    for i, (mode, (w, h), ext) in enumerate(specs):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        where = folder / "sub" if i == 3 else folder
        Image.fromarray(arr, "RGB").convert(mode).save(where / f"photo{i}.{ext}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    png_header_only(folder / "huge.png", 8000, 7000)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_unreadable_images_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches one bad file aborting the whole load (the issue), and a skip that is silent."""
    folder = photo_folder(tmp_path / "photos")
    with caplog.at_level("WARNING", logger="fdm_cli.data.dataset"):
        dataset = load_dataset(str(folder), 32)
    assert len(dataset) == 6 and dataset.channels == 3 and dataset.resolution == 32
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    text = warnings[0].getMessage()
    assert "skipped 3 unreadable file(s) of 9" in text and "broken.png" in text, text
    with pytest.raises(UserError, match=r"cannot read image|pixels"):
        load_dataset(str(folder), 32, strict=True)


def test_fdm_train_on_a_messy_folder(tmp_path: Path, cli, tiny) -> None:
    folder = photo_folder(tmp_path / "photos")
    run = tmp_path / "run"
    result = cli("train", "--data", folder, "--out", run, "--max-steps", "1", *tiny)
    assert result.exit_code == 0, result.output
    strict = cli("train", "--data", folder, "--strict", "--out", tmp_path / "r2", "--max-steps",
                 "1", *tiny)  # fmt: skip
    assert strict.exit_code == 2 and "fdm: error:" in strict.output, strict.output
    assert not (tmp_path / "r2" / "checkpoints").exists()
