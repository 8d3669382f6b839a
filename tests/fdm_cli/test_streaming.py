"""Data larger than memory: the decoded cache of folders and IDX files, WebDataset shards,
their seeded per-rank order, and `fdm data pack`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdm_cli.config.train import DataConfig
from fdm_cli.data import cache as datacache
from fdm_cli.data import shards
from fdm_cli.data.dataset import DataOrder, load_dataset
from fdm_cli.data.packing import pack_folder
from fdm_cli.data.shards import ShardStream, expand_shards, rank_shards
from fdm_cli.errors import UserError
from fdm_cli.training.data import open_indexed, open_training_data

from ..e2e.test_cli_subprocess import TINY
from ..e2e.test_cli_subprocess import run as run_fdm
from .conftest import refused
from .test_data import write_idx
from .test_train import _assert_same_run


def make_folder(folder: Path, n: int, size: tuple[int, int] = (40, 36), seed: int = 0) -> Path:
    """`n` random RGB PNGs; pixel (0, 0) of image i encodes i so samples can be told apart."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


def fingerprint(x: torch.Tensor) -> list[int]:
    """An exact, flip-invariant number per image (its pixel sum as uint8 values)."""
    return ((x + 1) * 127.5).round().long().flatten(1).sum(1).tolist()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(datacache.CACHE_ENV, str(root))
    return root


