"""Run by the multi-node test under torchrun: `fdm train` exactly as ``python -m fdm_cli`` runs
it, and a report of this rank (torchrun's environment, what it wrote under RUN_DIR, its weights).

    python -m torch.distributed.run --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d \
        --rdzv_endpoint localhost:PORT multinode_worker.py REPORT_DIR train --out RUN_DIR ...

Writes REPORT_DIR/rank{RANK}.json ({"env": ..., "writes": [[event, path under RUN_DIR], ...]})
and REPORT_DIR/rank{RANK}.safetensors (the trained UNet's raw weights). Writes are seen through
an audit hook: files opened for writing (``open``/``os.open``, so also atomic writes'
temporaries), renames, removals and new folders under RUN_DIR.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

ENV_KEYS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "shutil.rmtree"}


def main() -> None:
    report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    root = os.path.abspath(argv[argv.index("--out") + 1])
    writes: list[list[str]] = []

    def under_root(path: Any) -> str | None:
        if not isinstance(path, str | bytes | os.PathLike):
            return None  # a file descriptor
        full = os.path.abspath(os.fsdecode(path))
        return (
            os.path.relpath(full, root) if full == root or full.startswith(root + os.sep) else None
        )

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[2], int) and args[2] & WRITE_FLAGS:
            paths = args[:1]
        elif event in CHANGES:
            paths = args[:2] if event == "os.rename" else args[:1]
        else:
            return
        for path in paths:
            if (rel := under_root(path)) is not None:
                writes.append([event, rel])

    sys.addaudithook(audit)

    import fdm_cli.training.loop as train

    original = train.run_training
    trained: dict[str, Any] = {}

    def run_training(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        trained["model"] = result.model
        return result

    train.run_training = run_training  # `fdm train` imports it from the module when called
    sys.argv = ["fdm", *argv]
    try:
        runpy.run_module("fdm_cli", run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        rank = os.environ["RANK"]
        report_dir.mkdir(parents=True, exist_ok=True)
        report = {"env": {k: os.environ.get(k) for k in ENV_KEYS}, "writes": writes}
        (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in trained["model"].state_dict().items()}
    save_file(state, str(report_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
