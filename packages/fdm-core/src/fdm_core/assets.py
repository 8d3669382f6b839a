"""Assets: files a component loads (an autoencoder's weights), kept with the model that uses them
(docs/design.md §10.5).

A transform parameter typed `AssetPath` names a file or folder the transform reads when it is
built. Two rules make a trained model self-contained:

- **Bundling.** `bundle_assets` copies every asset of a process config into
  ``DEST/assets/<component>-<digest>`` (digest: the first 16 hex digits of the content's
  SHA-256) and rewrites the parameter to that relative path. ``fdm train`` bundles into the run
  directory, and the model directory it exports carries a copy, so either can be moved or shared
  on its own.
- **Resolution.** A relative asset path is resolved against the base directory given as the
  validation context of `ProcessConfig` (``context={"base_dir": DIR}``; default: the working
  directory). A bundled path must still hold the content its digest names: a changed or
  different file is refused with a message, never used silently.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

ASSETS_DIR = "assets"
DIGEST_CHARS = 16
_BUNDLED = re.compile(rf"^{ASSETS_DIR}/(?P<stem>[^/]+)-(?P<digest>[0-9a-f]{{{DIGEST_CHARS}}})$")


class _AssetMarker:
    """Metadata that marks a `TransformParams` field as an asset path."""

    def __repr__(self) -> str:
        return "AssetPath"


AssetPath = Annotated[str, _AssetMarker()]
"""A parameter naming a file or folder the component loads (relative: see module docstring)."""


class AssetError(ValueError):
    """An asset that is missing or whose content does not match the digest it was bundled as."""


def asset_fields(factory: Any) -> list[str]:
    """Names of the `AssetPath` parameters of a registered factory (a class with `Params`)."""
    params = getattr(factory, "Params", None)
    fields = getattr(params, "model_fields", {})
    return [
        name
        for name, info in fields.items()
        if any(isinstance(m, _AssetMarker) for m in info.metadata)
    ]


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file, or of a folder: every file's relative name and bytes, in order."""
    path = Path(path)
    digest = hashlib.sha256()
    for name, file in _files(path):
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _files(path: Path) -> Iterator[tuple[str, Path]]:
    if path.is_file():
        yield path.name, path
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        yield file.relative_to(path).as_posix(), file


def resolve_asset(value: str, base_dir: str | os.PathLike[str] | None) -> Path:
    """The asset `value` names, resolved against `base_dir`, with a bundled digest checked."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        where = f" (relative to {base_dir})" if base_dir is not None else ""
        raise AssetError(f"{value} does not exist{where}")
    bundled = _BUNDLED.match(value)
    if bundled is not None:
        found = content_digest(path)[:DIGEST_CHARS]
        if found != bundled["digest"]:
            raise AssetError(
                f"{path} was bundled with content digest {bundled['digest']} but now has "
                f"{found}: it was changed or replaced, so it is not the file this model was "
                "trained with; restore it, or retrain with the new one"
            )
    return path


def resolve_spec_assets(
    spec: dict[str, Any], factory: Any, base_dir: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """A copy of a registry spec with its asset parameters resolved to checked absolute paths."""
    out = dict(spec)
    for name in asset_fields(factory):
        if isinstance(out.get(name), str):
            out[name] = str(resolve_asset(out[name], base_dir).resolve())
    return out


def bundle_assets(
    specs: list[dict[str, Any]],
    factories: list[Any],
    dest: str | os.PathLike[str],
    base_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Copy the assets of `specs` (built by `factories`) into ``dest/assets`` and return the
    specs with their asset parameters rewritten to the relative bundled paths.

    An asset already bundled under the same digest is not copied again; the copy is made under a
    temporary name and renamed into place, so a crash never leaves a partial asset.
    """
    out = []
    for spec, factory in zip(specs, factories, strict=True):
        spec = dict(spec)
        for name in asset_fields(factory):
            if isinstance(spec.get(name), str):
                source = resolve_asset(spec[name], base_dir)
                spec[name] = _bundle_one(source, Path(dest), str(spec.get("name", "asset")))
        out.append(spec)
    return out


def _bundle_one(source: Path, dest: Path, label: str) -> str:
    digest = content_digest(source)[:DIGEST_CHARS]
    stem = re.sub(r"[^A-Za-z0-9_.]+", "_", label) or "asset"
    relative = f"{ASSETS_DIR}/{stem}-{digest}"
    target = dest / relative
    if target.exists():
        return relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # one per process: DDP ranks on several nodes may share `dest` and a process id
    tmp = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    if source.is_dir():
        shutil.copytree(source, tmp)
    else:
        shutil.copy2(source, tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():  # not another process that bundled the same content first
            raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return relative
