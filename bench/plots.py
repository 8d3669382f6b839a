"""PNG bar charts for the benchmark reports, drawn with Pillow (a dependency of fdm already), so
the plots need no plotting library."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 720, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 40
BAR, HIGHLIGHT, AXIS, GRID, TEXT = "#4477aa", "#cc6677", "#333333", "#dddddd", "#111111"


def _ticks(top: float, n: int = 5) -> list[float]:
    """Round tick values 0, step, 2 step, ... up to at least `top` (about `n` of them)."""
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def bar_chart(
    labels: list[str],
    values: list[float],
    path: Path,
    title: str,
    ylabel: str,
    highlight: set[str] | None = None,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Bars of `values` with their numbers on top; `highlight` labels get a second colour and
    `reference` (value, label) draws a dashed horizontal line (a floor or a target)."""
    font = ImageFont.load_default()
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y0, y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP
    top = max([*values, reference[0] if reference else 0.0]) * 1.12 or 1.0
    ticks = _ticks(top)
    top = ticks[-1]

    def y(v: float) -> float:
        return y0 - (y0 - y1) * v / top

    for t in ticks:
        draw.line([(x0, y(t)), (x1, y(t))], fill=GRID)
        draw.text((x0 - 6, y(t)), f"{t:g}", fill=TEXT, font=font, anchor="rm")
    slot = (x1 - x0) / max(1, len(values))
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        left, right = x0 + i * slot + slot * 0.15, x0 + (i + 1) * slot - slot * 0.15
        colour = HIGHLIGHT if highlight and label in highlight else BAR
        draw.rectangle([left, y(value), right, y0], fill=colour)
        centre = (left + right) / 2
        draw.text((centre, y(value) - 4), f"{value:.3g}", fill=TEXT, font=font, anchor="md")
        draw.text((centre, y0 + 8), label, fill=TEXT, font=font, anchor="ma")
    if reference is not None:
        value, label = reference
        for start in range(int(x0), int(x1), 12):
            draw.line([(start, y(value)), (min(start + 6, x1), y(value))], fill=AXIS)
        draw.text((x1, y(value) - 4), label, fill=TEXT, font=font, anchor="rd")
    draw.line([(x0, y0), (x1, y0)], fill=AXIS)
    draw.line([(x0, y0), (x0, y1)], fill=AXIS)
    draw.text((WIDTH / 2, 12), title, fill=TEXT, font=font, anchor="ma")
    draw.text((8, MARGIN_TOP - 24), ylabel, fill=TEXT, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
