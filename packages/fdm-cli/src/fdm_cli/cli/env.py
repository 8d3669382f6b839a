"""`fdm plugins` and `fdm env` on the console: every plugin-supplied text (names, distributions,
error messages) printed escaped, never as rich markup."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fdm_cli.cli.console import cli_errors
from fdm_cli.cli.options import JsonOpt

KIND_TITLES = {
    "transform": "transforms",
    "noise_schedule": "noise schedules",
    "stage_schedule": "stage schedules",
}


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
    trackers = [f"{name} {version}" for name, version in info["trackers"].items() if version]
    rows.append(("trackers (--log)", ", ".join(trackers) or "none installed"))
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


@cli_errors
@cli_errors
def plugins(
    as_json: JsonOpt = False,
) -> None:
    """List every registered transform and schedule with the distribution that provides it."""
    from fdm_cli.runtime.environment import plugin_table

    report(plugin_table(), as_json, print_plugins)


@cli_errors
def env(
    as_json: JsonOpt = False,
) -> None:
    """Versions and capabilities: python, torch, triton, xformers, CUDA, attention, plugins."""
    from fdm_cli.runtime.environment import environment

    report(environment(), as_json, print_environment)
