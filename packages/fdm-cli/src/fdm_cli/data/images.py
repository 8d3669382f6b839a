"""Image files for fdm's data: open one safely, read its channels, bring it to a resolution.

The one fit rule (`fit_mode`): small size differences (28 -> 32) are zero-padded (``fit="auto"``
or ``"pad"``), anything else is resized (shorter side) and centre cropped. Every decode is
bounded (`MAX_DATA_PIXELS`) so that a small file cannot expand into gigabytes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fdm_cli.data import Fit
from fdm_cli.data.walk import walk_files
from fdm_cli.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_DATA_PIXELS = 50_000_000  # per data image (a 9000x9000 PNG of 236 KB decodes to 243 MB)
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "I", "F"}  # what Image.reduce takes
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


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


def round_to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
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
    """The images of `directory` (`fdm_cli.data.walk`), or a UserError when there are none."""
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
    return round_to_uint8(fit_to_resolution(t.unsqueeze(0), resolution, "pad")[0])


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
