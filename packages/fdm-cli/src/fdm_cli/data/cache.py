"""The decoded cache of an image folder or IDX file: built once, shared by every rank, read by
offset so that a process's memory does not grow with the data set.

A cache file holds the images as uint8 ``N x C x R x R`` at the training resolution, after a
4 KiB header (magic, JSON: count, channels, resolution, source, warning and the SHA-256 of
these). It lives in the cache
directory (``data.cache_dir``, else ``$FDM_DATA_CACHE``, else ``$XDG_CACHE_HOME/fdm/data``, else
``~/.cache/fdm/data``) under the name ``<setting>-<content>.u8``:

- ``setting``: digest of the source's absolute path, resolution, channels, fit and strict;
- ``content``: digest of the manifest, every image's relative path, size and mtime (the IDX
  file's for IDX), so adding, removing or changing a file builds a new cache, and the build
  removes the caches of the same setting that it replaces.

The build decodes one image at a time into a temporary file that is renamed into place (an
interrupted build leaves no cache), under an exclusive lock: the first rank builds, the others
wait and then read the same file. The cache folder may be shared, so nothing there is trusted:
the temporary file is created exclusively (``mkstemp``: a symlink planted at its name is never
followed), the lock file is opened without following a symlink, the temporary files of a build
that was killed are removed by the next build of the same setting, and a cache whose header is
damaged or edited (its digest does not match) is rebuilt with one warning saying so.

`CachedImages.batch` reads each sample with ``os.pread`` into a small buffer: the operating
system's page cache (shared, not counted in any process's RSS) keeps the hot data, whereas
touched pages of a memory map would count in RSS and grow to the file's size over an epoch.
Random access by index keeps `fdm_cli.data.dataset.DataOrder`, so resume is exact
(docs/design.md §14).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from fdm_cli.data import Fit
from fdm_cli.data.dataset import idx_chunks, locate_source
from fdm_cli.data.images import folder_channels, folder_images, folder_rows
from fdm_cli.errors import UserError

CACHE_ENV = "FDM_DATA_CACHE"
MAGIC = b"FDMDATA1"
HEADER_BYTES = 4096  # the images start here
SUFFIX = ".u8"
log = logging.getLogger(__name__)


def cache_root(cache_dir: str | None = None) -> Path:
    """Where decoded caches live (see the module docstring)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "fdm" / "data"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _content_digest(root: Path, files: Iterable[Path]) -> tuple[str, int]:
    """Digest of each file's path relative to `root` (its bytes: a name that is not UTF-8
    counts too), size and mtime (ns), and the file count; streamed, so a folder of millions of
    images costs no list."""
    sha, count = hashlib.sha256(), 0
    for f in files:
        count += 1
        st = f.stat()
        sha.update(os.fsencode(f.relative_to(root)))
        sha.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return sha.hexdigest(), count


class DamagedCache(UserError):
    """A cache file whose header is not one fdm wrote (damaged, edited, truncated)."""


def _header_meta(path: Path, head: bytes) -> dict:
    """The header's JSON, checked against the digest stored in it (DamagedCache if not)."""
    if head[:8] != MAGIC:
        raise DamagedCache(f"{path} is not an fdm data cache")
    (length,) = struct.unpack("<I", head[8:12])
    try:
        meta = json.loads(head[12 : 12 + length])
        stored = meta.pop("sha256")
        valid = [type(meta[k]) for k in ("count", "channels", "res")] == [int] * 3
    except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, no digest, no field
        raise DamagedCache(f"{path} has a damaged header") from None
    if stored != _digest(meta) or not valid:
        raise DamagedCache(
            f"{path} has a header that does not match its digest (damaged or edited)"
        )
    return meta


