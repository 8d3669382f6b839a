"""Training data for `fdm train --data D`: images in memory, scaled to [-1, 1], in a seeded order.

Sources (`D`):

- ``fashion-mnist`` (default): the Fashion-MNIST test split (10,000 images, MIT, Zalando SE)
  embedded in this package (``fdm_cli/data``, with its licence notice).
- a directory holding IDX files (``*-images-idx3-ubyte`` or ``.gz``; the ``train-`` split is
  preferred), or one such file: e.g. ``/usr/share/datasets/fashion-mnist`` from Debian's
  ``dataset-fashion-mnist``.
- a directory of images (png, jpg, jpeg, webp; searched recursively), grayscale or RGB.
- WebDataset tar shards (`fdm_cli.data.shards`): ``shards/train-{000000..000127}.tar``, a tar
  file, a ``pipe:`` URL, or a folder written by ``fdm data pack``.

`load_dataset` decodes into memory; `fdm train` reads `fdm_cli.data.cache` instead.

Images are brought to ``resolution x resolution``: small size differences (28 -> 32) are
zero-padded (``fit="auto"`` or ``"pad"``), anything else is resized (shorter side) and centre
cropped. Channels follow the data (1 if every image is grayscale, else 3) unless forced.

The order is a pure function of (seed, position): sample number p of the stream is item
``perm_e[p mod N]`` of epoch ``e = p // N``, with ``perm_e`` a seeded permutation. A resumed run
therefore sees exactly the batches an uninterrupted one would, for any number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from fdm_cli.data import Fit
from fdm_cli.data.idx import find_idx_images, read_idx
from fdm_cli.data.images import (
    IMAGE_SUFFIXES,
    fit_to_resolution,
    folder_channels,
    folder_images,
    folder_rows,
    match_channels,
    round_to_uint8,
)
from fdm_cli.errors import UserError
from fdm_cli.seeding import DATA_FLIP, DATA_ORDER, derive_seed

EMBEDDED = "fashion-mnist"
log = logging.getLogger(__name__)


@dataclass
class ImageDataset:
    """Images as one uint8 tensor ``(N, C, R, R)`` plus where they came from."""

    images: torch.Tensor
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def batch(self, indices: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Float images in [-1, 1] for `indices`; `flip` (bool per item) mirrors horizontally."""
        x = self.images[indices].float().div_(127.5).sub_(1.0)
        if flip is not None and bool(flip.any()):
            x[flip] = x[flip].flip(-1)
        return x


# ---------------------------------------------------------------------------------------------
# IDX files


def embedded_images() -> Path:
    ref = resources.files("fdm_cli") / "data" / "t10k-images-idx3-ubyte.gz"
    return Path(str(ref))


# ---------------------------------------------------------------------------------------------
# Entry point


def idx_chunks(
    path: Path, resolution: int, channels: int | None, fit: Fit
) -> Iterator[torch.Tensor]:
    """An IDX images file as uint8 ``(n, C, R, R)`` chunks of at most 4096 images."""
    arr = read_idx(path)
    if arr.ndim != 3:
        raise UserError(f"{path}: expected grayscale images of shape (N, H, W), got {arr.shape}")
    for start in range(0, len(arr), 4096):
        part = torch.from_numpy(arr[start : start + 4096, None].copy())
        f = match_channels(part.float(), channels)
        yield round_to_uint8(fit_to_resolution(f, resolution, fit))


def _idx_dataset(path: Path, resolution: int, channels: int | None, fit: Fit) -> ImageDataset:
    return ImageDataset(torch.cat(list(idx_chunks(path, resolution, channels, fit))), str(path))


def locate_source(source: str) -> tuple[Path, bool]:
    """``(path, is_idx)``: the IDX images file or the image folder that `source` names."""
    if source == EMBEDDED:
        return embedded_images(), True
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"data source {source!r} not found: use {EMBEDDED!r}, a directory of images "
            f"({', '.join(IMAGE_SUFFIXES)}), or a directory/file of IDX *-images-idx3-ubyte[.gz]"
        )
    if path.is_file():
        if path.name.removesuffix(".gz").endswith("idx3-ubyte"):
            return path, True
        raise UserError(
            f"data file {path} is not an IDX images file (*-images-idx3-ubyte[.gz]); "
            "pass a directory for a folder of images"
        )
    idx = find_idx_images(path)
    return (idx, True) if idx is not None else (path, False)


def load_dataset(
    source: str,
    resolution: int,
    channels: int | None = None,
    fit: Fit = "auto",
    strict: bool = False,
) -> ImageDataset:
    """Load `source` (see the module docstring) as a uint8 dataset at `resolution`.

    `channels` None follows the data (`probe_channels`); 1 or 3 converts. `strict` refuses a
    folder holding an unreadable image instead of skipping it (`folder_rows`).
    """
    path, is_idx = locate_source(source)
    if is_idx:
        return _idx_dataset(path, resolution, channels, fit)
    channels = channels or folder_channels(folder_images(path))
    rows = folder_rows(path, folder_images(path), resolution, channels, fit, strict)
    return ImageDataset(torch.stack(list(rows)), str(path))


def probe_channels(source: str, channels: int | None = None) -> int:
    """The channel count `load_dataset` produces, reading only headers (for the config).

    `channels` when given; else 1 for IDX files (grayscale by format), `folder_channels` for a
    folder of images, and `shard_channels` for tar shards.
    """
    if channels is not None:
        return channels
    from fdm_cli.data.shards import is_shard_source, shard_channels

    if is_shard_source(source):
        return shard_channels(source)
    path, is_idx = locate_source(source)
    return 1 if is_idx else folder_channels(folder_images(path))


class DataOrder:
    """The seeded infinite stream of (index, flip) over a dataset of `n` items.

    `take(position, count)` returns the items at stream positions ``position .. position+count-1``:
    a fresh seeded permutation per epoch, and (if `hflip`) a seeded coin per position.
    """

    def __init__(self, n: int, seed: int, hflip: bool = False) -> None:
        if n <= 0:
            raise UserError("the dataset is empty")
        self.n, self.seed, self.hflip = n, seed, hflip
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)
        self._flip = torch.empty(0, dtype=torch.bool)

    def _load_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_ORDER, epoch))
            self._perm = torch.randperm(self.n, generator=g)
            g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_FLIP, epoch))
            self._flip = torch.rand(self.n, generator=g) < 0.5
            self._epoch = epoch

    def take(self, position: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx, flip = [], []
        while count > 0:
            epoch, offset = divmod(position, self.n)
            self._load_epoch(epoch)
            k = min(count, self.n - offset)
            idx.append(self._perm[offset : offset + k])
            flip.append(self._flip[offset : offset + k])
            position, count = position + k, count - k
        return torch.cat(idx), (torch.cat(flip) if self.hflip else None)
