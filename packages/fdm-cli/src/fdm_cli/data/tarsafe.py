"""Reading tar shards and shard patterns someone else wrote, in bounded memory.

- `expand_pattern`: a brace pattern (``train-{000000..000127}.tar``, ``::``-separated lists)
  is counted before it is expanded: more than ``$FDM_MAX_SHARDS`` names (default
  MAX_SHARDS) is refused with one line, where ``{0..9999999}`` used to take 1.7 GB and two
  minutes before anything was read.
- `tar_samples`: the samples of one tar stream, grouped by key like WebDataset's
  ``group_by_keys``, but only the members a caller asks for are read into memory, a member
  larger than ``$FDM_TAR_MEMBER_MB`` MiB (default MAX_MEMBER_MB) is refused before it is read,
  and a stream that expands more than MAX_EXPANSION times (a gzip-compressed or sparse member
  of zeros: 3.4 GB from a 3 MB shard) is refused as a decompression bomb.
"""

from __future__ import annotations

import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from fdm_cli.errors import UserError

MEMBER_ENV = "FDM_TAR_MEMBER_MB"
SHARDS_ENV = "FDM_MAX_SHARDS"
MAX_MEMBER_MB = 64  # far above a real data image (a 4K PNG photo is ~20 MB)
MAX_SHARDS = 100_000  # far above a real shard set (LAION-5B has ~230,000 across its parts)
MAX_EXPANSION = 100  # images do not compress: a tar that expands 100x holds no image data
BOMB_FLOOR = 64 << 20  # bytes read before the expansion is judged (small shards pass)
_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_META = re.compile(r"__[^/]*__($|/)")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_READ_ERRORS = (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def env_limit(name: str, default: int) -> int:
    """The positive integer in environment variable `name`, else `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name}={raw!r}: must be a positive whole number (default {default})")
    return value


def max_member_bytes() -> int:
    """The largest tar member read (``$FDM_TAR_MEMBER_MB`` MiB, default MAX_MEMBER_MB)."""
    return env_limit(MEMBER_ENV, MAX_MEMBER_MB) << 20


# ---------------------------------------------------------------------------------------------
# Brace patterns


def _count_range(expr: str) -> int | None:
    """The names a range ``{a..b[..step]}`` expands to (braceexpand's rules), or None."""
    if m := _INT_RANGE.match(expr):
        start, end, step = int(m[1]), int(m[2]), int(m[3] or 1) or 1
        return abs(end - start) // step + 1
    if m := _CHAR_RANGE.match(expr):
        start, end, step = _ALPHABET.index(m[1]), _ALPHABET.index(m[2]), int(m[3] or 1) or 1
        if start < end:
            return len(_ALPHABET[start : end + 1 : step])
        return len(_ALPHABET[start : (end or -len(_ALPHABET)) - 1 : -step])
    return None


def _sequence(expr: str) -> list[str] | None:
    """The comma-separated parts of a brace expression, or None when it is not a sequence
    (no comma outside inner braces, or unbalanced ones): braceexpand's ``parse_sequence``."""
    parts, depth, start, pos = [], 0, 0, 0
    while pos < len(expr):
        char = expr[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(expr[start:pos])
            start = pos + 1
        pos += 1
    return None if depth != 0 or not parts else [*parts, expr[start:]]


def _count_pattern(pattern: str) -> tuple[int, int]:
    """(names, largest group) that ``braceexpand(pattern)`` yields, by its own parsing rules
    (``parse_pattern``) without expanding; the largest group matters too: braceexpand holds
    each group whole (itertools.product). Unbalanced braces count 0 (braceexpand refuses)."""
    total, largest, depth, start, pos = 1, 1, 0, 0, 0
    while pos < len(pattern):
        char = pattern[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            if depth == 0 and pos > start:
                start = pos
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                expr = pattern[start + 1 : pos]
                count = _count_range(expr)
                if count is None:
                    parts = _sequence(expr)
                    counted = [_count_pattern(p) for p in (parts if parts else [expr])]
                    count = sum(c for c, _ in counted)
                    largest = max([largest, *(big for _, big in counted)])
                total, largest = total * count, max(largest, count)
                start = pos + 1
        pos += 1
    return (0, 0) if depth != 0 else (total, largest)


def expand_pattern(source: str) -> list[str]:
    """The names of brace pattern `source` (``::`` separates patterns), counted first: more
    than ``$FDM_MAX_SHARDS`` (default MAX_SHARDS) is a UserError that says how many."""
    from braceexpand import braceexpand  # installed with webdataset (the shards extra)

    cap = env_limit(SHARDS_ENV, MAX_SHARDS)
    try:
        counts = [_count_pattern(part) for part in source.split("::")]
    except RecursionError:
        raise UserError(f"shard pattern {source[:80]!r}...: braces nested too deeply") from None
    total, largest = sum(c for c, _ in counts), max(big for _, big in counts)
    if max(total, largest) > cap:
        raise UserError(
            f"shard pattern {source[:200]!r} expands to {max(total, largest):,} names; at most "
            f"{cap:,} are read (check the braces, or raise {SHARDS_ENV})"
        )
    try:
        return [name for part in source.split("::") for name in braceexpand(part)]
    except (ValueError, RecursionError) as exc:  # unbalanced or too deeply nested braces
        raise UserError(f"shard pattern {source[:200]!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Tar streams


class _Counting:
    """A read-only stream that counts the bytes read from it (the compressed size)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.read_bytes = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        return data


def _members(
    stream: BinaryIO, url: str, wanted: frozenset[str]
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, data) of each regular member of the tar `stream`; data only for the
    extensions in `wanted` (None for the others, which are skipped without being held)."""
    limit, counting, produced = max_member_bytes(), _Counting(stream), 0

    def check_expansion() -> None:
        if produced > BOMB_FLOOR and produced > MAX_EXPANSION * counting.read_bytes:
            raise UserError(
                f"shard {url} is a decompression bomb: {counting.read_bytes:,} bytes read "
                f"expand to {produced:,} (more than {MAX_EXPANSION}x); refused"
            )

    with tarfile.open(fileobj=counting, mode="r|*") as tar:  # type: ignore[call-overload]
        for info in tar:
            check_expansion()  # the members before this one, read or skipped, are all counted
            name = info.name
            if not info.isreg() or _META.match(name) or (name[:2] == "__" == name[-2:]):
                continue
            if info.size > limit:
                raise UserError(
                    f"shard {url}: member {name} holds {info.size:,} bytes; a member may hold at "
                    f"most {limit:,} ({MEMBER_ENV}={limit >> 20} MiB; raise it for larger images)"
                )
            produced += info.size  # what decompressing it costs, read or skipped
            match = _KEY_EXT.match(name)
            if match is None:
                continue
            key, ext = match[1], match[2].lower()
            if ext not in wanted:
                yield key, ext, None
                continue
            handle = tar.extractfile(info)
            data = handle.read(limit + 1) if handle is not None else b""
            check_expansion()
            yield key, ext, data


def tar_samples(stream: BinaryIO, url: str, wanted: frozenset[str]) -> Iterator[dict[str, Any]]:
    """The samples of one tar `stream` (see the module docstring): dicts with ``__key__``,
    ``__url__`` and each member's extension, mapped to its bytes for the `wanted` extensions
    and to None for the others. A UserError names a shard that cannot be read."""
    sample: dict[str, Any] | None = None
    try:
        for key, ext, data in _members(stream, url, wanted):
            if sample is not None and key != sample["__key__"]:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise UserError(f"cannot read shard {url}: {key}.{ext} appears twice")
            sample[ext] = data
    except _READ_ERRORS as exc:
        first = exc.args[0] if exc.args else exc.__class__.__name__
        raise UserError(f"cannot read shard {url}: {first}") from None
    if sample is not None:
        yield sample
