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
- **Confinement.** A run or model folder is untrusted input (it may be downloaded or shared): an
  asset named by one (a `base_dir` is given) must lie inside it, and no file of an asset is a
  symbolic link or a special file. Links are never followed when an asset is hashed or copied:
  one is refused with an `AssetError` naming it, before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Annotated, Any, BinaryIO

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
    """SHA-256 (hex) of a file, or of a folder: every file's relative name and bytes, in order.

    An `AssetError` names a symbolic link or special file inside a folder (never followed)."""
    path = Path(path)
    digest = hashlib.sha256()
    for name, file in _files(path):
        digest.update(name.encode() + b"\0")
        with _open_no_follow(file) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _open_no_follow(file: Path) -> BinaryIO:
    """`file` opened for reading, refusing a symbolic link (O_NOFOLLOW, where the OS has it)
    and anything but a regular file (opened without blocking, so a FIFO cannot hang it)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(file, flags)
    except OSError as exc:
        if file.is_symlink():
            raise _link_error(file) from None
        raise AssetError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AssetError(f"{file} is not a regular file or folder; remove it")
    return os.fdopen(fd, "rb")


def _link_error(path: Path) -> AssetError:
    return AssetError(
        f"{path} is a symbolic link; an asset folder must hold its files themselves (links are "
        "never followed): replace the link by a copy of the file (e.g. cp -rL) if you trust it"
    )


def _files(path: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file of an asset: `path` itself when it is a file, else
    every regular file under it, sorted. A symbolic link or a special file (a FIFO, a device)
    anywhere under `path` is an `AssetError` naming it: nothing is followed or opened."""
    if path.is_file():
        return [(path.name, path.resolve())]  # the asset itself may be a link: its owner's
    if not path.is_dir():
        raise AssetError(f"{path} is not a regular file or folder")
    found: list[Path] = []
    folders = [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                child = Path(entry.path)
                if entry.is_symlink():
                    raise _link_error(child)
                if entry.is_dir(follow_symlinks=False):
                    folders.append(child)
                elif entry.is_file(follow_symlinks=False):
                    found.append(child)
                else:
                    raise AssetError(f"{child} is not a regular file or folder; remove it")
    return [(file.relative_to(path).as_posix(), file) for file in sorted(found)]


def inside_folder(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """`path` with every link resolved; an `AssetError` when that leads outside `folder` (an
    absolute path, ``..``, or a symbolic link out of it): a run or model folder, which may come
    from anywhere, only ever makes fdm read its own files."""
    root = Path(folder).resolve()
    resolved = Path(path).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise AssetError(
            f"{path} leads outside {folder} (to {resolved}): a run or model folder may only use "
            "files inside itself; copy the file in (e.g. cp -rL) if you trust it"
        )
    return resolved


def resolve_asset(value: str, base_dir: str | os.PathLike[str] | None) -> Path:
    """The asset `value` names, resolved against `base_dir`, with a bundled digest checked.

    With a `base_dir` (the run or model folder that names the asset) the asset must lie inside
    it (`inside_folder`); without one (the command line) it may be anywhere."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        where = f" (relative to {base_dir})" if base_dir is not None else ""
        raise AssetError(f"{value} does not exist{where}")
    if base_dir is not None:
        inside_folder(path, base_dir)
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
    """Copy `source` (a file or folder) to ``dest/assets/<label>-<digest>`` unless it is there;
    returns that relative path. Links are refused (`_files`) before anything is written, and a
    failed copy leaves no temporary behind."""
    files = _files(source)  # refuses links and special files before anything is written
    digest = content_digest(source)[:DIGEST_CHARS]
    stem = re.sub(r"[^A-Za-z0-9_.]+", "_", label) or "asset"
    relative = f"{ASSETS_DIR}/{stem}-{digest}"
    target = dest / relative
    if target.exists():
        return relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # one per process: DDP ranks on several nodes may share `dest` and a process id
    tmp = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        _remove(tmp)  # left by a killed process that had this host and pid
        if source.is_dir():
            tmp.mkdir()
            for name, file in files:
                _copy_file(file, tmp / name)
        else:
            _copy_file(files[0][1], tmp)  # the file itself, when `source` is a link to it
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # not another process that bundled the same content first
                raise
    finally:
        _remove(tmp)
    return relative


def _copy_file(file: Path, to: Path) -> None:
    """Copy the bytes of `file` (never through a link) to the new file `to`."""
    to.parent.mkdir(parents=True, exist_ok=True)
    with _open_no_follow(file) as src, open(to, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    shutil.copystat(file, to, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_symlink() or path.exists():
        path.unlink()
