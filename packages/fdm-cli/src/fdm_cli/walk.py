"""A sorted, streaming walk of a folder tree: what `fdm_cli.data` lists image folders with.

The files come one at a time in the order of ``sorted(folder.rglob("*"))`` (path components
compared in turn), but only one directory's names are held at a time, so listing a folder of
millions of images costs the names of its largest directory, not a `Path` per file.
Symbolic links to directories are not followed (as ``rglob`` does not).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk_files(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """The files under `folder` whose suffix (lower case) is one of `suffixes`, sorted."""
    subdirs, names = set(), []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.add(entry.name)
                names.append(entry.name)
            elif os.path.splitext(entry.name)[1].lower() in suffixes and entry.is_file():
                names.append(entry.name)
    names.sort()
    for name in names:
        if name in subdirs:
            yield from walk_files(folder / name, suffixes)
        else:
            yield folder / name
