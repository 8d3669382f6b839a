"""Grids, stage strips, the loss curve and atomic PNG writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdm_cli.artifacts.losslog import LossLog, read_loss_csv
from fdm_cli.artifacts.pictures import (
    grid_size,
    loss_curve,
    make_grid,
    save_png,
    stage_strip,
    to_uint8,
)


def test_to_uint8_maps_range() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize(("n", "channels"), [(1, 1), (5, 1), (64, 3)])
def test_grid_layout(n: int, channels: int) -> None:
    x = torch.rand(n, channels, 8, 6) * 2 - 1
    image = make_grid(x, padding=2)
    ncol = math.ceil(math.sqrt(n))
    assert image.size == grid_size(n, 8, 6, 2) == (ncol * 8 + 2, math.ceil(n / ncol) * 10 + 2)
    assert image.mode == ("L" if channels == 1 else "RGB")
    # the first tile sits after the padding, unchanged
    arr = np.asarray(image).reshape(image.size[1], image.size[0], channels)
    assert np.array_equal(arr[2:10, 2:8], to_uint8(x[:1])[0])


def test_stage_strip_size_and_labels() -> None:
    cols = [torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 16, 16), torch.ones(3, 1, 32, 32)]
    image = stage_strip(cols, ["a", "b", "c"], tile=64, padding=2, label_height=26)
    assert image.size == (3 * 66 + 2, 26 + 3 * 66 + 2)
    # the coarse column is up-scaled with nearest neighbour: one flat grey tile
    assert image.getpixel((2 + 10, 26 + 2 + 10)) == (128, 128, 128)
    assert image.getpixel((2 + 2 * 66 + 5, 26 + 2 + 5)) == (255, 255, 255)


def test_loss_curve_draws_lines() -> None:
    steps = list(range(1, 101))
    image = loss_curve(steps, {"loss": [1 / s for s in steps], "stage 0": [0.5] * 100})
    assert image.size == (640, 400)
    colours = {c for _, c in image.getcolors(1 << 16)}
    assert (0, 0, 0) in colours and len(colours) > 3
    empty = loss_curve([], {"loss": []})
    assert empty.size == (640, 400)


def test_save_png_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "grid.png"
    save_png(Image.new("L", (4, 4), 7), target)

    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("L", (4, 4), 99), target)
    assert Image.open(target).getpixel((0, 0)) == 7  # the old file survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left behind


def test_loss_log_resume_truncates(tmp_path: Path) -> None:
    log = LossLog(tmp_path / "loss.csv", num_stages=2)
    log.start()
    for step in range(1, 6):
        log.add(step, 1.0 / step, [0.1 * step, math.nan], 1e-3, 0.5, float(step))
    log.flush()
    with (tmp_path / "loss.csv").open("a") as handle:
        handle.write("6,0.1,0.2")  # a torn line from a crash
    again = LossLog(tmp_path / "loss.csv", num_stages=2)
    again.resume(3)
    rows = read_loss_csv(tmp_path / "loss.csv")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[1][1] == 0.5 and math.isnan(rows[1][3])
    again.save_plot(tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").size == (640, 400)
