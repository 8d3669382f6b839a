"""Two "nodes" (two torchrun agents, c10d rendezvous, gloo on CPU) train one model together.

Each torchrun runs one worker (``--nnodes 2 --nproc_per_node 1``), so LOCAL_RANK is 0 on both
and only RANK tells them apart, which is what goes wrong in multi-node code that confuses the
two. The workers run `fdm train` as ``python -m fdm_cli`` does (multinode_worker.py) into one
shared run folder. A single process then trains the same model on the same global batches: it
computes each step's two halves as the two ranks do (their images, their noise seeds) and
averages the gradients as DDP does (g0 / 2 + g1 / 2; a gradient no rank produced stays None).

Tolerances: every process runs one thread on the same shapes, so the losses agree to the last
bit (rel 1e-6 leaves room for another BLAS or gloo build), and so do the weights after step 1.
From step 2 on a few biases differ by up to ~3e-5 (the gradients of biases that feed a
GroupNorm are rounding noise around 0, and Adam scales an update by 1 / sqrt(v), so last-bit
differences there become visible); the weights are compared to lr / 10 = 1e-4. A rank that
draws other data or other noise moves the losses at once and the weights by about lr; one that
skips an optimizer step leaves the ranks' weights unequal; one that skips the gradient
all-reduce breaks the run (the next collectives mismatch); a non-zero rank that writes shows in
its audit (all tried once on purpose).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fdm_cli.artifacts.losslog import read_loss_csv
from fdm_cli.cli.app import app
from fdm_cli.config.train import resolve_train_config
from fdm_cli.errors import UserError
from fdm_cli.generation.sampling import load_model
from fdm_cli.runtime.distributed import DistContext, init_distributed
from fdm_cli.training.schedule import learning_rate
from fdm_cli.training.setup import setup

WORKER = Path(__file__).with_name("multinode_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
SETTINGS = [
    "train.max_steps=3",
    "train.batch_size=4",  # the global batch: 2 images per node
    "train.device=cpu",
    "train.threads=1",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.dist_timeout_s=60",  # a rank that misses a collective fails the test, not hangs it
    "model.base_channels=8",
    "model.num_heads=2",
    "optim.lr=0.001",  # the weights are compared to lr / 10
    "optim.warmup_steps=1",
    "sample.num=3",
    "sample.steps=3",
    "sample.strip_rows=2",
]
RUN_FILES = {
    "config.yaml",
    "loss.csv",
    "loss.png",
    "checkpoints/latest",
    "checkpoints/step-00000002.safetensors",
    "checkpoints/step-00000003.safetensors",
    "samples/step-00000002.png",
    "samples/strip-00000002.png",
    "samples/final.png",
    "samples/final-strip.png",
    "model/config.json",
    "model/model.safetensors",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _launch_two_nodes(run_dir: Path, reports: Path, logs: Path) -> list[str]:
    """Start two torchrun agents (node ranks 0 and 1) and wait for both; their stdouts."""
    port = _free_port()
    train = ["train", "--out", str(run_dir), "--no-progress"]
    for setting in SETTINGS:
        train += ["--set", setting]
    logs.mkdir()
    procs, outs = [], []
    try:
        for node in (0, 1):
            command = [
                *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"),
                *("--nproc_per_node", "1", "--node_rank", str(node), "--max_restarts", "0"),
                *("--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}"),
                *("--rdzv_conf", f"is_host={int(node == 0)}"),  # node 0 serves the rendezvous
                *("--rdzv_id", "fdm-multinode-test", str(WORKER), str(reports), *train),
            ]
            out, err = (logs / f"node{node}.out").open("w"), (logs / f"node{node}.err").open("w")
            outs += [out, err]
            procs.append(subprocess.Popen(command, stdout=out, stderr=err, text=True, env=ENV))
        deadline = time.monotonic() + 300
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in outs:
            f.close()
    errors = [(logs / f"node{n}.err").read_text()[-3000:] for n in (0, 1)]
    assert codes == [0, 0], "\n---\n".join(errors)
    return [(logs / f"node{n}.out").read_text() for n in (0, 1)]


def _single_process_reference(folder: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses and final raw weights of one process training on the same global batches: each
    step rank 0's and rank 1's halves (as `Run.batch` gives them to those ranks), gradients
    averaged as DDP averages them."""
    cfg = resolve_train_config(None, None, {}, SETTINGS)
    run = setup(cfg, folder, False, DistContext(), lambda *args, **kwargs: None)
    params = list(run.unet.parameters())
    losses = []
    while run.step < cfg.train.max_steps:
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, run.step, 0.0)
        rank_losses, rank_grads = [], []
        for rank in (0, 1):
            x, generator = replace(run, ctx=DistContext(rank=rank, world_size=2)).batch()
            run.optimizer.zero_grad(set_to_none=True)
            loss = run.module(run.loss.draw(x, generator)).loss
            loss.backward()
            rank_losses.append(float(loss.detach()))
            rank_grads.append([p.grad for p in params])
        for p, (g0, g1) in zip(params, zip(*rank_grads, strict=True), strict=True):
            halves = [g / 2 for g in (g0, g1) if g is not None]
            p.grad = halves[0] + halves[1] if len(halves) == 2 else (halves or [None])[0]
        clip = cfg.optim.grad_clip
        torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        run.optimizer.step()
        run.step += 1
        run.position += cfg.train.batch_size
        losses.append(sum(rank_losses) / 2)
    return losses, {k: v.detach().clone() for k, v in run.unet.state_dict().items()}


