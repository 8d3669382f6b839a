"""Two-process DDP (gloo on CPU) under torchrun: identical weights, one set of files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fdm_cli.artifacts.losslog import read_loss_csv

from .test_multinode import RUN_FILES

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _train_two_ranks(run_dir: Path, weights: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """ddp_worker.py on 2 ranks (`overrides`: KEY=VALUE sets); rank 0's final weights, after
    checking that rank 1 ended with the same."""
    worker = Path(__file__).with_name("ddp_worker.py")
    done = subprocess.run(
        [*TORCHRUN, str(worker), str(run_dir), str(weights), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rank0 = load_file(weights / "rank0.safetensors")
    rank1 = load_file(weights / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # one model on both ranks
    return rank0


@pytest.mark.slow
def test_two_ranks_train_identical_weights_and_write_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rank0 = _train_two_ranks(run_dir, tmp_path / "weights")
    # the run really trained: weights moved away from the seeded initialisation
    from fdm_cli.generation.sampling import load_model

    raw = load_model(run_dir, ema=False).unet.state_dict()
    assert all(torch.equal(raw[k], rank0[k]) for k in rank0)
    assert _files(run_dir) == RUN_FILES
    assert [r[0] for r in read_loss_csv(run_dir / "loss.csv")] == [1, 2, 3]
    # 5 samples split over 2 ranks (3 + 2) and gathered: a 3x2 grid, every tile filled
    grid = np.asarray(Image.open(run_dir / "samples" / "final.png"))
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2)
    tiles = [
        grid[2 + r * 34 : 34 + r * 34, 2 + c * 34 : 34 + c * 34]
        for r, c in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))
    ]
    assert all(t.std() > 1 for t in tiles)
    assert not np.array_equal(tiles[2], tiles[3])  # rank 0's last and rank 1's first differ


@pytest.mark.slow
def test_gradient_accumulation_under_ddp_gives_the_same_update(tmp_path: Path) -> None:
    """4 images per rank in 3 micro-batches (a micro-batch misses stages, so some heads go
    unused; the gradients are all-reduced with the last one only): the weights equal those of
    the same run without accumulation, up to AdamW's amplification of rounding (see
    tests/fdm_cli/test_accumulation_fp16.py)."""
    whole = _train_two_ranks(tmp_path / "a", tmp_path / "wa")
    micro = _train_two_ranks(tmp_path / "b", tmp_path / "wb", "train.grad_accum=3")
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
def test_fdm_train_command_under_torchrun(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # 2 images per rank < 3 stages: a rank may miss a stage's head, so DDP must be told to
    # look for unused parameters (train.find_unused_parameters=auto does it).
    args = [
        "-m",
        "fdm_cli",
        "train",
        "--out",
        str(run_dir),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--set",
        "model.base_channels=8",
        "--set",
        "model.num_heads=2",
        "--set",
        "sample.num=2",
        "--set",
        "sample.steps=3",
        "--set",
        "train.dist_timeout_s=120",
    ]
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("fdm train fdm-ds") == 1  # only rank 0 talks
    assert "on 2 x cpu" in done.stdout
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert [r[0] for r in read_loss_csv(run_dir / "loss.csv")] == [1, 2]
