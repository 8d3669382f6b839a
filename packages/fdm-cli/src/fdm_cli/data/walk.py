"""A sorted, streaming walk of a folder tree: what `fdm_cli.data.dataset` lists image folders with.

The files come one at a time in the order of ``sorted(folder.rglob("*"))`` (path components
compared in turn), but only one directory's names are held at a time, so listing a folder of
millions of images costs the names of its largest directory, not a `Path` per file.
Symbolic links to directories are not followed (as ``rglob`` does not); a symbolic link loop
(``a.png -> a.png``) is skipped and counted in one warning, not a refusal of the folder.

A data folder that is ``/`` or a home folder (yours, the folder holding it, another user's) is
refused unless ``FDM_DATA_ANY_FOLDER=1``: walking it means every file on the disk or in the
home. A long walk logs its progress (every PROGRESS_SECONDS, as a warning, so it is shown).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fdm_cli.errors import UserError

ANY_FOLDER_ENV = "FDM_DATA_ANY_FOLDER"
PROGRESS_SECONDS = 30.0
log = logging.getLogger(__name__)
_warned: set[tuple[str, int]] = set()  # (folder, loops): one warning per process


def broad_folders() -> set[Path]:
    """``/``, the home folder and, when homes share a parent (``/home``), that parent."""
    home = Path.home().resolve()
    broad = {Path("/"), home}
    if home.parent != Path("/"):
        broad.add(home.parent)
    return broad


def check_walkable(folder: Path) -> None:
    """A UserError for a data folder that is ``/`` or a home folder (see the docstring)."""
    if os.environ.get(ANY_FOLDER_ENV, "") not in ("", "0"):
        return
    resolved = folder.resolve()
    broad = broad_folders()
    homes = {p for p in broad if p != Path("/") and p != Path.home().resolve()}
    if resolved in broad or resolved.parent in homes:
        what = "the root folder" if resolved == Path("/") else "a home folder"
        raise UserError(
            f"{folder} is {what}: fdm would walk every file under it; give the folder that "
            f"holds the images (set {ANY_FOLDER_ENV}=1 to walk it anyway)"
        )


class _Walk:
    """The state of one walk: files seen, symbolic link loops skipped, progress timing."""

    def __init__(self, root: Path, suffixes: tuple[str, ...]) -> None:
        self.root, self.suffixes = root, suffixes
        self.files = self.folders = 0
        self.loops: list[str] = []
        self.start = self.last = time.monotonic()

    def is_file(self, entry: os.DirEntry) -> bool:
        try:
            return entry.is_file()
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self.loops.append(entry.path)
            return False

    def progress(self) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            log.warning(
                "still listing %s: %d file(s) in %d folder(s) so far (%.0f s)",
                self.root, self.files, self.folders, now - self.start,
            )  # fmt: skip

    def walk(self, folder: Path) -> Iterator[Path]:
        self.folders += 1
        self.progress()
        subdirs, names = set(), []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.add(entry.name)
                    names.append(entry.name)
                elif os.path.splitext(entry.name)[1].lower() in self.suffixes:
                    if self.is_file(entry):
                        names.append(entry.name)
        names.sort()
        for name in names:
            if name in subdirs:
                yield from self.walk(folder / name)
            else:
                self.files += 1
                yield folder / name

    def report(self) -> None:
        key = (str(self.root), len(self.loops))
        if self.loops and key not in _warned:
            _warned.add(key)
            log.warning(
                "skipped %d symbolic link loop(s) in %s (first: %s)",
                len(self.loops), self.root, self.loops[0],
            )  # fmt: skip


def walk_files(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """The files under `folder` whose suffix (lower case) is one of `suffixes`, sorted; a
    UserError for ``/`` or a home folder (`check_walkable`)."""
    check_walkable(folder)
    state = _Walk(folder, suffixes)
    yield from state.walk(folder)
    state.report()