@pytest.mark.slow
def test_two_nodes_train_one_model_like_one_process(tmp_path: Path) -> None:
    run_dir, reports = tmp_path / "run", tmp_path / "reports"
    stdouts = _launch_two_nodes(run_dir, reports, tmp_path / "logs")

    # torchrun made one world of 2 out of two 1-process nodes (c10d picks which node is 0)
    envs = [json.loads((reports / f"rank{r}.json").read_text())["env"] for r in (0, 1)]
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert {e["GROUP_RANK"] for e in envs} == {"0", "1"}
    assert all(e["LOCAL_RANK"] == "0" and e["LOCAL_WORLD_SIZE"] == "1" for e in envs)
    assert all(e["WORLD_SIZE"] == "2" for e in envs)

    # one model: both ranks end with the same weights, the ones rank 0 checkpointed
    rank0 = load_file(reports / "rank0.safetensors")
    rank1 = load_file(reports / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_model(run_dir, ema=False).unet.state_dict()
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)

    # one set of files, written by global rank 0 alone (node 1's local rank 0 writes nothing)
    writes = [json.loads((reports / f"rank{r}.json").read_text())["writes"] for r in (0, 1)]
    assert writes[1] == [], writes[1][:10]
    renamed = {path for event, path in writes[0] if event == "os.rename"}
    # model/ is written as model.partial/ (each file renamed into place) and then renamed whole
    assert "model.partial" in renamed
    assert {p.replace("model.partial/", "model/") for p in renamed} >= RUN_FILES
    assert {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} == (
        RUN_FILES
    )
    assert sum(out.count("fdm train fdm-ds") for out in stdouts) == 1
    assert "batch 4 on 2 x cpu" in "".join(stdouts)

    # the same training as one process on the same global batches
    rows = read_loss_csv(run_dir / "loss.csv")
    assert [r[0] for r in rows] == [1, 2, 3]
    threads = torch.get_num_threads()
    try:
        losses, weights = _single_process_reference(tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    assert [r[1] for r in rows] == pytest.approx(losses, rel=1e-6, abs=0)
    assert weights.keys() == rank0.keys()
    for k in weights:
        torch.testing.assert_close(rank0[k], weights[k], rtol=0, atol=1e-4, msg=k)


def test_srun_tasks_without_torchrun_are_refused(tmp_path: Path, monkeypatch) -> None:
    """``srun -n 2 fdm train`` would start two independent runs writing one RUN_DIR."""
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError, match="one of 2 SLURM tasks but not a torchrun worker"):
        init_distributed("cpu")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("fdm: error: this process is one of 2 SLURM tasks")
    assert not run_dir.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # a torchrun worker (of a 1-process world) is fine
    assert not init_distributed("cpu").enabled
