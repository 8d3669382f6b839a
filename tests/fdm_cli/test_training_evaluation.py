"""The EMA model scored during training (``train.eval_every``, `fdm_cli.training.evaluation`).

The tiny stand-in FID network of test_eval.py is named by ``FDM_FID_NETWORK``, as a real network
file would be. Bugs caught: an in-training score that differs from `fdm eval`'s score of the same
weights (another seed, sampler, eta, crop, reference or network); metrics.csv rows that are not
kept, not cut back to the checkpoint's step on resume, or read back with a torn line; a best FID
not read back on resume; model-best written on an evaluation that is no improvement; a missing
network, an unreadable reference or one with too few images found only after training started;
an evaluation that moves the global RNG, or a training run whose steps differ when it evaluates;
ranks that do not split the sampling as one process would.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.config.train import TrainConfig
from fdm_cli.data.cache import CACHE_ENV as DATA_CACHE_ENV
from fdm_cli.data.dataset import EMBEDDED
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_cli.evaluation.evaluate import evaluate_model
from fdm_cli.generation.sampling import LoadedModel
from fdm_cli.runtime.distributed import DistContext
from fdm_cli.training import evaluation as evaluation_module
from fdm_cli.training.evaluation import (
    BEST_DIR,
    COLUMNS,
    METRICS_FILE,
    TrainingEvaluation,
    read_metrics,
)
from fdm_cli.training.loop import run_training, save_model
from fdm_core import FDMProcess, load_state
from fdm_models import EMA, MultiStageUNet

from .test_train import tiny_config

SCORES = ("fid", "kid", "kid_std", "precision", "recall")
# The sample grid's seed, batch, steps and eta differ from the evaluation's own defaults on
# purpose: the evaluation must take the seed and batch of `sample`, eval_steps and eta 0.
EVAL = {
    "train.eval_every": 2,
    "train.eval_num": 8,
    "train.eval_steps": 4,
    "sample.seed": 7,
    "sample.batch_size": 4,
    "sample.eta": 0.5,
}


def config(steps: int = 4, **sets: object) -> TrainConfig:
    """The tiny run of test_train.py, evaluated as `EVAL` says; a None in `sets` drops a key."""
    merged = {**EVAL, **sets}
    return tiny_config(steps, **{k: v for k, v in merged.items() if v is not None})


@pytest.fixture
def env(network_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in network, fresh FID and data caches; returns the FID cache folder."""
    monkeypatch.setenv(fid.NETWORK_ENV, str(network_file))
    monkeypatch.setenv(fid.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "data-cache"))
    return tmp_path / "cache" / "fid"


def tiny_model(cfg: TrainConfig, seed: int = 0) -> SimpleNamespace:
    """An untrained tiny UNet with random (not zero-initialised) weights, its EMA, and the
    pieces `save_model` reads of a run; ``.loaded()`` is the EMA model as the loop passes it."""
    torch.manual_seed(seed)
    unet = MultiStageUNet(cfg.model)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ema = EMA(unet, cfg.optim.ema_decay)
    process = FDMProcess(cfg.process)
    run = SimpleNamespace(cfg=cfg, unet=unet, ema=ema, step=0)
    run.loaded = lambda: LoadedModel(process, ema.averaged_model(unet), "ema")
    return run


