"""WebDataset tar shards as a training source (the optional ``webdataset`` package).

``--data`` names the shards as a brace pattern (``shards/train-{000000..000127}.tar``), one tar
file, a ``pipe:`` URL (``pipe:aws s3 cp s3://bucket/train-{000..127}.tar -``), or a folder
written by ``fdm data pack`` (its ``manifest.json`` lists the shards and their counts). A sample
is the files of one key; its image is the first of png, jpg, jpeg, webp, decoded and brought to
the training resolution like a folder's images (`fdm_cli.data.images.prepare_image`).

Order (docs/design.md §14): in epoch ``e`` (of this rank's share) the shard list is permuted
with a seed derived from (seed, e) and rank ``r`` of ``W`` reads shards ``perm[r::W]`` (disjoint,
every shard read once per epoch by one rank), in that order, through a shuffle buffer of
SHUFFLE_BUFFER samples seeded by (seed, e, r); flips are seeded coins per sample. A rank's stream
is therefore a function of (seed, rank, world size, sample number). Resume replays it: the
samples consumed before are skipped without decoding (whole epochs are skipped by count when a
manifest gives the shard sizes), so a resumed run sees the same samples as an uninterrupted one
with the same number of ranks.

An image that does not decode, and a sample that holds no image (only a ``.json``, say), is
replaced by the first decodable image after it in the stream (a look-ahead, so a resumed stream
makes the same choice), with one warning per sample; with ``strict`` (``--strict``) it stops the
run with a one-line error instead.

Shards may come from anyone (`fdm_cli.data.tarsafe`): only the image members of a sample are read,
each at most ``$FDM_TAR_MEMBER_MB`` MiB, decompression bombs are refused, and a brace pattern is
counted before it is expanded. A manifest's shard names stay inside its folder (no absolute
path, no ``..``) unless ``FDM_MANIFEST_OUTSIDE=1``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fdm_cli.data import MANIFEST, Fit
from fdm_cli.data.images import image_channels, open_image, prepare_image
from fdm_cli.data.tarsafe import expand_pattern, tar_samples
from fdm_cli.errors import UserError
from fdm_cli.seeding import DATA_FLIP, DATA_ORDER, derive_seed

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
SHUFFLE_BUFFER = 256
MAX_LOOKAHEAD = 1024  # undecodable samples in a row before the stream gives up
EXTRA_HINT = "pip install 'fdm-cli[webdataset]'"
OUTSIDE_ENV = "FDM_MANIFEST_OUTSIDE"  # 1: a manifest may name shards outside its folder

logger = logging.getLogger(__name__)


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise UserError(f"tar shards need the webdataset package: {EXTRA_HINT}") from None
    return webdataset


def _is_url(source: str) -> bool:
    return source.startswith("pipe:") or re.match(r"^[a-z][a-z0-9+.-]*://", source) is not None


def is_shard_source(source: str) -> bool:
    """Whether ``--data`` names tar shards (pattern, tar, URL, or a packed folder)."""
    stripped = re.sub(r"\{[^}]*\}", "", source).rstrip("/")
    return (
        _is_url(source)
        or stripped.endswith(".tar")
        or (Path(source).expanduser() / MANIFEST).is_file()
    )


def read_manifest(folder: Path) -> dict | None:
    """The ``manifest.json`` of `folder` written by ``fdm data pack``, if there is one."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["shards"] = [
            dict(s, name=str(s["name"]), count=int(s["count"])) for s in manifest["shards"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read the shard manifest {path}: {exc}") from None
    if not manifest["shards"]:
        raise UserError(f"the shard manifest {path} lists no shards (pack the folder again)")
    if os.environ.get(OUTSIDE_ENV, "") in ("", "0"):
        for shard in manifest["shards"]:
            name = Path(shard["name"])
            if name.is_absolute() or ".." in name.parts or not name.parts:
                raise UserError(
                    f"the shard manifest {path} names {shard['name']!r}, outside its folder; "
                    f"shards must lie in the manifest's folder ({OUTSIDE_ENV}=1 allows more)"
                )
    return manifest


def _expand(source: str) -> list[str]:
    """The names of brace pattern `source`, counted before they are expanded (`tarsafe`);
    ``${VAR}`` is WebDataset's ``$WDS_VAR``, as in its own expansion."""
    envsubst = _webdataset().shardlists.envsubst
    for _ in range(10):
        source, last = envsubst(source), source
        if source == last:
            break
    return expand_pattern(source)


def expand_shards(source: str) -> tuple[list[str], dict[str, int]]:
    """The shard URLs `source` names (braces expanded) and the sample count of each that a
    manifest gives; a UserError when local shards are missing."""
    folder = Path(source).expanduser()
    if not _is_url(source) and (manifest := read_manifest(folder)) is not None:
        urls = [str(folder / s["name"]) for s in manifest["shards"]]
    else:
        urls = _expand(source)
    if not urls:
        raise UserError(f"{source!r} names no shard")
    if _is_url(source):
        return urls, {}
    missing = [u for u in urls if not Path(u).expanduser().is_file()]
    if len(missing) == len(urls):
        raise UserError(f"no shard matches {source!r} (looked for {urls[0]}, ...)")
    if missing:
        raise UserError(
            f"{len(missing)} of {len(urls)} shards of {source!r} are missing: {missing[0]}"
        )
    counts: dict[str, int] = {}
    for parent in {Path(u).expanduser().parent for u in urls}:
        if (found := read_manifest(parent)) is not None:
            counts.update({str(parent / s["name"]): int(s["count"]) for s in found["shards"]})
    return urls, counts


def rank_shards(urls: list[str], seed: int, epoch: int, rank: int, world_size: int) -> list[str]:
    """The shards rank `rank` of `world_size` reads in `epoch`: a seeded permutation of
    `urls`, dealt round-robin, so the ranks' shares are disjoint and cover every shard."""
    if len(urls) < world_size:
        raise UserError(
            f"{len(urls)} shard(s) for {world_size} ranks: each rank needs at least one shard "
            "(pack with a smaller --shard-size)"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, DATA_ORDER, epoch))
    return [urls[i] for i in torch.randperm(len(urls), generator=g)[rank::world_size].tolist()]


