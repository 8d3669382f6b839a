"""Training data for `fdm train --data D`: images in memory, scaled to [-1, 1], in a seeded order.

Sources (`D`):

- ``fashion-mnist`` (default): the Fashion-MNIST test split (10,000 images, MIT, Zalando SE)
  embedded in this package (``fdm_cli/data``, with its licence notice).
- a directory holding IDX files (``*-images-idx3-ubyte`` or ``.gz``; the ``train-`` split is
  preferred), or one such file: e.g. ``/usr/share/datasets/fashion-mnist`` from Debian's
  ``dataset-fashion-mnist``.
- a directory of images (png, jpg, jpeg, webp; searched recursively), grayscale or RGB.
- WebDataset tar shards (`fdm_cli.shards`): ``shards/train-{000000..000127}.tar``, a tar
  file, a ``pipe:`` URL, or a folder written by ``fdm data pack``.

`load_dataset` decodes into memory; `fdm train` reads `fdm_cli.datacache` instead.

Images are brought to ``resolution x resolution``: small size differences (28 -> 32) are
zero-padded (``fit="auto"`` or ``"pad"``), anything else is resized (shorter side) and centre
cropped. Channels follow the data (1 if every image is grayscale, else 3) unless forced.

The order is a pure function of (seed, position): sample number p of the stream is item
``perm_e[p mod N]`` of epoch ``e = p // N``, with ``perm_e`` a seeded permutation. A resumed run
therefore sees exactly the batches an uninterrupted one would, for any number of ranks.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .idx import find_idx_images, read_idx
from .seeding import DATA_FLIP, DATA_ORDER, derive_seed
from .walk import walk_files

EMBEDDED = "fashion-mnist"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_DATA_PIXELS = 50_000_000  # per data image (a 9000x9000 PNG of 236 KB decodes to 243 MB)
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "I", "F"}  # what Image.reduce takes
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
Fit = Literal["auto", "pad", "resize"]
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


def _embedded_images() -> Path:
    ref = resources.files("fdm_cli") / "data" / "t10k-images-idx3-ubyte.gz"
    return Path(str(ref))


# ---------------------------------------------------------------------------------------------
# Geometry


def fit_mode(height: int, width: int, resolution: int, fit: Fit) -> Literal["pad", "resize"]:
    """How an image of `height` x `width` is brought to `resolution` (the one fit rule).

    ``auto`` pads when the image is square and at most a quarter smaller than the target
    (28 -> 32), and resizes otherwise.
    """
    if fit != "auto":
        return fit
    return "pad" if height == width and 0 <= resolution - height <= height // 4 else "resize"


def fit_to_resolution(x: torch.Tensor, resolution: int, fit: Fit = "auto") -> torch.Tensor:
    """Bring float images ``(N, C, H, W)`` in [0, 255] to ``resolution`` square.

    ``pad``: centre pad (zeros) or crop; ``resize``: resize the shorter side (antialiased
    bilinear) and centre crop; ``auto``: see `fit_mode`.
    """
    h, w = x.shape[-2:]
    if fit_mode(h, w, resolution, fit) == "resize" and (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        h, w = size
    top, left = (h - resolution) // 2, (w - resolution) // 2
    if top >= 0 and left >= 0:
        return x[..., top : top + resolution, left : left + resolution]
    pad_h, pad_w = max(0, resolution - h), max(0, resolution - w)
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    h, w = x.shape[-2:]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return x[..., top : top + resolution, left : left + resolution]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def _match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 1 and x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    raise UserError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


# ---------------------------------------------------------------------------------------------
# Image folders


def list_images(directory: Path) -> list[Path]:
    return list(walk_files(directory, IMAGE_SUFFIXES))


def folder_images(directory: Path) -> Iterator[Path]:
    """The images of `directory` (`fdm_cli.walk`), or a UserError when there are none."""
    found = 0
    for path in walk_files(directory, IMAGE_SUFFIXES):
        found += 1
        yield path
    if not found:
        raise UserError(
            f"no images found in {directory} (looked recursively for "
            f"{', '.join(IMAGE_SUFFIXES)}; IDX files must be named *-images-idx3-ubyte[.gz])"
        )


def _open(source: Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def open_image(path: Path | bytes, decode: bool = True, label: str = "") -> Image.Image:
    """Open and decode an image (a file, or its bytes named `label`), or a UserError naming it.
    ``decode=False`` reads the header only: the (closed) image still tells mode and size."""
    source, path = path, label or path
    try:
        with _open(source) as im:
            if not decode:
                return im
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels
        raise UserError(f"image {path} is too large to decode: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(
            f"cannot read image {path}: {exc.__class__.__name__}: {exc} "
            f"(allowed: {', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})"
        ) from None


def image_channels(im: Image.Image) -> int:
    """1 for a grayscale image mode, else 3."""
    return 1 if im.mode in GRAY_MODES else 3


def folder_channels(paths: Iterable[Path]) -> int:
    """1 if every image is grayscale, else 3: the one grayscale rule (image headers only, up to
    the first RGB one; an unreadable image does not count, the loader skips or refuses it)."""
    for p in paths:
        try:
            if image_channels(open_image(p, decode=False)) == 3:
                return 3
        except UserError:
            continue
    return 1


def pil_to_tensor(im: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image as float ``(C, H, W)`` in [0, 255] with the given number of channels."""
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.float32)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


