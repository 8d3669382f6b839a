"""``fdm data pack FOLDER --out DIR``: an image folder as WebDataset tar shards.

Each shard ``shard-NNNNNN.tar`` holds up to ``--shard-size`` samples ``KKKKKKKK.png`` (the
image brought to ``--resolution`` once, lossless) or ``KKKKKKKK.<ext>`` (the original file,
``--keep-original``); ``manifest.json`` gives the count, resolution, channels and each shard's
name, count and SHA-256. Tar members carry no time stamps, so packing twice writes the same bytes.

Every shard is written to a temporary file (created exclusively, ``fdm_core.atomic_write``) and
renamed when complete, and the manifest last: an interrupted pack leaves no manifest (``fdm train
--data DIR`` refuses the folder) and a folder that already holds files is refused unless
``--overwrite``, which also removes the temporary files a killed pack left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from fdm_cli.data import FORMAT, MANIFEST, Fit
from fdm_cli.errors import UserError

# dataset.py, fdm_core and PIL load torch and numpy: imported where used, so that the command
# `fdm --help` stays fast.


def _samples(
    folder: Path, resolution: int | None, channels: int, fit: Fit, strict: bool
) -> Iterator[tuple[str, bytes]]:
    """(extension, bytes) of each readable image of `folder`, in sorted path order."""
    from PIL import Image

    from fdm_cli.data.images import folder_images, open_image, prepare_image

    for path in folder_images(folder):
        try:
            if resolution is None:
                open_image(path, decode=False)  # a readable header, or skipped
                yield path.suffix.lower().lstrip("."), path.read_bytes()
                continue
            row = prepare_image(path, resolution, channels, fit)
        except UserError:
            if strict:
                raise
            continue
        arr = row.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(buf, format="PNG")
        yield "png", buf.getvalue()


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> str:
    """Write one tar atomically (an exclusive temporary file, renamed); returns its SHA-256."""
    from fdm_core import atomic_write

    digest = hashlib.sha256()
    with atomic_write(path, "w+b") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        f.seek(0)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary files of a killed pack into `out` (``.shard-*.tmp``,
    ``.manifest.json.*.tmp``): they are never renamed into place."""
    for pattern in (".shard-*.tmp", f".{MANIFEST}.*tmp"):
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)


def pack_folder(
    folder: Path,
    out: Path,
    shard_size: int = 1000,
    resolution: int | None = None,
    channels: int | None = None,
    fit: Fit = "auto",
    strict: bool = False,
) -> dict:
    """Pack `folder` into shards under `out` (see the module docstring); returns the manifest."""
    from fdm_cli.data.images import folder_channels, folder_images

    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    if resolution is not None and resolution < 1:
        raise UserError(f"--resolution must be at least 1 (got {resolution})")
    channels = channels or folder_channels(folder_images(folder))
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        name = f"shard-{len(shards):06d}.tar"
        shards.append(
            {"name": name, "count": len(batch), "sha256": _write_shard(out / name, batch)}
        )
        batch.clear()

    count = 0
    for ext, data in _samples(folder, resolution, channels, fit, strict):
        batch.append((f"{count:08d}.{ext}", data))
        count += 1
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    if not count:
        raise UserError(f"no readable image in {folder}")
    last = len(shards) - 1
    manifest = {
        "format": FORMAT,
        "count": count,
        "resolution": resolution,
        "channels": channels,
        "fit": fit if resolution is not None else None,
        "pattern": f"shard-{{000000..{last:06d}}}.tar",
        "shards": shards,
    }
    from fdm_core import atomic_write

    with atomic_write(out / MANIFEST, "w") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
    return manifest
