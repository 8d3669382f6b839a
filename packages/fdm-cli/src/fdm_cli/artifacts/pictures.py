"""Pictures a run writes: sample grids, stage strips (paper Figure 1) and the loss curve.

Everything is drawn with pillow and written atomically (temporary file + rename), so an
interrupted run never leaves a half-written PNG in place of a good one.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from fdm_core import atomic_write

BACKGROUND = 255  # grid padding (white)
STAGE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (see `fdm_core.atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(data)


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], ``(B, C, H, W)`` -> uint8 ``(B, H, W, C)``."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(arr: np.ndarray) -> Image.Image:
    """uint8 ``(H, W, C)`` with C in {1, 3} -> PIL image (L or RGB)."""
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], "L")
    return Image.fromarray(arr, "RGB")


def grid_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def grid_size(
    n: int, height: int, width: int, padding: int = 2, ncol: int | None = None
) -> tuple[int, int]:
    """(width, height) in pixels of the grid `make_grid` draws for `n` tiles."""
    ncol = ncol or grid_columns(n)
    nrow = math.ceil(n / ncol)
    return ncol * (width + padding) + padding, nrow * (height + padding) + padding


def make_grid(x: torch.Tensor, ncol: int | None = None, padding: int = 2) -> Image.Image:
    """Tile images in [-1, 1] ``(B, C, H, W)`` into one picture, `ncol` per row (default square)."""
    tiles = to_uint8(x)
    n, h, w, c = tiles.shape
    ncol = ncol or grid_columns(n)
    gw, gh = grid_size(n, h, w, padding, ncol)
    canvas = np.full((gh, gw, c), BACKGROUND, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        canvas[top : top + h, left : left + w] = tiles[i]
    return to_pil(canvas)


def sample_paths(
    out_dir: str | os.PathLike[str], num: int, first_index: int = 0, prefix: str = "sample"
) -> list[Path]:
    """Where `save_images` writes `num` images: ``{prefix}-{index:05d}.png``."""
    return [Path(out_dir) / f"{prefix}-{first_index + i:05d}.png" for i in range(num)]


def save_images(
    x: torch.Tensor, out_dir: str | os.PathLike[str], first_index: int = 0, prefix: str = "sample"
) -> list[Path]:
    """One PNG per image (see `sample_paths`)."""
    paths = sample_paths(out_dir, len(x), first_index, prefix)
    for arr, path in zip(to_uint8(x), paths, strict=True):
        save_png(to_pil(arr), path)
    return paths


def upscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour up-scaling to ``size x size`` for viewing (pixels stay visible)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="nearest")


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def stage_strip(
    columns: Sequence[torch.Tensor],
    labels: Sequence[str],
    tile: int = 64,
    padding: int = 2,
    label_height: int = 26,
) -> Image.Image:
    """The stage strip of paper Figure 1: one column per stage, one row per sample.

    `columns[j]` holds images in [-1, 1] ``(B, C, h_j, w_j)`` (already mapped to data space); each
    is up-scaled to `tile` pixels with nearest neighbour so coarse stages show their pixels.
    """
    rows = columns[0].shape[0]
    channels = columns[0].shape[1]
    tiles = [to_uint8(upscale(c, tile)) for c in columns]
    width = len(columns) * (tile + padding) + padding
    height = label_height + rows * (tile + padding) + padding
    canvas = np.full((height, width, channels), BACKGROUND, dtype=np.uint8)
    for j, col in enumerate(tiles):
        left = padding + j * (tile + padding)
        for i in range(rows):
            top = label_height + padding + i * (tile + padding)
            canvas[top : top + tile, left : left + tile] = col[i]
    image = to_pil(canvas).convert("RGB")
    draw = ImageDraw.Draw(image)
    for j, label in enumerate(labels):
        draw.multiline_text(
            (padding + j * (tile + padding) + 1, 1), label, fill=(0, 0, 0), font=_font(), spacing=1
        )
    return image


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def loss_curve(
    steps: Sequence[int],
    series: dict[str, Sequence[float]],
    size: tuple[int, int] = (640, 400),
    smooth: float = 0.9,
) -> Image.Image:
    """A line plot of loss against step, one exponentially smoothed line per series.

    The first series is drawn in black (the total loss), the others in stage colours; y is
    linear from 0 to the 99th percentile of the smoothed values so spikes do not flatten it.
    """
    width, height = size
    left, right, top, bottom = 56, 16, 24, 36
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font()
    smoothed = {}
    for name, values in series.items():
        out, acc = [], None
        for v in values:
            if v is None or not math.isfinite(v):
                out.append(acc)
                continue
            acc = v if acc is None else smooth * acc + (1 - smooth) * v
            out.append(acc)
        smoothed[name] = out
    finite = [v for vals in smoothed.values() for v in vals if v is not None]
    if not steps or not finite:
        draw.text((left, height // 2), "no data yet", fill=(0, 0, 0), font=font)
        return image
    ymax = float(np.percentile(finite, 99)) * 1.1 or 1.0
    x0, x1 = min(steps), max(steps)
    xspan = max(1, x1 - x0)

    def px(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / xspan * (width - left - right)
        y = height - bottom - min(value, ymax) / ymax * (height - top - bottom)
        return x, y

    draw.rectangle((left, top, width - right, height - bottom), outline=(0, 0, 0))
    for tick in _nice_ticks(0.0, ymax):
        _, y = px(x0, tick)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, width - right - 1, y), fill=(230, 230, 230))
        draw.text((4, y - 6), f"{tick:.3g}", fill=(0, 0, 0), font=font)
    for tick in _nice_ticks(float(x0), float(x1)):
        x, _ = px(tick, 0.0)
        draw.line((x, height - bottom, x, height - bottom + 4), fill=(0, 0, 0))
        draw.text((x - 10, height - bottom + 6), f"{int(tick)}", fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 12, height - 14), "step", fill=(0, 0, 0), font=font)
    legend_x = left + 8
    for i, (name, values) in enumerate(smoothed.items()):
        colour = (0, 0, 0) if i == 0 else STAGE_COLOURS[(i - 1) % len(STAGE_COLOURS)]
        points = [px(s, v) for s, v in zip(steps, values, strict=False) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2 if i == 0 else 1)
        draw.text((legend_x, 6), name, fill=colour, font=font)
        legend_x += 8 + int(draw.textlength(name, font=font))
    return image
