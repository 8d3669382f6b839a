"""The experiment trackers of `fdm train` (fdm_cli.training.tracking): TensorBoard's event files
read back (values, steps, images, the points after a checkpoint purged on resume), W&B through a
fake module (its init arguments, the run id kept for resume, the ``step`` metric) and once for
real offline, the missing-package refusal, rank 0 only, and a failing tracker dropped with one
warning while the others go on."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fdm_cli.errors import UserError
from fdm_cli.training import tracking
from fdm_cli.training.tracking import Trackers, check_trackers, open_trackers

CONFIG = {"model": {"base_channels": 8}, "train": {"lr": 0.001, "trackers": ["tensorboard"]}}


def png(path: Path, size: tuple[int, int], color: Any, mode: str = "RGB") -> Path:
    Image.new(mode, size, color).save(path)
    return path


def events(run_dir: Path) -> Any:
    """RUN_DIR/tensorboard read back as TensorBoard reads it (every point kept)."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def points(acc: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def log_steps(trackers: Trackers, steps: range, scale: float) -> None:
    for s in steps:
        trackers.scalars(s, {"train/loss": scale / s, "train/lr": 0.1 * s})


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event files made from now on are named an hour later, as a resumed process's are (files
    are read in name order: creation second, host, pid, then a counter that sorts as text)."""
    writer = pytest.importorskip("tensorboard.summary.writer.event_file_writer")
    shifted = types.SimpleNamespace(time=lambda: time.time() + 3600)
    monkeypatch.setattr(writer, "time", shifted)


def test_tensorboard_scalars_images_and_config(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    grid = png(tmp_path / "grid.png", (6, 4), (255, 0, 0))
    strip = png(tmp_path / "strip.png", (5, 3), 128, mode="L")  # gray: sent as RGB
    trackers = open_trackers(["tensorboard"], tmp_path, CONFIG, None, True)
    assert trackers
    log_steps(trackers, range(1, 7), 1.0)
    trackers.scalars(6, {"train/loss_stage1": math.nan})  # a stage without rows: kept as NaN
    trackers.images(6, {"samples/grid": grid, "samples/strip": strip})
    trackers.close()

    acc = events(tmp_path)
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/lr", "train/loss_stage1"}
    assert points(acc, "train/loss") == [(s, pytest.approx(1.0 / s)) for s in range(1, 7)]
    assert points(acc, "train/lr") == [(s, pytest.approx(0.1 * s)) for s in range(1, 7)]
    [(step, nan)] = points(acc, "train/loss_stage1")
    assert step == 6 and math.isnan(nan)
    assert set(tags["images"]) == {"samples/grid", "samples/strip"}
    for tag, size, pixel in (("samples/grid", (6, 4), (255, 0, 0)), ("samples/strip", (5, 3), 128)):
        [event] = acc.Images(tag)
        assert (event.step, event.width, event.height) == (6, *size)
        shown = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
        assert shown.size == size
        assert shown.getpixel((0, 0)) == (pixel if isinstance(pixel, tuple) else (pixel,) * 3)
    [config] = acc.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert config.step == 0 and '"base_channels": 8' in text


def test_tensorboard_resume_drops_what_followed_the_checkpoint(tmp_path: Path, later: None) -> None:
    trackers = open_trackers(["tensorboard"], tmp_path, CONFIG, None, True)
    log_steps(trackers, range(1, 7), 1.0)  # steps 5 and 6 are lost: the checkpoint was step 4
    trackers.close()
    resumed = open_trackers(["tensorboard"], tmp_path, CONFIG, 4, True)
    log_steps(resumed, range(5, 9), 100.0)
    resumed.close()

    acc = events(tmp_path)
    expected = [(s, pytest.approx((1.0 if s <= 4 else 100.0) / s)) for s in range(1, 9)]
    assert points(acc, "train/loss") == expected
    assert [step for step, _ in points(acc, "train/lr")] == list(range(1, 9))
    assert len(acc.Tensors("config/text_summary")) == 1  # written by the fresh run only


def test_check_trackers_names_the_extra_of_a_missing_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = {"wandb"}

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in missing else object()

    monkeypatch.setattr(tracking.importlib.util, "find_spec", find_spec)
    check_trackers([])
    check_trackers(["tensorboard"])
    with pytest.raises(UserError) as err:
        check_trackers(["tensorboard", "wandb"])
    message = str(err.value)
    assert "train.trackers: wandb" in message and "pip install 'fdm-cli[wandb]'" in message
    assert "\n" not in message
    missing = {"tensorboard"}
    with pytest.raises(UserError, match=r"pip install 'fdm-cli\[tensorboard\]'"):
        check_trackers(["tensorboard"])
    with pytest.raises(UserError, match=r"train\.trackers: mlflow unknown"):
        check_trackers(["mlflow"])


def test_no_trackers_off_rank_zero_or_when_none_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail (and warn)
    caplog.set_level(logging.WARNING)
    trackers = open_trackers(["tensorboard", "wandb"], tmp_path, CONFIG, None, False)
    assert not trackers
    none = open_trackers([], tmp_path, CONFIG, 4, True)
    assert not none and not Trackers()
    for t in (trackers, none):
        t.scalars(1, {"train/loss": 1.0})
        t.images(1, {"samples/grid": tmp_path / "absent.png"})
        t.close()
    assert list(tmp_path.iterdir()) == [] and caplog.records == []


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.closed = 0

    def scalars(self, step: int, values: Any) -> None:
        self.calls.append(("scalars", step, dict(values)))

    def images(self, step: int, images: Any) -> None:
        self.calls.append(("images", step, dict(images)))

    def close(self) -> None:
        self.closed += 1


class Broken(Recorder):
    name = "broken"

    def scalars(self, step: int, values: Any) -> None:
        if step >= 2:
            raise ConnectionError("server gone")
        super().scalars(step, values)


def test_a_failing_tracker_is_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fdm_cli.training.tracking")
    broken, good = Broken(), Recorder()
    trackers = Trackers([broken, good])
    for step in (1, 2, 3):
        trackers.scalars(step, {"train/loss": float(step)})
    trackers.images(3, {"samples/grid": Path("grid.png")})
    assert [(kind, step) for kind, step, _ in good.calls] == [
        ("scalars", 1),
        ("scalars", 2),
        ("scalars", 3),
        ("images", 3),
    ]
    assert [step for _, step, _ in broken.calls] == [1] and broken.closed == 1
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "broken" in warning.getMessage() and "ConnectionError: server gone" in (
        warning.getMessage()
    )
    assert trackers
    trackers.close()
    trackers.close()  # the loop and its caller may both close
    trackers.scalars(4, {"train/loss": 4.0})
    assert not trackers and good.closed == 1 and broken.closed == 1 and len(good.calls) == 4


class FakeWandb(types.ModuleType):
    """The parts of `wandb` the tracker uses, recording what it is given."""

    class Image:
        def __init__(self, path: str) -> None:
            self.path = path

    class Run:
        def __init__(self) -> None:
            self.metrics: list[tuple[str, dict[str, Any]]] = []
            self.logged: list[dict[str, Any]] = []
            self.finished = False

        def define_metric(self, name: str, **kwargs: Any) -> None:
            self.metrics.append((name, kwargs))

        def log(self, data: dict[str, Any], **kwargs: Any) -> None:
            assert not kwargs  # no step= of W&B's own: it refuses steps that go back
            self.logged.append(data)

        def finish(self) -> None:
            self.finished = True

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict[str, Any]] = []
        self.runs: list[FakeWandb.Run] = []
        self.fail: Exception | None = None

    def init(self, **kwargs: Any) -> FakeWandb.Run:
        if self.fail is not None:
            raise self.fail
        self.inits.append(kwargs)
        self.runs.append(FakeWandb.Run())
        return self.runs[-1]


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return fake


def saved_id(run_dir: Path) -> str:
    return json.loads((run_dir / "wandb-run.json").read_text())["id"]


def test_wandb_run_steps_and_id_kept_for_resume(
    tmp_path: Path, fake_wandb: FakeWandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    grid = png(tmp_path / "grid.png", (4, 4), (0, 0, 255))
    trackers = open_trackers(["wandb"], run_dir, CONFIG, None, True)
    trackers.scalars(3, {"train/loss": 0.5, "perf/images_per_s": 12})
    trackers.images(3, {"samples/grid": grid})
    trackers.close()

    [init] = fake_wandb.inits
    run_id = saved_id(run_dir)
    assert init == {
        "project": "fdm",
        "name": "run-a",
        "dir": str(run_dir),
        "config": CONFIG,
        "id": run_id,
        "resume": "allow",
    }
    assert len(run_id) == 8 and run_id.isalnum() and run_id.islower()
    run = fake_wandb.runs[0]
    assert run.metrics == [("step", {}), ("*", {"step_metric": "step"})]
    assert run.logged[0] == {"step": 3, "train/loss": 0.5, "perf/images_per_s": 12.0}
    assert run.logged[1]["step"] == 3 and run.logged[1]["samples/grid"].path == str(grid)
    assert run.finished

    monkeypatch.setenv("WANDB_PROJECT", "mine")
    resumed = open_trackers(["wandb"], run_dir, CONFIG, 4, True)
    resumed.scalars(2, {"train/loss": 0.7})  # a step at or below the last one is logged too
    resumed.close()
    assert fake_wandb.inits[1]["id"] == run_id == saved_id(run_dir)
    assert fake_wandb.inits[1]["project"] == "mine"
    assert fake_wandb.runs[1].logged == [{"step": 2, "train/loss": 0.7}]

    open_trackers(["wandb"], run_dir, CONFIG, None, True).close()  # a fresh run: a new W&B run
    assert fake_wandb.inits[2]["id"] == saved_id(run_dir) != run_id


def test_wandb_damaged_id_file_or_failed_init(
    tmp_path: Path, fake_wandb: FakeWandb, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fdm_cli.training.tracking")
    (tmp_path / "wandb-run.json").write_text('{"id": ')
    open_trackers(["wandb"], tmp_path, CONFIG, 4, True).close()
    assert fake_wandb.inits[0]["id"] == saved_id(tmp_path)
    assert "wandb-run.json unreadable" in caplog.records[0].getMessage()

    caplog.clear()
    pytest.importorskip("tensorboard")
    fake_wandb.fail = RuntimeError("api_key not configured")
    trackers = open_trackers(["wandb", "tensorboard"], tmp_path, CONFIG, None, True)
    [warning] = caplog.records
    assert "wandb could not be opened" in warning.getMessage()
    assert "api_key not configured" in warning.getMessage()
    trackers.scalars(1, {"train/loss": 1.0})  # TensorBoard still logs
    trackers.close()
    assert points(events(tmp_path), "train/loss") == [(1, 1.0)]


def test_wandb_offline_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("wandb")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb-artifacts"),
    }.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="fdm_cli.training.tracking")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    grid = png(tmp_path / "grid.png", (4, 4), (0, 255, 0))
    for resume_step in (None, 2):
        if resume_step is not None:  # offline folders are named by the second their run starts
            time.sleep(1.01 - time.time() % 1)
        trackers = open_trackers(["wandb"], run_dir, CONFIG, resume_step, True)
        log_steps(trackers, range(1, 4), 1.0)
        trackers.images(3, {"samples/grid": grid})
        assert trackers  # nothing raised: still open
        trackers.close()
    assert caplog.records == []
    run_id = saved_id(run_dir)
    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2  # the resumed run: the same id, its own offline folder
    for folder in folders:
        data = (folder / f"run-{run_id}.wandb").read_bytes()
        assert b"train/loss" in data and b"samples/grid" in data
