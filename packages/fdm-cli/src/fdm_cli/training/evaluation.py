"""The EMA model scored during training (``train.eval_every``): FID, KID, precision and recall,
``RUN_DIR/metrics.csv`` and, under ``train.keep_best``, ``RUN_DIR/model-best``.

Every ``eval_every`` steps `TrainingEvaluation.evaluate` samples ``train.eval_num`` images of
the EMA model (DDIM, ``train.eval_steps`` steps, eta 0; sample i uses noise seed
``sample.seed + i``, ``sample.batch_size`` at a time), split over the DDP ranks and gathered on
rank 0, which scores them exactly as ``fdm eval RUN_DIR --num eval_num --steps eval_steps
--seed sample.seed --batch-size sample.batch_size --ref eval_ref --ref-split eval_ref_split``
would score the same weights (`fdm_cli.evaluation.modeleval`: same network, reference statistics
cache and crop). The reference (``train.eval_ref``, default the training data) and the network
are checked, and the reference statistics computed, once, in `TrainingEvaluation.open`, before
the first step. The training RNG stream is untouched: sampling draws no global random numbers
(`fdm_core.StageNoise` is counter-based, the EMA copy is in eval mode), and the global CPU and
CUDA RNG states are restored after each evaluation all the same (a plugin's transform might).

metrics.csv (rank 0): ``step, fid, kid, kid_std, precision, recall, num, steps, seconds, best``,
one row per evaluation, floats written with ``repr``; ``steps`` are the sampler steps that ran
(at least one per stage), ``seconds`` the wall time of the evaluation (sampling, scoring and
model-best), ``best`` 1 when that model was saved as model-best. A resumed run keeps the rows
up to its checkpoint's step (a line without its newline, torn by a crash, is dropped) and reads
its best FIDs back from them: the lowest of all rows (shown), and the lowest of the rows saved
as model-best (the one to beat). A model-best saved after that checkpoint stays on disk until
an evaluation of the resumed run beats the best of the kept rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fdm_cli.config.files import is_command_or_url
from fdm_cli.config.train import TrainConfig
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_cli.evaluation.modeleval import (
    ModelReference,
    local_source,
    model_reference,
    reference_size,
    sample_images,
    score_samples,
)
from fdm_cli.generation.sampling import LoadedModel
from fdm_cli.runtime import distributed as dist_
from fdm_core import SamplerConfig, atomic_write, steps_per_stage

METRICS_FILE = "metrics.csv"
BEST_DIR = "model-best"
SCORES = ("fid", "kid", "kid_std", "precision", "recall")  # `fdm_cli.evaluation.modeleval.scores`
COLUMNS = ("step", *SCORES, "num", "steps", "seconds", "best")
INTEGER_COLUMNS = frozenset({"step", "num", "steps", "best"})

log = logging.getLogger(__name__)


@contextmanager
def kept_rng_state() -> Iterator[None]:
    """Restore torch's global CPU RNG state (and every CUDA device's, once CUDA is in use)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def format_row(row: dict[str, float]) -> str:
    """One CSV line of `COLUMNS` (with its newline): integers as such, floats with ``repr``."""
    cells = []
    for name in COLUMNS:
        value = float(row[name])
        if name in INTEGER_COLUMNS:
            cells.append(str(int(value)))
        else:
            cells.append("" if math.isnan(value) else repr(value))
    return ",".join(cells) + "\n"


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The complete rows of a metrics.csv (none when it is absent); a line without its newline
    (torn) or with other cells than `COLUMNS` is dropped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[1:-1]  # after the header; the last piece lacks its newline
    rows = []
    for line in lines:
        cells = line.split(",")
        if len(cells) != len(COLUMNS):
            continue
        try:
            values = [float(c) if c else math.nan for c in cells]
        except ValueError:
            continue
        rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