def _samples(url: str) -> Iterator[dict]:
    """The samples of one shard: dicts of ``__key__``, ``__url__`` and each member's extension
    (the bytes of its image members, None for the others, which are never read)."""
    wds = _webdataset()
    try:
        stream = wds.gopen(url)
    except (OSError, ValueError) as exc:
        first = exc.args[0] if exc.args else exc.__class__.__name__
        raise UserError(f"cannot read shard {url}: {first}") from None
    try:
        yield from tar_samples(stream, url, frozenset(IMAGE_KEYS))
    finally:
        # a pipe: command stopped early exits with an error status: reading has said all
        with contextlib.suppress(OSError, ValueError):
            stream.close()


def _image(sample: dict) -> tuple[bytes | None, str]:
    """The sample's image bytes and its label; None (with the sample's label) for a sample
    that holds no image, which is replaced like an image that does not decode."""
    for key in IMAGE_KEYS:
        if sample.get(key) is not None:
            return sample[key], f"{sample.get('__url__')}:{sample['__key__']}.{key}"
    held = ", ".join(k for k in sample if k[:2] != "__")
    return None, f"{sample.get('__url__')}:{sample['__key__']} (holds {held}, no image)"


def shard_channels(source: str) -> int:
    """1 if the first image of the shards is grayscale, else 3 (or the manifest's channels)."""
    urls, _ = expand_shards(source)
    manifest = None if _is_url(source) else read_manifest(Path(urls[0]).expanduser().parent)
    if manifest is not None and manifest.get("channels") in (1, 3):
        return int(manifest["channels"])
    for sample in _samples(urls[0]):
        data, label = _image(sample)
        if data is not None:
            return image_channels(open_image(data, decode=False, label=label))
    raise UserError(f"shard {urls[0]} holds no image ({', '.join(IMAGE_KEYS)})")


