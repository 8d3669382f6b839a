"""The loss record of a run: ``RUN_DIR/loss.csv`` (one row per step) and ``RUN_DIR/loss.png``.

Columns: ``step, loss, loss_stage0 .. loss_stageK, lr, grad_norm, elapsed_s`` (for
`fdm train-autoencoder`, `AutoencoderLossLog`: reconstruction and regularization in place of the
stages). Floats are written with full precision (``repr``), so two runs can be compared exactly.
A resumed run first cuts the file back to the checkpoint's step, then appends; a torn last line
is dropped.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from fdm_cli.artifacts.pictures import atomic_write_bytes, loss_curve, save_png


class LossLog:
    """Rows buffered in memory and appended to the CSV on `flush` (rank 0 only)."""

    def __init__(self, path: Path, num_stages: int) -> None:
        self.path = path
        self.num_stages = num_stages
        self.header = [
            "step",
            "loss",
            *[f"loss_stage{k}" for k in range(num_stages)],
            "lr",
            "grad_norm",
            "elapsed_s",
        ]
        self.rows: list[list[float]] = []
        self._pending: list[list[float]] = []

    def resume(self, step: int) -> None:
        """Load the rows up to `step` from an existing CSV and rewrite it atomically."""
        self.rows = [r for r in read_loss_csv(self.path, len(self.header)) if r[0] <= step]
        self._pending = []
        self._rewrite()

    def start(self) -> None:
        """A fresh run: an empty CSV with the header."""
        self.rows, self._pending = [], []
        self._rewrite()

    def add(
        self,
        step: int,
        loss: float,
        per_stage: list[float],
        lr: float,
        grad_norm: float,
        elapsed_s: float,
    ) -> None:
        row = [step, loss, *per_stage, lr, grad_norm, elapsed_s]
        self.rows.append(row)
        self._pending.append(row)

    def flush(self) -> None:
        if not self._pending:
            return
        with self.path.open("a", newline="") as handle:
            handle.write(_format_rows(self._pending))
        self._pending = []

    def _rewrite(self) -> None:
        out = io.StringIO()
        csv.writer(out).writerow(self.header)
        out.write(_format_rows(self.rows))
        atomic_write_bytes(self.path, out.getvalue().encode())

    def save_plot(self, path: Path) -> None:
        steps = [int(r[0]) for r in self.rows]
        series = {"loss": [r[1] for r in self.rows]}
        for k in range(self.num_stages):
            series[f"stage {k}"] = [r[2 + k] for r in self.rows]
        save_png(loss_curve(steps, series), path)


class AutoencoderLossLog(LossLog):
    """``loss.csv`` with columns step, loss, reconstruction, regularization, lr, grad_norm,
    elapsed_s (`LossLog` with two named loss columns in place of the per-stage ones)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, 0)
        self.header = [
            "step",
            "loss",
            "reconstruction",
            "regularization",
            "lr",
            "grad_norm",
            "elapsed_s",
        ]

    def save_plot(self, path: Path) -> None:
        steps = [int(r[0]) for r in self.rows]
        series = {"loss": [r[1] for r in self.rows], "reconstruction": [r[2] for r in self.rows]}
        save_png(loss_curve(steps, series), path)


def _format_rows(rows: list[list[float]]) -> str:
    lines = []
    for row in rows:
        cells = [str(int(row[0]))]
        cells += ["" if math.isnan(float(v)) else repr(float(v)) for v in row[1:]]
        lines.append(",".join(cells) + "\n")
    return "".join(lines)


def read_loss_csv(path: Path, width: int | None = None) -> list[list[float]]:
    """Rows of a loss CSV as floats (step first); missing values are NaN; torn lines skipped."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = width or (len(header) if header else 0)
        for cells in reader:
            if len(cells) != expected:
                continue
            try:
                rows.append([float(c) if c else math.nan for c in cells])
            except ValueError:
                continue
    return rows
