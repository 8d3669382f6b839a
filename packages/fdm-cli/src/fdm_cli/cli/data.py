"""``fdm data pack FOLDER --out DIR``: the flags checked here, the packing done by the API
(`fdm_cli.api.data.pack_shards`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fdm_cli.cli.console import CommandGroup, cli_errors
from fdm_cli.data import MANIFEST
from fdm_cli.errors import UserError

data_app = typer.Typer(
    cls=CommandGroup, no_args_is_help=True, help="Prepare training data (WebDataset shards)."
)


@data_app.command()
@cli_errors
def pack(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Folder for the shards and manifest.json.")],
    shard_size: Annotated[int, typer.Option(help="Images per shard.")] = 1000,
    resolution: Annotated[
        int | None, typer.Option(help="Bring each image to this size once (stored as PNG).")
    ] = None,
    keep_original: Annotated[
        bool, typer.Option(help="Store the original files (the default without --resolution).")
    ] = False,
    channels: Annotated[int | None, typer.Option(help="1 or 3 (default: follow the data).")] = None,
    fit: Annotated[str, typer.Option(help="auto, pad or resize (see fdm train).")] = "auto",
    strict: Annotated[
        bool, typer.Option(help="Refuse an unreadable image (else skipped).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the shards in a non-empty --out.")
    ] = False,
) -> None:
    """Pack an image folder into WebDataset tar shards with a manifest (count, SHA-256)."""
    if resolution is not None and keep_original:
        raise UserError("pass either --resolution or --keep-original, not both")
    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3 (got {channels})")
    if fit not in ("auto", "pad", "resize"):
        raise UserError(f"--fit must be auto, pad or resize (got {fit!r})")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    from fdm_cli.api.data import pack_shards
    from fdm_cli.artifacts.outputs import check_outputs

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the shards")
    if out.exists() and out.resolve() == folder.resolve():
        raise UserError(f"--out {out} is the image folder itself: choose another --out")
    empty = not out.exists() or not any(out.iterdir())
    if not (overwrite or empty):
        raise UserError(f"{out} already exists and holds files: pass --overwrite to replace them")
    check_outputs([out / MANIFEST], True, [folder])  # a writable folder, not one of the inputs
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    if resolution is not None and resolution < 1:
        raise UserError(f"--resolution must be at least 1 (got {resolution})")
    options = {"resolution": resolution, "channels": channels, "fit": fit, "strict": strict}
    manifest = pack_shards(folder, out, shard_size=shard_size, overwrite=True, **options)
    size = f"{resolution}x{resolution}" if resolution else "original size"
    typer.echo(
        f"packed {manifest['count']} images ({size}) into {len(manifest['shards'])} shard(s) "
        f"in {out}: fdm train --data {out}"
    )
