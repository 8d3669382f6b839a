"""The data `fdm train` steps through: one interface over every source (`fdm_cli.data.dataset`).

- the embedded Fashion-MNIST (10,000 small images): in memory (`fdm_cli.data.dataset.load_dataset`);
- an image folder or IDX file: its decoded cache (`fdm_cli.data.cache`), read by index;
- tar shards: a per-rank stream (`fdm_cli.data.shards`).

The first two keep `fdm_cli.data.dataset.DataOrder` (order a function of (seed, position) for any
number of ranks); shards are a seeded stream per rank (docs/design.md §14 (E39)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from fdm_cli.config.train import DataConfig
from fdm_cli.data.cache import CachedImages, open_cached
from fdm_cli.data.dataset import EMBEDDED, DataOrder, ImageDataset, load_dataset
from fdm_cli.data.shards import ShardStream, is_shard_source
from fdm_cli.errors import UserError

IndexedImages = ImageDataset | CachedImages  # what `IndexedData` orders


class TrainingData(Protocol):
    """What a training loop draws its batches from."""

    def __len__(self) -> int: ...

    def rank_batch(
        self, position: int, per_rank: int, rank: int, world_size: int
    ) -> torch.Tensor: ...


class IndexedData:
    """A random-access dataset in the seeded order of `DataOrder`."""

    def __init__(self, dataset: IndexedImages, seed: int, hflip: bool) -> None:
        self.dataset = dataset
        self.order = DataOrder(len(dataset), seed, hflip)

    def __len__(self) -> int:
        return len(self.dataset)

    def rank_batch(self, position: int, per_rank: int, rank: int, world_size: int) -> torch.Tensor:
        """Rank `rank`'s `per_rank` images of the global batch that starts at `position`."""
        idx, flip = self.order.take(position + rank * per_rank, per_rank)
        return self.dataset.batch(idx, flip)


def open_training_data(
    data: DataConfig,
    resolution: int,
    channels: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    say: Callable[[str], None] | None = None,
) -> IndexedData | ShardStream:
    """The training data `data` names, at `resolution` with `channels` (see the docstring);
    `say` is told when a folder or IDX file is decoded into its cache."""
    if is_shard_source(data.source):
        return ShardStream(
            data.source,
            resolution,
            channels,
            data.fit,
            seed,
            data.hflip,
            rank,
            world_size,
            data.strict,
        )
    return IndexedData(open_indexed(data, resolution, channels, say), seed, data.hflip)


def open_indexed(
    data: DataConfig, resolution: int, channels: int, say: Callable[[str], None] | None = None
) -> IndexedImages:
    """A random-access source: the embedded data in memory, a folder or IDX file through its
    decoded cache; tar shards are refused (they have no random access)."""
    if is_shard_source(data.source):
        raise UserError(
            f"{data.source}: tar shards are read as a stream; this command needs random access "
            "to the images (give the image folder or IDX files)"
        )
    if data.source == EMBEDDED:
        return load_dataset(data.source, resolution, channels, data.fit, data.strict)
    return open_cached(
        data.source, resolution, channels, data.fit, data.strict, data.cache_dir, say
    )