def _resize_pil(im: Image.Image, resolution: int, fit: Fit) -> Image.Image:
    w, h = im.size
    if fit_mode(h, w, resolution, fit) == "pad":
        return im
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return im


def _decode_for_training(
    source: Path | bytes, resolution: int, fit: Fit, label: str
) -> Image.Image:
    """Decode one data image (a file, or its bytes named `label`) already reduced towards
    `resolution` (JPEG's DCT scaling through `Image.draft`; `reduce` by whole factors for the
    rest), so a huge photo never costs its full size twice; refuses more than MAX_DATA_PIXELS."""
    path = label or source
    header = open_image(source, decode=False, label=label)
    w, h = header.size
    if w * h > MAX_DATA_PIXELS:
        raise UserError(
            f"image {path} is {w}x{h} = {w * h:,} pixels; a data image may have at most "
            f"{MAX_DATA_PIXELS:,} (resize it first)"
        )
    try:
        with _open(source) as im:
            if fit_mode(h, w, resolution, fit) != "pad":
                scale = resolution / min(w, h)
                im.draft(im.mode, (max(1, round(w * scale)), max(1, round(h * scale))))
            im.load()
            factor = min(im.size) // (2 * resolution)  # keep 2x the size for a good resize
            if factor > 1 and im.mode in REDUCIBLE_MODES:
                return im.reduce(factor)
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}") from None


def prepare_image(
    source: Path | bytes, resolution: int, channels: int, fit: Fit, label: str = ""
) -> torch.Tensor:
    """One data image (a file, or its bytes named `label`) as uint8 ``(C, R, R)``."""
    im = _decode_for_training(source, resolution, fit, label)
    t = pil_to_tensor(_resize_pil(im, resolution, fit), channels)
    return _to_uint8(fit_to_resolution(t.unsqueeze(0), resolution, "pad")[0])


def folder_rows(
    directory: Path, paths: Iterable[Path], resolution: int, channels: int, fit: Fit, strict: bool
) -> Iterator[torch.Tensor]:
    """The readable images of `paths` (in `directory`) as uint8 ``(C, R, R)``, one at a time.
    An unreadable image (corrupt, empty, not an image, too large) is skipped with one warning
    at the end that counts them and names the first few, or refused with `strict`."""
    skipped: list[tuple[Path, UserError]] = []
    total = 0
    for path in paths:
        total += 1
        try:
            row = prepare_image(path, resolution, channels, fit)
        except UserError as exc:
            if strict:
                raise
            skipped.append((path, exc))
            continue
        yield row
    if skipped:
        names = ", ".join(str(p.relative_to(directory)) for p, _ in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        log.warning(
            "skipped %d unreadable file(s) of %d in %s: %s%s (first: %s; --strict refuses them)",
            len(skipped), total, directory, names, more, skipped[0][1],
        )  # fmt: skip
    if len(skipped) == total:
        first = skipped[0][1]
        raise UserError(f"no readable image in {directory} ({len(skipped)} unreadable; {first})")


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
        f = _match_channels(part.float(), channels)
        yield _to_uint8(fit_to_resolution(f, resolution, fit))


def _idx_dataset(path: Path, resolution: int, channels: int | None, fit: Fit) -> ImageDataset:
    return ImageDataset(torch.cat(list(idx_chunks(path, resolution, channels, fit))), str(path))


def _locate(source: str) -> tuple[Path, bool]:
    """``(path, is_idx)``: the IDX images file or the image folder that `source` names."""
    if source == EMBEDDED:
        return _embedded_images(), True
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
    path, is_idx = _locate(source)
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
    from .shards import is_shard_source, shard_channels  # shards reads images through this module

    if is_shard_source(source):
        return shard_channels(source)
    path, is_idx = _locate(source)
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
