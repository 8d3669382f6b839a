"""IDX files (the MNIST / Fashion-MNIST format): a magic number, the dimensions, unsigned bytes.

Read defensively: only unsigned-byte data, the exact byte count the header announces (computed
without integer overflow), and never more than MAX_IDX_BYTES.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from fdm_cli.errors import UserError

MAX_IDX_BYTES = 1 << 34  # 16 GiB: far beyond any IDX data set, far below a forged header


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) holding unsigned bytes.

    The header is read first and only the bytes it announces are read after it (at most
    MAX_IDX_BYTES), so a gzip bomb or a header that lies costs no more memory than that.
    """
    try:
        with gzip.open(path) if path.name.endswith(".gz") else path.open("rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise UserError(f"{path} is not an IDX file (bad magic number)")
            if head[2] != 0x08:
                raise UserError(f"{path}: only unsigned-byte IDX data (type 0x08) is supported")
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                raise UserError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{head[3]}I", dims)
            count = math.prod(shape) if shape else 0  # exact: no integer overflow
            if count > MAX_IDX_BYTES:
                raise UserError(
                    f"{path}: IDX header says {shape} ({count:,} bytes); at most "
                    f"{MAX_IDX_BYTES:,} bytes are read"
                )
            data = f.read(count + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) != count:
        held = f"only {len(data)}" if len(data) < count else "more"
        raise UserError(
            f"{path}: IDX header says {shape} ({count} bytes) but the file holds {held} bytes "
            "of data (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def find_idx_images(directory: Path) -> Path | None:
    """The ``*-images-idx3-ubyte[.gz]`` file of `directory` (train split preferred), if any."""
    found = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.name.removesuffix(".gz").endswith("-images-idx3-ubyte")
    )
    if not found:
        return None
    train = [p for p in found if p.name.startswith("train")]
    return (train or found)[0]
