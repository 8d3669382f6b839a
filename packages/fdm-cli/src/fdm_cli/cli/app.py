"""The `fdm` command (``python -m fdm_cli``): train, train-autoencoder, sample, eval,
super-resolve, deblur, data pack, plugins, env.

Exact commands::

    fdm train                                  # fdm-ds on embedded Fashion-MNIST (CPU, < 10 min)
    fdm train-autoencoder                      # 32 -> 4x8x8 autoencoder in runs/autoencoder
    fdm train --preset fdm-vae                 # f-DM-VAE with that autoencoder (ldm: the baseline)
    fdm train --preset ddpm --max-steps 2000 --out runs/ddpm
    fdm train config.yaml --set process.interpolation=false --dry-run
    fdm sample runs/fdm-ds --num 64 --out grid.png --strip strip.png
    fdm eval runs/fdm-ds --num 2000 --out metrics.json    # FID/KID against the test split
    fdm super-resolve runs/fdm-ds low.png --out sr/
    fdm deblur runs/fdm-blur-g blurred.png --out sharp/
    fdm data pack photos/ --out shards/ --resolution 64   # WebDataset shards for --data
    fdm train --preset fdm-ds-64 --data 'shards/shard-{000000..000009}.tar' --device cuda
    fdm plugins --json
    fdm env

User errors (bad flag, bad config, missing or corrupt file, invalid image, an output that
exists without ``--overwrite``) print one line and exit with status 2; ``--debug`` (anywhere on
the command line) or ``FDM_DEBUG=1`` shows the traceback instead. RELIABILITY.md lists them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fdm_cli.cli import env, evaluate, sample, train
from fdm_cli.cli.console import CommandGroup, set_debug
from fdm_cli.cli.data import data_app

app = typer.Typer(
    name="fdm",
    cls=CommandGroup,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="f-DM: multi-stage diffusion with progressive signal transformations "
    "(Gu et al., ICLR 2023).",
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """f-DM command-line interface."""
    set_debug(debug)


app.command()(train.train)
app.command("train-autoencoder")(train.train_autoencoder)
app.command()(sample.sample)
app.command("eval")(evaluate.eval_)
app.command("super-resolve")(sample.super_resolve)
app.command()(sample.deblur)
app.command()(env.plugins)
app.command()(env.env)
app.add_typer(data_app, name="data")  # fdm data pack


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``--debug`` is accepted anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[1:]:  # after the sub-command: move it to where the root option lives
        args = ["--debug", *(a for a in args if a != "--debug")]
    app(args=args, prog_name="fdm")


if __name__ == "__main__":
    main()