class CachedImages:
    """A decoded cache file: ``len``, ``channels``, ``resolution`` and `batch`, like
    `fdm_cli.data.dataset.ImageDataset`, without holding the images in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES)
        meta = _header_meta(path, head)
        self.count, self.channels, self.resolution = meta["count"], meta["channels"], meta["res"]
        self.source, self.warning = meta["source"], meta.get("warning")
        self.item_bytes = self.channels * self.resolution * self.resolution
        expected = HEADER_BYTES + self.count * self.item_bytes
        if path.stat().st_size != expected:
            raise DamagedCache(f"{path} is truncated ({path.stat().st_size} != {expected} bytes)")
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.count

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images ``(n, C, R, R)`` at `indices` (one pread each)."""
        out = np.empty((len(indices), self.item_bytes), dtype=np.uint8)
        for row, i in enumerate(indices.tolist()):
            if not 0 <= i < self.count:
                raise IndexError(f"index {i} outside the {self.count} cached images")
            data = os.pread(self._fd, self.item_bytes, HEADER_BYTES + i * self.item_bytes)
            out[row] = np.frombuffer(data, dtype=np.uint8)
        r = self.resolution
        return torch.from_numpy(out).view(-1, self.channels, r, r)

    def batch(self, indices: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Float images in [-1, 1] for `indices`; `flip` (bool per item) mirrors horizontally."""
        x = self.read(indices).float().div_(127.5).sub_(1.0)
        if flip is not None and bool(flip.any()):
            x[flip] = x[flip].flip(-1)
        return x


def _rows(
    path: Path, is_idx: bool, resolution: int, channels: int, fit: Fit, strict: bool
) -> Iterator[torch.Tensor]:
    """The source's images as uint8 ``(n, C, R, R)`` blocks, decoded one block at a time."""
    if is_idx:
        yield from idx_chunks(path, resolution, channels, fit)
        return
    for row in folder_rows(path, folder_images(path), resolution, channels, fit, strict):
        yield row.unsqueeze(0)


class _WarningCollector(logging.Filter):
    """Keeps the warnings a build logs, so that a reused cache repeats them. A filter, not a
    handler: a handler on the logger would stop Python's last-resort handler from printing the
    warning to the user during the build."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())
        return True


def _header(meta: dict) -> bytes:
    """The header bytes of `meta` with its digest, at most HEADER_BYTES (the warning shortened
    if need be)."""
    while True:
        text = json.dumps({**meta, "sha256": _digest(meta)}).encode()
        if len(text) + 12 <= HEADER_BYTES or not meta.get("warning"):
            return MAGIC + struct.pack("<I", len(text)) + text
        meta = {**meta, "warning": meta["warning"][: len(meta["warning"]) // 2]}


def _temporary(target: Path) -> tuple[int, Path]:
    """A new temporary file beside `target`, created exclusively (``O_EXCL``: a file or symlink
    planted at a predictable name is never opened) and named by host and pid."""
    prefix = f".{target.name}.{socket.gethostname()}.{os.getpid()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    umask = os.umask(0)  # the file gets the umask's mode, not mkstemp's private 0600
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, Path(name)


def _build(target: Path, source: str, rows: Iterator[torch.Tensor], channels: int, r: int) -> None:
    """Write the cache file `target` atomically (exclusive temporary file, fsync, rename)."""
    fd, tmp = _temporary(target)
    count = 0
    collector = _WarningCollector()
    data_log = logging.getLogger("fdm_cli.data.images")  # where folder_rows warns
    data_log.addFilter(collector)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(HEADER_BYTES))
            for block in rows:
                f.write(block.contiguous().numpy().tobytes())
                count += block.shape[0]
            warning = "; ".join(collector.messages)[:2000] or None
            meta = {"count": count, "channels": channels, "res": r, "source": source[:1000]}
            f.seek(0)
            f.write(_header({**meta, "warning": warning}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        data_log.removeFilter(collector)
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(root: Path, setting: str, locked_at: float) -> int:
    """Remove the temporary files of builds of `setting` that were killed (SIGKILL, power
    loss): called under the setting's lock, so a file older than the moment it was taken
    belongs to no live build. Returns how many were removed."""
    removed = 0
    for stale in root.glob(f".{setting}-*{SUFFIX}.*.tmp"):
        try:
            if stale.lstat().st_mtime < locked_at:
                stale.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d temporary file(s) of killed cache builds in %s", removed, root)
    return removed


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, opened without following a symlink planted at its name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UserError(
            f"cannot open the data cache lock {path}: {exc.strerror} (a symbolic link or a "
            "file of another user; remove it)"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"the data cache lock {path} is not a regular file; remove it")
    return fd


def open_cached(
    source: str,
    resolution: int,
    channels: int | None = None,
    fit: Fit = "auto",
    strict: bool = False,
    cache_dir: str | None = None,
    say: Callable[[str], None] | None = None,
) -> CachedImages:
    """The decoded cache of the image folder or IDX file `source`, built if missing or stale
    (see the module docstring); `say` is told when this call decoded the images."""
    path, is_idx = locate_source(source)
    if channels is None:
        channels = 1 if is_idx else folder_channels(folder_images(path))
    setting = _digest([str(path.resolve()), resolution, channels, fit, strict])[:16]
    if is_idx:
        content, count = _content_digest(path.parent, [path])
    else:
        content, count = _content_digest(path, folder_images(path))
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data cache directory {root}: {exc}") from None
    target = root / f"{setting}-{content[:32]}{SUFFIX}"
    with os.fdopen(_open_lock(root / f"{setting}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the other ranks wait, then reuse it
        remove_stale_temporaries(root, setting, time.time())
        reused = target.exists()
        if reused:
            try:
                cached = CachedImages(target)
            except DamagedCache as exc:
                log.warning("data cache: %s; decoding the images again", exc)
                reused = False
        if not reused:
            log.info("decoding %d file(s) of %s into the cache %s", count, source, target)
            rows = _rows(path, is_idx, resolution, channels, fit, strict)
            _build(target, source, rows, channels, resolution)
            for stale in root.glob(f"{setting}-*{SUFFIX}"):
                if stale != target:
                    stale.unlink(missing_ok=True)
            if say is not None:
                say(f"decoded {source} once into the data cache {target} (later runs reuse it)")
            cached = CachedImages(target)
    if reused and cached.warning:
        log.warning("%s", cached.warning)  # the build logged it when it decoded the images
    return cached
