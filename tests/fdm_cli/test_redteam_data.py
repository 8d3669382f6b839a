"""Red team (issue 21, part B): data sets and caches someone else wrote are safe to open.

Shared caches (the decoded data cache, the FID reference statistics, `fdm data pack` output)
never follow a planted symlink, forget a killed build's temporary file, or trust an edited file;
hostile data (tar bombs, brace bombs, symlink loops, names that are not UTF-8, manifests that
point elsewhere, samples without an image, ``/`` or a home folder) is one line or is skipped and
counted, in bounded memory. The bombs run in a subprocess under ``RLIMIT_AS``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from braceexpand import braceexpand
from PIL import Image

from fdm_cli.data import MANIFEST, walk
from fdm_cli.data import cache as datacache
from fdm_cli.data.images import list_images
from fdm_cli.data.shards import ShardStream, expand_shards
from fdm_cli.data.tarsafe import _count_pattern
from fdm_cli.errors import UserError
from fdm_cli.evaluation import fid
from fdm_core import load_tensors, save_tensors

from .conftest import refused
from .test_eval import Counting
from .test_streaming import _png, _write_shard, make_folder

MEMORY_LIMIT = 1536 << 20  # about 650 MB for Python, torch and fdm, the rest for the data


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(datacache.CACHE_ENV, str(root))
    return root


def under_memory_limit(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose address space is capped at MEMORY_LIMIT; a
    UserError it raises is printed as ``refused: ...`` with exit code 2."""
    script = (
        f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, "
        f"{MEMORY_LIMIT}))\nfrom fdm_cli.errors import UserError\ntry:\n"
        + textwrap.indent(textwrap.dedent(code), "    ")
        + "\nexcept UserError as exc:\n    print('refused:', exc)\n    raise SystemExit(2)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )


class Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks (a member's data without holding it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def gzip_tar(path: Path, members: list[tuple[str, int]]) -> Path:
    """A gzip-compressed tar (named .tar, as shards of a bucket may be) of members of zeros
    (name, size): ~230x smaller than its data."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))
    return path


# ---------------------------------------------------------------------------------------------
# Shared caches


def test_a_planted_temporary_symlink_is_never_followed_by_a_cache_build(
    tmp_path: Path, cache: Path
) -> None:
    """Bug caught: the cache build opened `.{name}.{host}.{pid}.tmp` with open('wb'), so a
    symlink planted at that predictable name in a shared cache overwrote the victim's file
    (a shell start-up file); the planted lock symlink was opened too."""
    folder = make_folder(tmp_path / "imgs", 3, size=(16, 16))
    name = datacache.open_cached(str(folder), 16, cache_dir=str(tmp_path / "probe")).path.name
    victim = tmp_path / "bashrc"
    victim.write_text("echo hello\n")
    cache.mkdir()
    planted = cache / f".{name}.{socket.gethostname()}.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    future = time.time() + 3600  # as new as a live build's file: the stale clean-up keeps it
    os.utime(planted, (future, future), follow_symlinks=False)
    cached = datacache.open_cached(str(folder), 16)
    assert victim.read_text() == "echo hello\n"
    assert len(cached) == 3 and not cached.path.is_symlink()
    lock = cache / f"{name.split('-')[0]}.lock"
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        datacache.open_cached(str(folder), 16)
    assert victim.read_text() == "echo hello\n"


def test_the_temporary_file_of_a_killed_cache_build_is_removed_by_the_next_build(
    tmp_path: Path, cache: Path
) -> None:
    """Bug caught: a cache build killed with SIGKILL left its temporary file forever (each one
    as large as the decoded data set). A temporary file newer than the lock (a live build on
    another node) is kept."""
    folder = make_folder(tmp_path / "imgs", 4, size=(16, 16))
    code = f"""
        import os, signal
        from fdm_cli.data import cache as datacache
        rows = datacache._rows
        def dying(*args):
            for i, block in enumerate(rows(*args)):
                yield block
                if i == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
        datacache._rows = dying
        datacache.open_cached({str(folder)!r}, 16, cache_dir={str(cache)!r})
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (stale,) = cache.glob(".*.tmp")
    live = stale.with_name(stale.name.replace(".tmp", ".live.tmp"))
    live.write_bytes(b"")
    os.utime(live, (time.time() + 3600, time.time() + 3600))  # written after the lock was taken
    assert len(datacache.open_cached(str(folder), 16)) == 4
    assert not stale.exists() and live.exists()


def test_a_damaged_or_edited_cache_header_is_rebuilt_with_one_line(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: a damaged cache header stopped the run with a JSONDecodeError traceback,
    and an edited one (a count, a source) was trusted."""
    folder = make_folder(tmp_path / "imgs", 3, size=(16, 16))
    first = datacache.open_cached(str(folder), 16)
    images = first.read(torch.arange(3))
    path = first.path
    head = path.read_bytes()[: datacache.HEADER_BYTES]
    at = head.index(b'"source"')
    for damage, phrase in ((b'"', "damaged header"), (b"X", "does not match its digest")):
        with path.open("r+b") as f:  # a JSON syntax error, then a changed character
            f.seek(at + 12)
            f.write(damage)
        with caplog.at_level("WARNING", logger="fdm_cli.data.cache"):
            again = datacache.open_cached(str(folder), 16)
        lines = [r.getMessage() for r in caplog.records if "data cache" in r.getMessage()]
        assert len(lines) == 1 and phrase in lines[0] and "decoding the images again" in lines[0]
        assert torch.equal(again.read(torch.arange(3)), images)
        caplog.clear()
    with caplog.at_level("WARNING", logger="fdm_cli.data.cache"):
        datacache.open_cached(str(folder), 16)  # rebuilt: used as is
    assert not caplog.records


def test_an_edited_fid_statistics_cache_is_computed_again_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: an edited reference-statistics file (mu changed, its digest recomputed with
    fdm_core.save_tensors, or bytes changed in place) changed every score, silently."""
    from .fidnet import StandIn

    monkeypatch.setenv(fid.CACHE_ENV, str(tmp_path / "cache"))
    counting = Counting(StandIn())
    first = fid.reference_stats("fashion-mnist", 20, network=counting, crop=28)
    (path,) = (tmp_path / "cache" / "fid").glob("*.safetensors")
    tensors, key = load_tensors(path)
    edits = {
        "mu": {**tensors, "mu": tensors["mu"] + 0.5},
        "sigma": {**tensors, "sigma": tensors["sigma"] * 0.5},
    }
    for what, edited in edits.items():
        save_tensors(path, edited, config=key)
        with caplog.at_level("WARNING", logger="fdm_cli.evaluation.statscache"):
            again = fid.reference_stats("fashion-mnist", 20, network=counting, crop=28)
        assert [r.getMessage() for r in caplog.records] == [
            f"FID reference statistics {path}: mu or sigma do not match the features stored "
            "with them (edited); computing them again"
        ], what
        assert np.array_equal(again.mu, first.mu) and np.array_equal(again.sigma, first.sigma)
        caplog.clear()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a changed byte in the features
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fdm_cli.evaluation.statscache"):
        fid.reference_stats("fashion-mnist", 20, network=counting, crop=28)
    assert len(caplog.records) == 1 and "damaged" in caplog.records[0].getMessage()
    assert counting.seen == 80  # computed four times: first, two edits, the damaged byte
    fid.reference_stats("fashion-mnist", 20, network=counting, crop=28)
    assert counting.seen == 80  # the rewritten file is a hit


def test_pack_never_follows_a_planted_temporary_and_removes_a_killed_packs_leftovers(
    cli, tmp_path: Path
) -> None:
    """Bug caught: `fdm data pack` wrote `.shard-N.tar.{pid}.tmp` and `.manifest.json.tmp`
    with open('wb'), following a symlink planted there; a killed pack's temporaries stayed."""
    folder = make_folder(tmp_path / "imgs", 3, size=(16, 16))
    out = tmp_path / "shards"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (out / f".shard-000000.tar.{os.getpid()}.tmp").symlink_to(victim)
    (out / f".{MANIFEST}.tmp").symlink_to(victim)
    (out / ".shard-000001.tar.x1y2.tmp").write_bytes(b"half a shard")  # a killed pack's
    result = cli("data", "pack", folder, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me\n"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "shard-000000.tar"]
    assert list(ShardStream(str(out), 16, 3, "auto", 0, False).take(0, 3).shape) == [3, 3, 16, 16]


# ---------------------------------------------------------------------------------------------
# Bounded memory


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gzip tar whose one member expands to 1 GiB, one of 24 members of 48 MiB each (each
    under the member cap), and (with GNU tar) a sparse member of 3.4 GB in a 10 KB tar."""
    root = tmp_path_factory.mktemp("bombs")
    found = {
        "gzip": gzip_tar(root / "gzip.tar", [("0000.png", 1 << 30)]),
        "many": gzip_tar(root / "many.tar", [(f"{i:04d}.png", 48 << 20) for i in range(24)]),
    }
    if shutil.which("tar"):
        with (root / "big.png").open("wb") as f:
            f.truncate(3_400_000_000)
        subprocess.run(["tar", "-cSf", "sparse.tar", "big.png"], cwd=root, check=True)
        (root / "big.png").unlink()
        found["sparse"] = root / "sparse.tar"
    return found


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("gzip", "a member may hold at most 67,108,864"),
        ("sparse", "a member may hold at most 67,108,864"),
        ("many", "decompression bomb"),
    ],
)
def test_tar_bombs_are_refused_under_a_memory_limit(
    bombs: dict[str, Path], kind: str, phrase: str
) -> None:
    """Bug caught: a gzip-compressed or sparse tar member was read whole (3.4 GB resident from
    a 3 MB shard, then a MemoryError traceback); members each under the cap filled the shuffle
    buffer instead."""
    if kind not in bombs:
        pytest.skip("GNU tar is needed to write a sparse member")
    done = under_memory_limit(f"""
        from fdm_cli.data.shards import ShardStream
        ShardStream({str(bombs[kind])!r}, 16, 1, "auto", 0, False).take(0, 2)
    """)
    assert done.returncode == 2 and phrase in done.stdout, done.stdout + done.stderr


def test_a_tar_bomb_is_one_line_from_the_command_line_and_the_cap_is_configurable(
    cli, tiny, bombs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the refusal must reach the user as one line, naming the setting."""
    out = ["--out", tmp_path / "run", "--max-steps", "1", *tiny]
    refused(cli("train", "--data", bombs["gzip"], *out), "0000.png", "FDM_TAR_MEMBER_MB=64 MiB")
    monkeypatch.setenv("FDM_TAR_MEMBER_MB", "32")  # the 48 MiB members are now over the cap
    with pytest.raises(UserError, match="FDM_TAR_MEMBER_MB=32 MiB"):
        ShardStream(str(bombs["many"]), 16, 1, "auto", 0, False).take(0, 1)
    monkeypatch.setenv("FDM_TAR_MEMBER_MB", "lots")
    refused(cli("train", "--data", bombs["gzip"], *out), "FDM_TAR_MEMBER_MB='lots'")


def test_a_brace_bomb_is_counted_before_it_is_expanded(cli, tiny, tmp_path: Path) -> None:
    """Bug caught: `{0..9999999}` in a shard pattern took 1.7 GB and 117 s before anything was
    read (a list of ten million names, then a stat of each)."""
    pattern = str(tmp_path / "s-{0..9999999}.tar")
    done = under_memory_limit(
        f"""
        from fdm_cli.data.shards import expand_shards
        expand_shards({pattern!r})
    """,
        timeout=30,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "expands to 10,000,000 names; at most 100,000" in done.stdout
    nested = str(tmp_path / "s-{0..999}{a,b{0..99}}.tar")  # 1000 x (1 + 100): both count
    result = cli("train", "--data", nested, "--out", tmp_path / "run", "--max-steps", "1", *tiny)
    refused(result, "101,000 names", "FDM_MAX_SHARDS")


def test_the_brace_count_is_braceexpands_own() -> None:
    """Bug caught: a counter that differs from the expansion (escapes, nesting, stray braces,
    descending and stepped ranges) would refuse a valid pattern or let a bomb through."""
    patterns = [
        "s-{000000..000127}.tar", "{a,b{1..3}}{a..z}", "{{a,b},{c,{d,e}}}", "{a{b}c,d}",
        "\\{1,2\\}", "{1\\,2,3}", "{-3..3..2}", "{Z..a}", "{z..A..3}", "{10..1..0}", "{}",
        "{a}", "{,}", "}{a,b}", "a{b,c}d{e,f{g,h}}", "{07..10}{x..y..-1}",
    ]  # fmt: skip
    for pattern in patterns:
        try:
            expected = len(list(braceexpand(pattern)))
        except ValueError:
            expected = 0  # unbalanced: braceexpand refuses, and so does fdm
        assert _count_pattern(pattern)[0] == expected, pattern


def test_walking_root_or_a_home_folder_needs_the_opt_in(
    cli, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: `data: "/"` walked the whole file system with no feedback."""
    home = make_folder(tmp_path / "home" / "me", 2, size=(16, 16))
    make_folder(tmp_path / "home" / "you", 1, size=(16, 16))
    monkeypatch.setenv("HOME", str(home))
    for folder, what in (("/", "the root folder"), (home, "a home folder")):
        result = cli(
            "train", "--data", folder, "--out", tmp_path / "run", "--max-steps", "1", *tiny
        )
        refused(result, what, "FDM_DATA_ANY_FOLDER=1")
    for folder in (tmp_path / "home", tmp_path / "home" / "you"):  # the homes' folder, another's
        with pytest.raises(UserError, match="a home folder"):
            list_images(folder)
    monkeypatch.setenv("FDM_DATA_ANY_FOLDER", "1")
    monkeypatch.setattr(walk, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("WARNING", logger="fdm_cli.data.walk"):
        assert len(list_images(home)) == 2
    assert "still listing" in caplog.text and "file(s) in" in caplog.text


# ---------------------------------------------------------------------------------------------
# One line, or skipped and counted


def test_a_symlink_loop_in_a_data_folder_is_skipped_and_counted(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: one `loop.png -> loop.png` refused the whole folder ("Too many levels of
    symbolic links")."""
    folder = make_folder(tmp_path / "imgs", 3, size=(16, 16))
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "a.png").symlink_to("b.png")
    (folder / "sub" / "b.png").symlink_to("a.png")
    with caplog.at_level("WARNING", logger="fdm_cli.data.walk"):
        assert len(datacache.open_cached(str(folder), 16)) == 3
    assert "skipped 3 symbolic link loop(s)" in caplog.text


def test_a_file_name_that_is_not_utf8_is_read(tmp_path: Path, cache: Path) -> None:
    """Bug caught: a file name that is not UTF-8 stopped the cache digest with a
    UnicodeEncodeError traceback."""
    folder = make_folder(tmp_path / "imgs", 2, size=(16, 16))
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1, not UTF-8
    with open(odd, "wb") as f:
        Image.new("RGB", (16, 16), (9, 9, 9)).save(f, format="PNG")
    assert len(datacache.open_cached(str(folder), 16)) == 3


def test_an_empty_manifest_is_one_line(cli, tiny, tmp_path: Path) -> None:
    """Bug caught: a manifest listing no shards stopped with an IndexError traceback."""
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "fdm-shards/1", "shards": []}))
    refused(
        cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--max-steps", "1", *tiny),
        "lists no shards",
    )


def test_manifest_entries_stay_inside_its_folder(
    cli, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: a manifest's shard names were joined to its folder as given, so an
    absolute path or `..` read a tar anywhere on the disk."""
    _write_shard(tmp_path / "elsewhere.tar", [_png(10), _png(20)], 0)
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("../elsewhere.tar", str(tmp_path / "elsewhere.tar")):
        manifest = {"format": "fdm-shards/1", "shards": [{"name": name, "count": 2}]}
        (packed / MANIFEST).write_text(json.dumps(manifest))
        result = cli(
            "train", "--data", packed, "--out", tmp_path / "run", "--max-steps", "1", *tiny
        )
        refused(result, "outside its folder", "FDM_MANIFEST_OUTSIDE")
    monkeypatch.setenv("FDM_MANIFEST_OUTSIDE", "1")
    assert expand_shards(str(packed))[0] == [str(tmp_path / "elsewhere.tar")]


def test_a_sample_without_an_image_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: a shard sample with only a `.json` member stopped the run ("holds no
    image") instead of being replaced like an image that does not decode."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (
            ("0000.png", _png(10)),
            ("0001.json", b"{}"),
            ("0002.png", _png(30)),
            ("0002.json", b"{}"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with caplog.at_level("WARNING", logger="fdm_cli.data.shards"):
        x = ShardStream(str(shard), 8, 1, "auto", seed=0, hflip=False).take(0, 9)
    assert {round((v + 1) * 127.5) for v in x[:, 0, 0, 0].tolist()} == {10, 30}
    assert len(caplog.records) == 1 and "0001 (holds json, no image)" in caplog.text
    strict = ShardStream(str(shard), 8, 1, "auto", seed=0, hflip=False, strict=True)
    with pytest.raises(UserError, match="no image"):
        strict.take(0, 3)