class TrainingEvaluation:
    """The evaluations of one run: the FID network and reference statistics (rank 0), the rows
    of metrics.csv and the best FID so far. Built by `open`; every rank calls `evaluate`."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        ctx: dist_.DistContext,
        network: torch.nn.Module | None,
        reference: ModelReference | None,
        rows: list[dict[str, float]],
    ) -> None:
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        self.network, self.reference = network, reference  # rank 0 only
        self.path = run_dir / METRICS_FILE
        finite = [r for r in rows if math.isfinite(r["fid"])]
        self.lowest = min((r["fid"] for r in finite), default=math.inf)
        self.best_saved = min((r["fid"] for r in finite if r["best"] == 1), default=math.inf)
        self.last_step = 0

    @classmethod
    def open(
        cls, cfg: TrainConfig, run_dir: Path, ctx: dist_.DistContext, resume_step: int | None
    ) -> TrainingEvaluation | None:
        """None without ``train.eval_every``. Otherwise, before any step: the FID network (a
        missing one is `fid.network_path`'s UserError), the reference (refused when it cannot be
        read or holds fewer than ``eval_num`` images; checked on every rank, so all stop alike),
        its statistics (rank 0, cached), and metrics.csv started (a fresh run) or cut back to
        `resume_step`'s rows (rank 0)."""
        opts = cfg.train
        if opts.eval_every is None:
            return None
        network = fid.load_fid_network()
        ref, split = opts.eval_ref or cfg.data.source, opts.eval_ref_split
        if opts.eval_ref is None and is_command_or_url(ref):
            raise UserError(
                f"train.eval_every: the training data {ref} is a command or URL; set "
                "train.eval_ref to the reference images (IDX files or an image folder)"
            )
        resolution, channels, fit = cfg.process.resolution, cfg.process.channels, cfg.data.fit
        held = reference_size(ref, split, resolution, channels, fit)
        if held < opts.eval_num:
            raise UserError(
                f"train.eval_num {opts.eval_num}: the evaluation's reference {ref} ({split}) "
                f"holds {held} images; lower train.eval_num or set train.eval_ref to a larger set"
            )
        if not ctx.is_main:
            return cls(cfg, run_dir, ctx, None, None, [])
        network.to(ctx.device)
        log.info("reference statistics of %s (%s, %d images)", ref, split, opts.eval_num)
        reference = model_reference(
            network, ref, split, opts.eval_num, resolution, channels,
            local_source(cfg.data.source), fit, batch_size=cfg.sample.batch_size,
        )  # fmt: skip
        rows = cls._kept_rows(run_dir / METRICS_FILE, resume_step)
        with atomic_write(run_dir / METRICS_FILE, "w") as handle:
            handle.write(",".join(COLUMNS) + "\n" + "".join(map(format_row, rows)))
        return cls(cfg, run_dir, ctx, network, reference, rows)

    @staticmethod
    def _kept_rows(path: Path, resume_step: int | None) -> list[dict[str, float]]:
        """A fresh run keeps no rows; a resumed one those up to its checkpoint's step."""
        if resume_step is None:
            return []
        rows = read_metrics(path)
        kept = [r for r in rows if r["step"] <= resume_step]
        if len(kept) < len(rows):
            log.info("%s: %d rows after step %d dropped", path, len(rows) - len(kept), resume_step)
        return kept

    def due(self, step: int) -> bool:
        """Whether the model is scored after `step`."""
        every = self.cfg.train.eval_every
        return every is not None and step % every == 0

    def evaluate(
        self, step: int, loaded: LoadedModel, save_best: Callable[[Path], None]
    ) -> dict[str, float]:
        """Sample and score `loaded` (every rank samples its share); on rank 0, append the row
        to metrics.csv and, under ``keep_best`` with a new lowest FID, call
        ``save_best(RUN_DIR/model-best)`` first. Returns the metrics (rank 0; {} elsewhere)."""
        opts, sample, ctx = self.cfg.train, self.cfg.sample, self.ctx
        t0 = time.perf_counter()
        config = SamplerConfig(steps=opts.eval_steps, eta=0.0)
        start, stop = dist_.shard(ctx, opts.eval_num)
        with kept_rng_state():
            local = sample_images(
                loaded, range(start, stop), sample.seed, config, sample.batch_size, ctx.device
            )
            images = dist_.gather_shards(ctx, local, opts.eval_num)
            if not ctx.is_main:
                return {}
            assert self.network is not None and self.reference is not None
            scored = score_samples(images, self.reference, self.network, sample.batch_size)
        value = scored["fid"]
        saved = opts.keep_best and math.isfinite(value) and value < self.best_saved
        if saved:
            save_best(self.run_dir / BEST_DIR)
            self.best_saved = value
        if math.isfinite(value):
            self.lowest = min(self.lowest, value)
        row = {
            "step": float(step),
            **scored,
            "num": float(opts.eval_num),
            "steps": float(sum(steps_per_stage(loaded.process, config))),
            "seconds": time.perf_counter() - t0,
            "best": float(saved),
        }
        with self.path.open("a") as handle:  # one write: a crash leaves at most a torn line
            handle.write(format_row(row))
        self.last_step = step
        metrics = {name: value for name, value in row.items() if name != "step"}
        return metrics | {"best_fid": self.lowest}

    def summary(self, metrics: dict[str, float]) -> str:
        """One line for the console ("" for another rank's empty metrics)."""
        if not metrics:
            return ""
        saved = "; model-best written" if metrics["best"] else ""
        return (
            f"step {self.last_step}: FID {metrics['fid']:.3f} (best {metrics['best_fid']:.3f}), "
            f"KID {metrics['kid']:.5f} ± {metrics['kid_std']:.5f}, precision "
            f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f} (N={int(metrics['num'])}, "
            f"{int(metrics['steps'])} steps), {metrics['seconds']:.1f} s{saved}"
        )