def scripted(monkeypatch: pytest.MonkeyPatch, fids: list[float]) -> None:
    """Evaluations whose FIDs are `fids` in turn (other scores derived), sampling skipped."""
    values = iter(fids)

    def score(*args: object, **kwargs: object) -> dict[str, float]:
        v = next(values)
        return {"fid": v, "kid": v / 100, "kid_std": v / 1000, "precision": 0.5, "recall": 0.25}

    def sample(loaded: object, indices: range, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.zeros(len(indices), 1, 32, 32)

    monkeypatch.setattr(evaluation_module, "score_samples", score)
    monkeypatch.setattr(evaluation_module, "sample_images", sample)


def evaluate_steps(
    evaluation: TrainingEvaluation, steps: list[int], model: SimpleNamespace, saves: list[Path]
) -> list[dict[str, float]]:
    return [evaluation.evaluate(s, model.loaded(), saves.append) for s in steps]


# ---------------------------------------------------------------------------------------------
# The score is fdm eval's


def test_the_score_during_training_is_fdm_evals_score_of_the_same_weights(
    env: Path, tmp_path: Path
) -> None:
    cfg = config(**{"train.keep_best": True})
    model = tiny_model(cfg)
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None
    metrics = evaluation.evaluate(2, model.loaded(), lambda folder: save_model(model, folder))
    assert (tmp_path / BEST_DIR / "config.json").is_file()  # a MODEL_DIR of the EMA weights
    reference = evaluate_model(
        tmp_path / BEST_DIR, 8, steps=4, eta=0.0, seed=7, batch_size=4, ref=EMBEDDED,
        ref_split="test", device="cpu", threads=torch.get_num_threads(),
    )  # fmt: skip
    assert reference["crop"] == 28 and reference["steps"] == metrics["steps"]
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    for name in SCORES:
        assert metrics[name] == pytest.approx(reference[name], rel=1e-5, abs=1e-9), name
    assert metrics["num"] == 8 and metrics["seconds"] > 0 and metrics["best"] == 1
    assert len(list(env.glob("*.safetensors"))) == 1  # one reference cache entry, shared
    line = evaluation.summary(metrics)
    assert line.startswith("step 2: FID ") and "model-best written" in line


def test_reference_statistics_are_computed_once_per_run(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = evaluation_module.model_reference
    monkeypatch.setattr(
        evaluation_module, "model_reference", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cfg = config()
    model = tiny_model(cfg)
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None and calls == [1]
    first = evaluation.evaluate(2, model.loaded(), pytest.fail)  # no keep_best: never saved
    second = evaluation.evaluate(4, model.loaded(), pytest.fail)
    assert calls == [1] and first["fid"] == second["fid"]  # same weights, same samples
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == [2, 4]


# ---------------------------------------------------------------------------------------------
# metrics.csv and model-best


def test_metrics_rows_keep_best_and_the_cut_back_on_resume(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(**{"train.keep_best": True})
    model = tiny_model(cfg)
    path = tmp_path / METRICS_FILE
    scripted(monkeypatch, [5.0, 3.0, 4.0, 2.0 / 3.0, 3.5, 0.9, 0.5])
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None and path.read_text() == ",".join(COLUMNS) + "\n"
    saves: list[Path] = []
    results = evaluate_steps(evaluation, [2, 4, 6, 8], model, saves)
    assert saves == [tmp_path / BEST_DIR] * 3  # at 2, 4 and 8: not at 6 (4.0 > 3.0)
    assert [m["best"] for m in results] == [1, 1, 0, 1]
    assert [m["best_fid"] for m in results] == [5.0, 3.0, 3.0, 2.0 / 3.0]
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [2, 4, 6, 8] and [r["best"] for r in rows] == [1, 1, 0, 1]
    assert rows[3]["fid"] == 2.0 / 3.0  # repr: every digit
    assert all(r["num"] == 8 and r["steps"] == 4 and r["seconds"] > 0 for r in rows)
    assert path.read_text().splitlines()[4].startswith("8,0.6666666666666666,")

    # Resumed from the checkpoint of step 4: rows 6 and 8 are gone, the best is 3.0 again.
    resumed = TrainingEvaluation.open(cfg, tmp_path, DistContext(), 4)
    assert resumed is not None
    assert [r["step"] for r in read_metrics(path)] == [2, 4]
    assert len(path.read_text().splitlines()) == 3  # header + 2: the file itself was cut
    saves.clear()
    results = evaluate_steps(resumed, [6, 8], model, saves)  # 3.5: no; 0.9: a new best
    assert saves == [tmp_path / BEST_DIR] and [m["best"] for m in results] == [0, 1]
    assert [r["step"] for r in read_metrics(path)] == [2, 4, 6, 8]

    # A line torn by a crash (no newline) is dropped on read: its FID 0.1 is not the best.
    with path.open("a") as handle:
        handle.write("10,0.1,0.001,0.0001,0.5,0.25,8,4,1.5,1")
    assert [r["step"] for r in read_metrics(path)] == [2, 4, 6, 8]
    again = TrainingEvaluation.open(cfg, tmp_path, DistContext(), 10)
    assert again is not None and path.read_text().endswith("\n")
    saves.clear()
    assert evaluate_steps(again, [10], model, saves)[0]["best"] == 1  # 0.5 < 0.9
    assert [r["step"] for r in read_metrics(path)] == [2, 4, 6, 8, 10]


def test_a_fresh_run_starts_metrics_afresh_and_other_ranks_write_nothing(
    env: Path, tmp_path: Path
) -> None:
    (tmp_path / METRICS_FILE).write_text(",".join(COLUMNS) + "\n2,1.0,0,0,0,0,8,4,1.0,1\n")
    cfg = config()
    other = TrainingEvaluation.open(cfg, tmp_path / "rank1", DistContext(rank=1, world_size=2), 0)
    assert other is not None and not (tmp_path / "rank1").exists() and not env.exists()
    assert other.summary({}) == ""
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None and read_metrics(tmp_path / METRICS_FILE) == []
    assert TrainingEvaluation.open(tiny_config(4), tmp_path, DistContext(), None) is None
    assert evaluation.due(4) and not evaluation.due(5)


# ---------------------------------------------------------------------------------------------
# Refused before training


def test_a_missing_network_is_refused_at_open(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fid.NETWORK_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match=r"FDM_FID_NETWORK=.*no such file"):
        TrainingEvaluation.open(config(), tmp_path / "run", DistContext(), None)
    monkeypatch.delenv(fid.NETWORK_ENV)
    monkeypatch.setattr(fid, "NETWORK_PACKAGE", "fdm_no_such_fid_package")
    with pytest.raises(UserError) as caught:
        TrainingEvaluation.open(config(), tmp_path / "run", DistContext(), None)
    assert str(caught.value) == fid.INSTALL_HINT
    assert not (tmp_path / "run").exists() and not env.exists()


def test_a_missing_network_stops_fdm_train_before_its_first_step(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fid.NETWORK_ENV, str(tmp_path / "nope.pt"))
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="no such file"):
        run_training(config(), run_dir, show_progress=False)
    assert not (run_dir / ckpt.CHECKPOINTS).exists() and not read_loss_csv(run_dir / "loss.csv")


def _images(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.new("L", (28, 28), 20 * i).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize(
    ("count", "message"),
    [(5, "train.eval_num 8: the evaluation's reference .* holds 5 images"), (None, "not found")],
)
def test_a_reference_with_too_few_images_is_refused_at_open(
    count: int | None, message: str, env: Path, tmp_path: Path
) -> None:
    ref = _images(tmp_path / "ref", count) if count else tmp_path / "no-such-folder"
    cfg = config(**{"train.eval_ref": str(ref)})
    with pytest.raises(UserError, match=message):
        TrainingEvaluation.open(cfg, tmp_path / "run", DistContext(), None)
    assert not (tmp_path / "run").exists() and not env.exists()
    if count:  # eight images are enough
        for i in range(count, 8):
            Image.new("L", (28, 28), 10 * i).save(ref / f"{i}.png")
        assert TrainingEvaluation.open(cfg, tmp_path / "run", DistContext(), None) is not None


# ---------------------------------------------------------------------------------------------
# The training RNG stream


def test_evaluate_leaves_the_global_rng_state_as_it_found_it(env: Path, tmp_path: Path) -> None:
    cfg = config()
    model = tiny_model(cfg)
    loaded = model.loaded()
    draws = []  # a network (a plugin's transform) that draws from the global RNG
    loaded.unet.register_forward_pre_hook(lambda module, args: draws.append(torch.rand(())))
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    metrics = evaluation.evaluate(2, loaded, pytest.fail)
    assert draws and math.isfinite(metrics["fid"])
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_that_evaluates_trains_the_same_steps(env: Path, tmp_path: Path) -> None:
    plain = run_training(
        config(4, **{"train.eval_every": None}), tmp_path / "a", show_progress=False
    )
    scored = run_training(
        config(4, **{"train.keep_best": True}), tmp_path / "b", show_progress=False
    )
    assert plain.step == scored.step == 4 and scored.evaluation_s > 0
    a, b = (load_state(ckpt.latest_checkpoint(tmp_path / r))[0] for r in "ab")
    for group in ("model", "ema"):
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), (group, name)
    rows_a, rows_b = (read_loss_csv(tmp_path / r / "loss.csv") for r in "ab")
    assert [r[:-1] for r in rows_a] == [r[:-1] for r in rows_b]  # all but the elapsed seconds
    rows = read_metrics(tmp_path / "b" / METRICS_FILE)
    assert [r["step"] for r in rows] == [2, 4] and rows[0]["best"] == 1
    saved = json.loads((tmp_path / "b" / BEST_DIR / "config.json").read_text())
    best_step = max(int(r["step"]) for r in rows if r["best"] == 1)
    assert saved["fdm"]["step"] == best_step


# ---------------------------------------------------------------------------------------------
# DDP: the ranks split the sampling


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, run_dir: str, out: str) -> None:
    """One gloo rank of `test_ranks_split_the_sampling_as_one_process_would`."""
    import torch.distributed as dist

    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = DistContext(rank, 2, rank, torch.device("cpu"), "gloo")
        cfg = config()
        evaluation = TrainingEvaluation.open(cfg, Path(run_dir), ctx, None)
        assert evaluation is not None
        metrics = evaluation.evaluate(2, tiny_model(cfg).loaded(), lambda folder: None)
        if rank == 0:
            Path(out).write_text(json.dumps(metrics))
        else:
            assert metrics == {}
    finally:
        dist.destroy_process_group()


def test_ranks_split_the_sampling_as_one_process_would(env: Path, tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(
        _rank, (_free_port(), str(tmp_path / "ddp"), str(out)), nprocs=2, join=True
    )
    cfg = config()
    evaluation = TrainingEvaluation.open(cfg, tmp_path, DistContext(), None)
    assert evaluation is not None
    single = evaluation.evaluate(2, tiny_model(cfg).loaded(), pytest.fail)
    ranks = json.loads(out.read_text())
    for name in SCORES:
        assert ranks[name] == pytest.approx(single[name], rel=1e-5, abs=1e-9), name
    assert [r["step"] for r in read_metrics(tmp_path / "ddp" / METRICS_FILE)] == [2]
