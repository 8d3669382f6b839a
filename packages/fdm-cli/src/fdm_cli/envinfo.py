"""What `fdm plugins` and `fdm env` report: registered components and the software stack.

Both import every allowed plugin (a run imports them only when it needs one), and print every
plugin-supplied text (names, distributions, error messages) escaped, never as rich markup.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

KIND_TITLES = {
    "transform": "transforms",
    "noise_schedule": "noise schedules",
    "stage_schedule": "stage schedules",
}
PACKAGES = ("fdm-core", "fdm-models", "fdm-transforms", "fdm-cli")


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


def print_plugins(table: dict[str, Any], console: Console) -> None:
    grid = Table(title="fdm components (entry-point group 'fdm')")
    for column in ("kind", "name", "distribution", "version"):
        grid.add_column(column)
    for row in table["components"]:
        grid.add_row(
            KIND_TITLES.get(row["kind"], row["kind"]),
            *(escape(row[key]) for key in ("name", "distribution", "version")),
        )
    console.print(grid)
    for err in table["errors"]:
        console.print(f"[red]broken plugin[/] {escape(_error_line(err))}", markup=True)


def _error_line(err: dict[str, str]) -> str:
    return f"{err['plugin']} from {err['distribution']} {err['error']}; fix: {err['fix']}"


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
        "plugins": {
            "components": counts,
            "distributions": sorted({p["distribution"] for p in table["plugins"]}),
            "import_seconds": {
                f"{p['distribution']}:{p['module']}": p["import_seconds"] for p in table["plugins"]
            },
            "errors": table["errors"],
        },
    }


def print_environment(info: dict[str, Any], console: Console) -> None:
    grid = Table(show_header=False, title="fdm environment")
    grid.add_column("item", style="bold")
    grid.add_column("value")
    missing = "not installed"
    rows = [
        ("python", f"{info['python']} ({info['platform']})"),
        ("torch", f"{info['torch']} ({info['torch_threads']} CPU threads)"),
        ("triton", info["triton"] or missing),
        (
            "xformers",
            (info["xformers"] or missing)
            + ("" if info["xformers_importable"] or not info["xformers"] else " (does not import)"),
        ),
        (
            "CUDA",
            f"{info['cuda_version']}: {', '.join(info['cuda_devices'])}"
            if info["cuda_available"]
            else "not available",
        ),
        ("attention", ", ".join(f"{d}: {b}" for d, b in info["attention_backend"].items())),
        ("blur/resampling ops", " | ".join(f"{d}: {b}" for d, b in info["ops_backend"].items())),
    ]
    rows += [(name, version or missing) for name, version in info["packages"].items()]
    plugins = info["plugins"]
    rows.append(
        (
            "plugins",
            ", ".join(f"{n} {k.replace('_', ' ')}(s)" for k, n in plugins["components"].items())
            + f" from {', '.join(plugins['distributions'])}",
        )
    )
    slow = ", ".join(f"{name} {s:.2f} s" for name, s in plugins["import_seconds"].items())
    rows.append(("plugin import time", slow))
    for err in plugins["errors"]:
        rows.append(("broken plugin", _error_line(err)))
    for item, value in rows:
        grid.add_row(item, escape(str(value)))
    console.print(grid)


def report(data: Any, as_json: bool, show: Callable[[Any, Console], None]) -> None:
    """Print `data` as JSON, or with its rich printer (`fdm plugins`, `fdm env`)."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        show(data, Console(highlight=False))