class ShardStream:
    """This rank's infinite, seeded stream of training images from tar shards."""

    def __init__(
        self,
        source: str,
        resolution: int,
        channels: int,
        fit: Fit,
        seed: int,
        hflip: bool,
        rank: int = 0,
        world_size: int = 1,
        strict: bool = False,
    ) -> None:
        self.source, self.resolution, self.channels, self.fit = source, resolution, channels, fit
        self.seed, self.hflip, self.rank, self.world_size = seed, hflip, rank, world_size
        self.strict = strict
        self.urls, self.counts = expand_shards(source)
        rank_shards(self.urls, seed, 0, rank, world_size)  # refuse too few shards now
        self._it: Iterator[tuple[bytes | None, str, bool]] | None = None
        self._ahead: deque[tuple[bytes | None, str, bool]] = deque()  # read from _it, not yet used
        self._warned: set[str] = set()
        self._consumed = 0

    def __len__(self) -> int:
        """Images in all shards (from a manifest; 0 when unknown)."""
        return sum(self.counts.values()) if len(self.counts) == len(self.urls) else 0

    def _epoch_length(self, epoch: int) -> int | None:
        shards = rank_shards(self.urls, self.seed, epoch, self.rank, self.world_size)
        return (
            sum(self.counts[u] for u in shards) if all(u in self.counts for u in shards) else None
        )

    def _epoch(self, epoch: int) -> Iterator[tuple[bytes | None, str, bool]]:
        """(image bytes, label, flip) of this rank's samples in `epoch`, through the buffer."""
        rng = random.Random(derive_seed(self.seed, DATA_ORDER, epoch, self.rank))
        coins = torch.Generator().manual_seed(derive_seed(self.seed, DATA_FLIP, epoch, self.rank))
        buffer: list[tuple[bytes | None, str]] = []

        def out(item: tuple[bytes | None, str]) -> tuple[bytes | None, str, bool]:
            flip = bool(torch.rand(1, generator=coins) < 0.5) and self.hflip
            return (*item, flip)

        for url in rank_shards(self.urls, self.seed, epoch, self.rank, self.world_size):
            for sample in _samples(url):
                item = _image(sample)
                if len(buffer) < SHUFFLE_BUFFER:
                    buffer.append(item)
                    continue
                k = rng.randrange(len(buffer))
                yield out(buffer[k])
                buffer[k] = item
        rng.shuffle(buffer)
        yield from map(out, buffer)

    def _stream(self, skip: int) -> Iterator[tuple[bytes | None, str, bool]]:
        """The rank's samples from number `skip` on (earlier ones read, never decoded)."""
        epoch = 0
        while (length := self._epoch_length(epoch)) is not None and 0 < length <= skip:
            skip, epoch = skip - length, epoch + 1
        while True:
            empty = True
            for item in self._epoch(epoch):
                empty = False
                if skip:
                    skip -= 1
                    continue
                yield item
            if empty:
                raise UserError(f"the shards of rank {self.rank} in {self.source!r} hold no image")
            epoch += 1

    def take(self, local_position: int, count: int) -> torch.Tensor:
        """Float images in [-1, 1] for this rank's samples ``local_position ..`` (+ `count`)."""
        if self._it is None or local_position != self._consumed:
            self._it = self._stream(local_position)
            self._ahead.clear()
        rows = []
        for _ in range(count):
            data, label, flip = self._ahead.popleft() if self._ahead else next(self._it)
            row = self._decode(data, label)
            if row is None:
                row = self._next_decodable(label)
            rows.append(row.flip(-1) if flip else row)
        self._consumed = local_position + count
        return torch.stack(rows).float().div_(127.5).sub_(1.0)

    def _decode(self, data: bytes | None, label: str) -> torch.Tensor | None:
        """The training image, or None (warned once per image) when it does not decode or
        the sample holds none (`data` None)."""
        try:
            if data is None:
                raise UserError(f"shard sample {label}")
            return prepare_image(data, self.resolution, self.channels, self.fit, label)
        except UserError as exc:
            if self.strict:
                raise UserError(f"{exc} (--lenient replaces it by the next image)") from None
            if label not in self._warned:
                self._warned.add(label)
                logger.warning("%s: replaced by the next readable image (--strict refuses)", exc)
            return None

    def _next_decodable(self, label: str) -> torch.Tensor:
        """The first decodable image after the current sample, read ahead (and kept for its own
        turn), so that the replacement depends only on the stream, not on where it started."""
        for i in range(MAX_LOOKAHEAD):
            if i == len(self._ahead):
                self._ahead.append(next(self._it))
            data, ahead_label, _ = self._ahead[i]
            row = self._decode(data, ahead_label)
            if row is not None:
                return row
        raise UserError(
            f"{label} and the {MAX_LOOKAHEAD} samples after it in {self.source!r} do not decode"
        )

    def rank_batch(self, position: int, per_rank: int, rank: int, world_size: int) -> torch.Tensor:
        """This rank's `per_rank` images of the global batch at stream `position`."""
        return self.take(position // world_size, per_rank)
