"""PNG charts for the benchmark reports, drawn with Pillow (a dependency of fdm already), so the
plots need no plotting library: bars (FID per model, speed-up per preset) and lines (FID against
training time)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 720, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 40
BAR, HIGHLIGHT, AXIS, GRID, TEXT = "#4477aa", "#cc6677", "#333333", "#dddddd", "#111111"
LINE_COLOURS = ["#4477aa", "#cc6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]
X0, X1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
Y0, Y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP


def _ticks(top: float, n: int = 5) -> list[float]:
    """Round tick values 0, step, 2 step, ... up to at least `top` (about `n` of them)."""
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _canvas(
    top: float, title: str, ylabel: str
) -> tuple[Image.Image, ImageDraw.ImageDraw, Callable[[float], float]]:
    """A white image with horizontal grid lines and y ticks from 0 to `top` (rounded up), the
    axes and the title; returns it with the value -> y pixel map."""
    font = ImageFont.load_default()
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    ticks = _ticks(top or 1.0)
    top = ticks[-1]

    def y(v: float) -> float:
        return Y0 - (Y0 - Y1) * v / top

    for t in ticks:
        draw.line([(X0, y(t)), (X1, y(t))], fill=GRID)
        draw.text((X0 - 6, y(t)), f"{t:g}", fill=TEXT, font=font, anchor="rm")
    draw.line([(X0, Y0), (X1, Y0)], fill=AXIS)
    draw.line([(X0, Y0), (X0, Y1)], fill=AXIS)
    draw.text((WIDTH / 2, 12), title, fill=TEXT, font=font, anchor="ma")
    draw.text((8, MARGIN_TOP - 24), ylabel, fill=TEXT, font=font)
    return image, draw, y


def _reference_line(draw: ImageDraw.ImageDraw, y: float, label: str) -> None:
    """A dashed horizontal line at pixel row `y` with `label` at its right end."""
    for start in range(int(X0), int(X1), 12):
        draw.line([(start, y), (min(start + 6, X1), y)], fill=AXIS)
    draw.text((X1, y - 4), label, fill=TEXT, font=ImageFont.load_default(), anchor="rd")


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


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
    top = max([*values, reference[0] if reference else 0.0]) * 1.12
    image, draw, y = _canvas(top, title, ylabel)
    slot = (X1 - X0) / max(1, len(values))
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        left, right = X0 + i * slot + slot * 0.15, X0 + (i + 1) * slot - slot * 0.15
        colour = HIGHLIGHT if highlight and label in highlight else BAR
        draw.rectangle([left, y(value), right, Y0], fill=colour)
        centre = (left + right) / 2
        draw.text((centre, y(value) - 4), f"{value:.3g}", fill=TEXT, font=font, anchor="md")
        draw.text((centre, Y0 + 8), label, fill=TEXT, font=font, anchor="ma")
    if reference is not None:
        _reference_line(draw, y(reference[0]), reference[1])
    return _save(image, path)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    references: list[tuple[float, str]] = (),
) -> Path:
    """One line with labelled markers per series of (x, y) points, x from 0 to the largest x,
    a legend at the top right, and a dashed horizontal line per `references` (value, label)."""
    font = ImageFont.load_default()
    points = [p for line in series.values() for p in line]
    top = max([p[1] for p in points] + [value for value, _ in references]) * 1.12
    image, draw, y = _canvas(top, title, ylabel)
    right = _ticks(max(p[0] for p in points) * 1.35)  # room for the legend on the right
    right_end = right[-1]

    def x(v: float) -> float:
        return X0 + (X1 - X0) * v / right_end

    for t in right:
        draw.text((x(t), Y0 + 6), f"{t:g}", fill=TEXT, font=font, anchor="ma")
    draw.text((X1, Y0 + 22), xlabel, fill=TEXT, font=font, anchor="ra")
    for value, label in references:
        _reference_line(draw, y(value), label)
    for i, (name, line) in enumerate(series.items()):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        pixels = [(x(a), y(b)) for a, b in sorted(line)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for (px, py), (_, value) in zip(pixels, sorted(line), strict=True):
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            draw.text((px + 6, py - 6), f"{value:.3g}", fill=TEXT, font=font, anchor="ld")
        legend_y = MARGIN_TOP + 4 + 14 * i
        draw.line([(X1 - 150, legend_y), (X1 - 130, legend_y)], fill=colour, width=3)
        draw.text((X1 - 124, legend_y), name, fill=TEXT, font=font, anchor="lm")
    return _save(image, path)