def counting_rows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every cache build (each decodes the whole source)."""
    builds: list[str] = []
    rows = datacache._rows

    def spy(path: Path, *args: object) -> object:
        builds.append(str(path))
        return rows(path, *args)

    monkeypatch.setattr(datacache, "_rows", spy)
    return builds


def test_cache_is_built_once_reused_and_rebuilt_when_the_folder_changes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path / "imgs", 5)
    builds = counting_rows(monkeypatch)
    first = datacache.open_cached(str(folder), 16)
    again = datacache.open_cached(str(folder), 16)
    assert len(builds) == 1 and len(first) == len(again) == 5
    assert first.path == again.path and len(list(cache.glob("*.u8"))) == 1
    Image.new("RGB", (20, 20), (1, 2, 3)).save(folder / "new.png")  # a file is added
    assert len(datacache.open_cached(str(folder), 16)) == 6 and len(builds) == 2
    stat = (folder / "000.png").stat()  # a file changes (same size, new mtime)
    os.utime(folder / "000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    datacache.open_cached(str(folder), 16)
    assert len(builds) == 3
    assert len(list(cache.glob("*.u8"))) == 1  # each build removes the cache it replaces
    datacache.open_cached(str(folder), 8)  # another resolution: its own cache
    assert len(builds) == 4 and len(list(cache.glob("*.u8"))) == 2


@pytest.mark.parametrize("kind", ["folder", "idx"])
def test_cached_batches_equal_the_in_memory_ones(tmp_path: Path, cache: Path, kind: str) -> None:
    if kind == "folder":
        source = make_folder(tmp_path / "imgs", 9)
    else:
        rng = np.random.default_rng(1)
        source = write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (9, 28, 28)))
    memory = load_dataset(str(source), 32)
    cached = datacache.open_cached(str(source), 32)
    assert (len(cached), cached.channels, cached.resolution) == (9, *memory.images.shape[1::2])
    order = DataOrder(9, seed=5, hflip=True)
    for position in (0, 4, 7, 23):  # across epoch boundaries
        idx, flip = order.take(position, 6)
        assert torch.equal(cached.batch(idx, flip), memory.batch(idx, flip))


def test_a_truncated_cache_is_refused(tmp_path: Path, cache: Path) -> None:
    cached = datacache.open_cached(str(make_folder(tmp_path / "imgs", 3)), 16)
    with cached.path.open("r+b") as f:
        f.truncate(cached.path.stat().st_size - 1)
    with pytest.raises(UserError, match="truncated"):
        datacache.CachedImages(cached.path)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_read_disjoint_shards_covering_all(world_size: int) -> None:
    urls = [f"s{i}.tar" for i in range(7)]
    orders = []
    for epoch in range(3):
        shares = [rank_shards(urls, 11, epoch, r, world_size) for r in range(world_size)]
        every = [u for share in shares for u in share]
        assert sorted(every) == sorted(urls) and len(set(every)) == len(urls)
        orders.append(every)
    assert orders[0] != orders[1]  # a new shard order each epoch
    assert rank_shards(urls, 11, 1, 0, world_size) == rank_shards(urls, 11, 1, 0, world_size)
    with pytest.raises(UserError, match="each rank needs at least one shard"):
        rank_shards(urls[:1], 0, 0, 0, 2)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packed")
    pack_folder(make_folder(root / "imgs", 13), root / "shards", shard_size=3, resolution=16)
    return root / "shards"


def test_pack_writes_shards_and_a_manifest_with_checksums(packed: Path) -> None:
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["count"] == 13 and manifest["resolution"] == 16 and manifest["channels"] == 3
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 3, 3, 1]
    for shard in manifest["shards"]:
        data = (packed / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    urls, counts = expand_shards(str(packed / manifest["pattern"]))
    assert len(urls) == 5 and sum(counts.values()) == 13
    # resized once: the stored image is the training image
    memory = load_dataset(str(packed.parent / "imgs"), 16)
    stream = ShardStream(str(packed), 16, 3, "auto", seed=0, hflip=False)
    seen = stream.take(0, 13)
    assert sorted(fingerprint(seen)) == sorted(fingerprint(memory.batch(torch.arange(13))))


@pytest.mark.parametrize("manifest", [True, False])
def test_shard_stream_resumes_exactly(packed: Path, tmp_path: Path, manifest: bool) -> None:
    source = str(packed)
    if not manifest:  # the same shards without a manifest: skipping must read them
        bare = tmp_path / "bare"
        bare.mkdir()
        for tar in packed.glob("*.tar"):
            (bare / tar.name).write_bytes(tar.read_bytes())
        source = str(bare / "shard-{000000..000004}.tar")
    full = ShardStream(source, 16, 3, "auto", seed=3, hflip=True).take(0, 40)  # 3 epochs
    for start in (5, 13, 27):
        resumed = ShardStream(source, 16, 3, "auto", seed=3, hflip=True).take(start, 40 - start)
        assert torch.equal(resumed, full[start:])
    epochs = [fingerprint(full[i * 13 : (i + 1) * 13]) for i in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1])  # each epoch: every image
    assert epochs[0] != epochs[1]  # in another order


def test_two_ranks_stream_disjoint_images(packed: Path) -> None:
    sums = []
    for rank in range(2):
        stream = ShardStream(
            str(packed), 16, 3, "auto", seed=1, hflip=False, rank=rank, world_size=2
        )
        n = sum(stream.counts[u] for u in rank_shards(stream.urls, 1, 0, rank, 2))
        sums.append(set(fingerprint(stream.take(0, n))))
    assert not sums[0] & sums[1] and len(sums[0] | sums[1]) == 13


def test_training_data_picks_the_source(packed: Path, tmp_path: Path, cache: Path) -> None:
    folder = str(packed.parent / "imgs")
    indexed = open_training_data(DataConfig(source=folder), 16, 3, seed=0)
    assert isinstance(indexed.dataset, datacache.CachedImages) and len(indexed) == 13
    a = indexed.rank_batch(12, 3, rank=1, world_size=2)
    idx, flip = DataOrder(13, 0, True).take(15, 3)  # rank 1's slice: position + 1 * 3
    assert torch.equal(a, load_dataset(folder, 16).batch(idx, flip))
    streamed = open_training_data(DataConfig(source=str(packed)), 16, 3, seed=0)
    assert isinstance(streamed, ShardStream) and len(streamed) == 13
    with pytest.raises(UserError, match="needs random access"):  # e.g. train-autoencoder
        open_indexed(DataConfig(source=str(packed)), 16, 3)


def test_train_from_a_folder_and_from_shards(cli, tiny, packed: Path, tmp_path: Path) -> None:
    folder = packed.parent / "imgs"
    args = ["--resolution", "16", "--max-steps", "2", *tiny]
    result = cli("train", "--data", folder, "--out", tmp_path / "folder", *args)
    assert result.exit_code == 0, result.output
    assert "(13 images)" in result.output
    pattern = packed / "shard-{000000..000001}.tar"
    result = cli("train", "--data", pattern, "--out", tmp_path / "shards", *args)
    assert result.exit_code == 0, result.output
    result = cli("train", "--data", packed, "--out", tmp_path / "packed", *args)
    assert result.exit_code == 0 and "(13 images)" in result.output, result.output


def test_pack_from_the_command_line_then_train(cli, tiny, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 7, size=(20, 20))
    result = cli("data", "pack", folder, "--out", tmp_path / "s", "--shard-size", "4")
    assert result.exit_code == 0 and "packed 7 images (original size) into 2" in result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir())[-1] == "shard-000001.tar"
    run = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        tmp_path / "s",
        "--resolution",
        "16",
        "--out",
        run,
        "--max-steps",
        "2",
        *tiny,
    )
    assert result.exit_code == 0, result.output


def test_bad_shard_input_is_one_line(cli, tiny, packed: Path, tmp_path: Path) -> None:
    args = ["--resolution", "16", "--max-steps", "1", *tiny]
    refused(cli("train", "--data", tmp_path / "none-{0..3}.tar", *args), "no shard matches")
    corrupt = tmp_path / "c"
    corrupt.mkdir()
    (corrupt / "bad-0.tar").write_bytes(b"this is not a tar archive" * 40)
    (corrupt / "bad-1.tar").write_bytes((packed / "shard-000000.tar").read_bytes()[:700])
    for name in ("bad-0.tar", "bad-1.tar"):
        refused(cli("train", "--data", corrupt / name, *args), "cannot read shard", name)
    before = {p.name: p.read_bytes() for p in packed.iterdir()}
    result = cli("data", "pack", packed.parent / "imgs", "--out", packed, "--shard-size", "2")
    refused(result, "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in packed.iterdir()} == before  # nothing touched
    refused(cli("data", "pack", tmp_path / "missing", "--out", tmp_path / "o"), "not a folder")


def test_pack_overwrite_replaces_the_old_shards(cli, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 5, size=(20, 20))
    out = tmp_path / "s"
    assert cli("data", "pack", folder, "--out", out, "--shard-size", "1").exit_code == 0
    result = cli("data", "pack", folder, "--out", out, "--shard-size", "3", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-000000.tar",
        "shard-000001.tar",
    ]


def test_pipe_urls_stream_the_same_images(packed: Path) -> None:
    local = ShardStream(str(packed), 16, 3, "auto", seed=0, hflip=False).take(0, 13)
    source = f"pipe:cat {packed}/shard-{{000000..000004}}.tar"
    piped = ShardStream(source, 16, 3, "auto", seed=0, hflip=False)
    assert sorted(fingerprint(piped.take(0, 13))) == sorted(fingerprint(local))


def test_without_webdataset_shards_are_one_line(
    cli, tiny, packed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset -> ImportError
    result = cli(
        "train", "--data", packed / "shard-{000000..000001}.tar", "--max-steps", "1", *tiny
    )
    refused(result, "pip install 'fdm-cli[webdataset]'")


def test_a_rank_reads_its_stream_step_after_step(packed: Path) -> None:
    """Global batches of 6 over 2 ranks: rank 1 reads its own samples 0-2, then 3-5, ..."""

    def make() -> ShardStream:
        return ShardStream(str(packed), 16, 3, "auto", 2, True, rank=1, world_size=2)

    stream, alone = make(), make().take(0, 9)
    steps = [stream.rank_batch(position, 3, 1, 2) for position in (0, 6, 12)]
    assert torch.equal(torch.cat(steps), alone)
    assert torch.equal(make().rank_batch(12, 3, 1, 2), alone[6:])  # resumed at step 2


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_cli_resume_on_streamed_data_equals_one_run(
    cli, tiny, packed: Path, tmp_path: Path, kind: str
) -> None:
    """4 steps of 6 over 13 images (two epochs) at once, or 2 steps and 2 more resumed."""
    data = packed.parent / "imgs" if kind == "folder" else packed / "shard-{000000..000004}.tar"
    common = ["--data", data, "--resolution", "16", "--set", "optim.decay=constant", *tiny]
    assert cli("train", "--out", tmp_path / "whole", "--max-steps", "4", *common).exit_code == 0
    assert cli("train", "--out", tmp_path / "split", "--max-steps", "2", *common).exit_code == 0
    result = cli("train", "--out", tmp_path / "split", "--max-steps", "4", "--resume", *common)
    assert result.exit_code == 0 and "resuming from" in result.output, result.output
    _assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_the_skip_warning_reaches_the_user_when_the_cache_is_built_and_reused(
    tmp_path: Path, cache: Path
) -> None:
    """Bug caught (CI, 360-photo case): the build collected the warning with a logging handler,
    which silenced Python's last-resort handler, so the first run never said what it skipped.
    Real processes: in-process, pytest's own log handlers would hide the difference."""
    folder = make_folder(tmp_path / "photos", 6)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for attempt in ("built", "reused"):
        run_dir = tmp_path / f"run-{attempt}"
        done = run_fdm(["train", "--data", folder, "--out", run_dir, "--max-steps", "1", *TINY])
        assert done.returncode == 0, done.stderr
        assert "skipped 1 unreadable file(s) of 7" in done.stderr, (attempt, done.stderr)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(path: Path, images: list[bytes], first_key: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(images, start=first_key):
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards_with_bad_images(tmp_path: Path) -> str:
    """Two shards of 8 images, solid grays 20 i; images 2, 3 and 6 are not PNGs."""
    images = [b"not a png" if i in (2, 3, 6) else _png(20 * i) for i in range(8)]
    _write_shard(tmp_path / "s-0.tar", images[:4], 0)
    _write_shard(tmp_path / "s-1.tar", images[4:], 4)
    return str(tmp_path / "s-{0..1}.tar")


def test_an_undecodable_shard_image_is_replaced_by_the_next_one(
    shards_with_bad_images: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: one corrupt image in a third-party shard stopped a long run; and a
    replacement that consumed the next image (or depended on where the stream started)."""

    def stream() -> ShardStream:
        return ShardStream(shards_with_bad_images, 8, 1, "auto", seed=5, hflip=False)

    with caplog.at_level("WARNING", logger="fdm_cli.data.shards"):
        full = stream().take(0, 40)  # 5 epochs of 8 slots
    values = [round((v + 1) * 127.5) for v in full[:, 0, 0, 0].tolist()]
    good = {0, 20, 80, 100, 140}
    assert set(values) <= good  # every slot holds a readable image
    # the next image keeps its own slot too: every epoch shows each readable image
    assert all(good <= set(values[e * 8 : (e + 1) * 8]) for e in range(5))
    assert len(caplog.records) == 3  # one warning per bad image, not one per epoch
    assert "0002.png" in caplog.text and "--strict refuses" in caplog.text
    for start in (1, 6, 13, 22):  # a resumed stream makes the same replacements
        assert torch.equal(stream().take(start, 40 - start), full[start:])


def test_strict_refuses_an_undecodable_shard_image(
    shards_with_bad_images: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = ShardStream(shards_with_bad_images, 8, 1, "auto", seed=5, hflip=False, strict=True)
    with pytest.raises(UserError, match=r"cannot read image .*\.png.*--lenient"):
        strict.take(0, 8)
    all_bad = Path(shards_with_bad_images).parent / "bad-0.tar"
    _write_shard(all_bad, [b"not a png"] * 3, 0)
    monkeypatch.setattr(shards, "MAX_LOOKAHEAD", 10)
    with pytest.raises(UserError, match=r"the 10 samples after it .* do not decode"):
        ShardStream(str(all_bad), 8, 1, "auto", seed=0, hflip=False).take(0, 1)
