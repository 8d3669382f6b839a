"""docs/design.md is the repository's own reference for the math, and every citation of it resolves.

A citation is ``docs/design.md`` followed by sections and/or equation labels, e.g.
``docs/design.md §5``, ``docs/design.md §5.2``, ``docs/design.md §3, §6`` (or ``and``),
``docs/design.md (E7)``, ``docs/design.md §7 (E25, E26)``; for a range (``§2-§4``,
``(E25-E27)``) both ends are checked. Each section must be a heading ``## §N Title`` /
``### §N.M Title`` of docs/design.md and each label an ``(En)`` ending an indented equation
line there. The repository must not cite a design document
outside itself, nor hard-code absolute paths of the machine it was
written on. Pure text scanning: no torch needed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"
THIS = Path(__file__).resolve()

SCANNED = ("packages", "tests", "bench", "README.md", "noxfile.py")
NO_ABSOLUTE_PATHS = ("packages", "tests", "bench")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".nox", ".pytest_cache", ".ruff_cache", "build"}
SKIP_SUFFIXES = (".gz", ".png", ".jpg", ".jpeg", ".safetensors", ".pt", ".pyc", ".so", ".whl")

SECTION = r"§\d+(?:\.\d+)?"
LABEL = r"E\d+"
CITATION = re.compile(
    r"docs/design\.md`?"
    rf"(?P<sections>(?:\s*(?:,|and|-|–)?\s*{SECTION})*)"
    rf"(?P<labels>\s*\(\s*{LABEL}(?:\s*(?:,|and|-|–)\s*{LABEL})*\s*\))?"
)
DESIGN_MENTION = re.compile(r"(?<![A-Za-z0-9_])design\.md", re.IGNORECASE)
HEADING = re.compile(rf"^#{{2,3}} ({SECTION}) \S")
LABEL_DEF = re.compile(rf"^ {{4,}}\S.*\s\(({LABEL})\)\s*$")  # ends a line of a display block
ABSOLUTE_PATH = re.compile(r"[\"']/(?:work|home|root|tmp|usr/share)/")


def _tracked(paths: tuple[str, ...]) -> list[Path]:
    """Tracked files under `paths` (git ls-files), or a directory walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for path in paths:
            top = ROOT / path
            if top.is_file():
                files.append(top)
                continue
            for folder, dirs, names in os.walk(top):
                dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
                files.extend(Path(folder) / name for name in names)
    return sorted(
        f
        for f in files
        if f.is_file() and not f.name.endswith(SKIP_SUFFIXES) and f.resolve() not in (DOC, THIS)
    )


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""  # binary data


def _lines(path: Path) -> list[str]:
    return _text(path).splitlines()


def _where(path: Path, lineno: int, line: str) -> str:
    return f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"


def design_targets() -> tuple[set[str], set[str]]:
    """Section numbers (``§5``, ``§5.2``) and equation labels (``E7``) that docs/design.md has."""
    sections, labels = set(), set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if match := HEADING.match(line):
            sections.add(match.group(1))
        if match := LABEL_DEF.search(line):
            labels.add(match.group(1))
    return sections, labels


def test_design_doc_exists() -> None:
    assert DOC.is_file(), "docs/design.md is missing: it is the reference the code cites"


def test_design_doc_is_well_formed() -> None:
    """Sections and labels of the doc itself: every label defined once, sections numbered."""
    text = DOC.read_text(encoding="utf-8").splitlines()
    defined = [m.group(1) for line in text if (m := LABEL_DEF.search(line))]
    duplicates = sorted({label for label in defined if defined.count(label) > 1})
    assert not duplicates, f"equation labels defined more than once: {duplicates}"
    numbers = sorted(int(label[1:]) for label in defined)
    assert numbers == list(range(1, len(numbers) + 1)), f"labels are not E1..En: {numbers}"
    sections, _ = design_targets()
    top = sorted(int(s[1:]) for s in sections if "." not in s)
    assert top == list(range(1, len(top) + 1)), f"sections are not §1..§N: {top}"


def test_every_design_citation_resolves() -> None:
    sections, labels = design_targets()
    broken = []
    for path in _tracked(SCANNED):
        text = _text(path)
        lines = text.splitlines()
        for match in CITATION.finditer(text):  # a citation may wrap onto the next line
            cited = re.findall(SECTION, match.group("sections")) + re.findall(
                LABEL, match.group("labels") or ""
            )
            missing = [item for item in cited if item not in sections | labels]
            if missing:
                lineno = text.count("\n", 0, match.start()) + 1
                where = _where(path, lineno, lines[lineno - 1])
                broken.append(f"{where}  [no {', '.join(missing)} in docs/design.md]")
    assert not broken, "citations of docs/design.md with no such target:\n" + "\n".join(broken)


def test_no_citation_of_an_outside_design_document() -> None:
    outside = []
    for path in _tracked(SCANNED):
        for lineno, line in enumerate(_lines(path), 1):
            for match in DESIGN_MENTION.finditer(line):
                start = match.start()
                ours = match.group() == "design.md" and line[max(0, start - 5) : start] == "docs/"
                if not ours:
                    outside.append(_where(path, lineno, line))
                    break
    assert not outside, (
        "these cite a design document outside the repository; cite docs/design.md §N (En) "
        "instead:\n" + "\n".join(outside)
    )


def test_no_absolute_paths_of_this_machine() -> None:
    found = [
        _where(path, lineno, line)
        for path in _tracked(NO_ABSOLUTE_PATHS)
        if path.suffix == ".py"
        for lineno, line in enumerate(_lines(path), 1)
        if ABSOLUTE_PATH.search(line)
    ]
    assert not found, (
        "absolute paths in Python strings (use paths relative to the repository or the package, "
        "or an environment variable):\n" + "\n".join(found)
    )
