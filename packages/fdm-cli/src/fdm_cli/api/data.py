"""Data from Python: a source opened as `fdm train` reads it (docs/design.md §14), and an image
folder packed into WebDataset tar shards as `fdm data pack` does.

Example::

    import fdm_cli

    data = fdm_cli.open_data("photos/", 64, seed=0, hflip=True)   # decoded once into a cache
    x = data.batch(0, 16)                                          # (16, 3, 64, 64) in [-1, 1]
    manifest = fdm_cli.pack_shards("photos/", "shards/", resolution=64)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from fdm_cli.api.common import check_positive
from fdm_cli.artifacts.outputs import check_outputs
from fdm_cli.config.train import DataConfig
from fdm_cli.data import MANIFEST, Fit
from fdm_cli.data.dataset import load_dataset, probe_channels
from fdm_cli.data.packing import pack_folder, remove_stale_temporaries
from fdm_cli.data.shards import is_shard_source
from fdm_cli.errors import UserError, format_validation_error
from fdm_cli.training.data import IndexedData, TrainingData, open_training_data

PathLike = str | os.PathLike[str]
FITS = ("auto", "pad", "resize")

__all__ = ["DataStream", "open_data", "pack_shards"]


@dataclass
class DataStream:
    """A data source opened as `fdm train` reads it: an endless, seeded stream of batches.

    For the embedded Fashion-MNIST, a folder or IDX files, position p of the stream is image
    ``perm_e[p mod N]`` of epoch ``e = p // N`` (a seeded permutation per epoch, a seeded flip
    per position), so a batch is a function of (seed, position); tar shards are read in a
    seeded shard order through a shuffle buffer (docs/design.md §14).
    """

    source: str
    resolution: int
    channels: int
    stream: TrainingData

    def __len__(self) -> int:
        """Images in the source (tar shards without a manifest: 0, unknown)."""
        return len(self.stream)

    def batch(self, position: int, count: int) -> torch.Tensor:
        """Images ``position .. position + count - 1`` of the stream, ``(count, C, R, R)``
        float32 in [-1, 1] (tar shards: read forward, so positions should increase)."""
        check_positive(count=count)
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise UserError(f"position {position!r}: must be a non-negative integer")
        return self.stream.rank_batch(position, count, 0, 1)


def _check_choices(channels: int | None, fit: str) -> None:
    if channels not in (None, 1, 3):
        raise UserError(f"`channels` {channels!r}: must be 1, 3 or None (follow the data)")
    if fit not in FITS:
        raise UserError(f"`fit` {fit!r}: must be one of {', '.join(FITS)}")


def open_data(
    source: PathLike,
    resolution: int,
    *,
    channels: int | None = None,
    fit: Fit = "auto",
    seed: int = 0,
    hflip: bool = False,
    strict: bool = False,
    cache_dir: PathLike | None = None,
    in_memory: bool = False,
) -> DataStream:
    """`source` (``fashion-mnist``, an image folder, IDX files, or tar shards: a brace pattern,
    a tar, a ``pipe:`` URL, an `fdm data pack` folder) at `resolution`, as `fdm train --data`
    opens it: `channels` None follows the data (1 if every image is gray, else 3); `fit`
    "auto" pads small differences (28 -> 32) and resizes + centre-crops the rest; `hflip`
    flips at seeded positions; `strict` refuses an unreadable image instead of skipping it.
    A folder or IDX file is decoded once into the data cache (`cache_dir`, default
    ``$FDM_DATA_CACHE`` or ``~/.cache/fdm/data``) and read from it; `in_memory` decodes it into
    memory instead (not for tar shards)."""
    check_positive(resolution=resolution)
    _check_choices(channels, fit)
    try:
        data = DataConfig(
            source=str(source),
            channels=channels or "auto",
            fit=fit,
            hflip=hflip,
            strict=strict,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except ValidationError as exc:
        raise UserError(f"invalid data settings: {format_validation_error(exc)}") from None
    found = probe_channels(data.source, channels)
    if not in_memory:
        stream = open_training_data(data, resolution, found, seed)
    elif is_shard_source(data.source):
        raise UserError(f"in_memory: {data.source} is tar shards, read as a stream only")
    else:
        dataset = load_dataset(data.source, resolution, found, fit, strict)
        stream = IndexedData(dataset, seed, hflip)
    return DataStream(data.source, resolution, found, stream)


def pack_shards(
    folder: PathLike,
    out: PathLike,
    *,
    shard_size: int = 1000,
    resolution: int | None = None,
    channels: int | None = None,
    fit: Fit = "auto",
    strict: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pack the image folder `folder` (searched recursively) into WebDataset tar shards of
    `shard_size` images in `out`, as `fdm data pack` does (`fdm_cli.data.packing`): each image
    brought to `resolution` once (PNG; `channels`, `fit` as in `open_data`), or with
    `resolution` None the original files; unreadable images are skipped unless `strict`. A
    non-empty `out` is refused unless `overwrite` (its old shards are then replaced). Returns
    the manifest written to ``out/manifest.json`` (count, resolution, each shard's SHA-256);
    `open_data(out, ...)` reads the shards."""
    folder, out = Path(folder), Path(out)
    check_positive(shard_size=shard_size)
    if resolution is not None:
        check_positive(resolution=resolution)
    _check_choices(channels, fit)
    if not folder.is_dir():
        raise UserError(f"`folder` {folder}: not a folder of images")
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file: give a folder for the shards")
    if out.exists() and out.resolve() == folder.resolve():
        raise UserError(f"`out` {out} is the image folder itself: choose another `out`")
    empty = not out.exists() or not any(out.iterdir())
    if not (overwrite or empty):
        raise UserError(f"`out` {out} already holds files: pass `overwrite=True` to replace them")
    check_outputs([out / MANIFEST], True, [folder], "`out`")  # writable, not one of the inputs
    if not empty:
        (out / MANIFEST).unlink(missing_ok=True)  # the old shards are no longer a data set
        remove_stale_temporaries(out)
    manifest = pack_folder(folder, out, shard_size, resolution, channels, fit, strict)
    written = {s["name"] for s in manifest["shards"]}
    for old in out.glob("shard-*.tar"):  # shards of the replaced pack beyond the new ones
        if old.name not in written:
            old.unlink()
    return manifest
