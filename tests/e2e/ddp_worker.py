"""Run by the DDP test under torchrun: train a tiny fdm-ds, then every rank saves its weights.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        ddp_worker.py RUN_DIR WEIGHTS_DIR [KEY=VALUE ...]

Further arguments are ``--set`` overrides (e.g. ``train.grad_accum=2``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from fdm_cli.config.train import resolve_train_config
from fdm_cli.training.loop import run_training


def main() -> None:
    run_dir, weights_dir = Path(sys.argv[1]), Path(sys.argv[2])
    flags = {"train.max_steps": 3, "train.batch_size": 8, "train.device": "cpu"}
    overrides = [
        "model.base_channels=8",
        "model.num_heads=2",
        "train.checkpoint_every=2",
        "sample.num=5",
        "sample.steps=3",
        "sample.strip_rows=2",
        "optim.warmup_steps=1",
        "train.dist_timeout_s=120",
        *sys.argv[3:],
    ]
    cfg = resolve_train_config(None, "fdm-ds", flags, overrides)
    result = run_training(cfg, run_dir, show_progress=False)
    rank = int(os.environ["RANK"])
    weights_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(weights_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
