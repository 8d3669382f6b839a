"""What `fdm plugins` and `fdm env` report, as data: registered components and the software stack.

Both import every allowed plugin (a run imports them only when it needs one); `fdm_cli.cli.env`
prints the result, every plugin-supplied text escaped.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("fdm-core", "fdm-models", "fdm-transforms", "fdm-cli")
TRACKERS = ("tensorboard", "wandb")  # the packages behind `fdm train --log` (fdm-cli extras)


def plugin_table() -> dict[str, Any]:
    """{"components": [{kind, name, distribution, version}], "plugins": [...], "errors": [...]}."""
    from fdm_core import get_registry

    registry = get_registry()
    registry.load_external()
    components = [
        {"kind": kind, "name": name, "distribution": entry.distribution, "version": entry.version}
        for kind, table in registry.entries.items()
        for name, entry in sorted(table.items())
    ]
    plugins = [
        {
            "module": module,
            "distribution": dist,
            "version": ver,
            "import_seconds": round(registry.import_seconds.get(f"{dist}:{module}", 0.0), 3),
        }
        for module, dist, ver in registry.plugins
    ]
    errors = [
        {"plugin": e.plugin, "distribution": e.distribution, "error": e.error, "fix": e.fix}
        for e in registry.errors
    ]
    return {"components": components, "plugins": plugins, "errors": errors}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions of python, torch, triton, xformers and the fdm packages; CUDA, attention and the
    backend of the blur / resampling ops."""
    import torch

    from fdm_models import resolve_attention_backend, xformers_available, xformers_failure
    from fdm_models.ops import ops_summary

    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    devices = [torch.cuda.get_device_name(i) for i in range(count)]
    attention: dict[str, str] = {}
    ops: dict[str, str] = {}
    for device in ["cpu"] + (["cuda"] if cuda else []):
        try:
            ops[device] = ops_summary(device)
        except Exception as exc:  # e.g. FDM_OPS_BACKEND=triton without triton
            ops[device] = f"error: {exc}"
        try:
            attention[device] = resolve_attention_backend("auto", device)
            reason = xformers_failure(torch.device(device)) if xformers_available() else None
            if device == "cuda" and reason:  # installed, but auto cannot use it: say why
                attention[device] += f" ({reason})"
        except Exception as exc:  # report, never fail: this is a diagnostic command
            attention[device] = f"error: {exc}"
    table = plugin_table()
    counts: dict[str, int] = {}
    for row in table["components"]:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "triton": _version("triton"),
        "xformers": _version("xformers"),
        "xformers_importable": xformers_available(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_devices": devices,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()) or not cuda,
        "attention_backend": attention,
        "ops_backend": ops,
        "packages": {name: _version(name) for name in PACKAGES},
        "trackers": {name: _version(name) for name in TRACKERS},
        "plugins": {
            "components": counts,
            "distributions": sorted({p["distribution"] for p in table["plugins"]}),
            "import_seconds": {
                f"{p['distribution']}:{p['module']}": p["import_seconds"] for p in table["plugins"]
            },
            "errors": table["errors"],
        },
    }
