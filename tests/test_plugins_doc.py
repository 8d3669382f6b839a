"""docs/plugins.md, the plugin tutorial, stays true to the code.

- Every hook that ``fdm_core.hookspecs`` declares (the functions carrying pluggy's hookspec mark,
  attribute ``fdm_spec``) appears in a code block of the doc as a ``def name(args)`` line whose
  parameter names, and annotations where the doc gives them, are the code's.
- The tutorial's files are examples/fdm-haar's files: each block introduced by a line
  ``**fdm-haar/PATH**`` equals ``examples/fdm-haar/PATH``, and every file of the example has one.

Pure text scanning plus ``inspect`` on the hookspec module.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
from pathlib import Path

from fdm_core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "fdm-haar"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}

FENCE = re.compile(r"^(?P<fence>`{3,})[\w-]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
FILE_BLOCK = re.compile(
    r"^\*\*fdm-haar/(?P<path>\S+)\*\*\n\n(?P<fence>`{3,})[\w-]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.M | re.S,
)
DEF_LINE = re.compile(r"^\s*def\s+(\w+)\s*\(.*\)\s*(?:->.*)?:\s*$")


def hook_specs() -> dict[str, inspect.Signature]:
    """The hooks fdm declares: functions of the module marked by its pluggy HookspecMarker."""
    mark = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name: inspect.signature(func)
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(func, mark)
    }


def documented_defs(text: str) -> dict[str, list[ast.FunctionDef]]:
    """Every ``def`` line inside a fenced code block, parsed, by function name."""
    found: dict[str, list[ast.FunctionDef]] = {}
    for block in FENCE.finditer(text):
        for line in block.group("body").splitlines():
            if DEF_LINE.match(line):
                node = ast.parse(line.strip() + "\n    ...").body[0]
                assert isinstance(node, ast.FunctionDef)
                found.setdefault(node.name, []).append(node)
    return found


def _annotation(value: object) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature_problems(text: str) -> list[str]:
    """What the doc gets wrong about the hookspecs (empty: nothing)."""
    specs, defs = hook_specs(), documented_defs(text)
    problems = [
        f"the doc shows a hook {name}() that fdm_core.hookspecs does not declare"
        for name in defs
        if name.startswith("fdm_register_") and name not in specs
    ]
    for name, sig in specs.items():
        if name not in defs:
            problems.append(f"hook {name}{sig} is not in a code block of docs/plugins.md")
            continue
        want = [(p.name, _annotation(p.annotation)) for p in sig.parameters.values()]
        for node in defs[name]:
            args = node.args
            plain = args.posonlyargs + args.args + args.kwonlyargs
            extra = [a for a in (args.vararg, args.kwarg) if a is not None]
            got = [(a.arg, ast.unparse(a.annotation) if a.annotation else None) for a in plain]
            shown = f"def {name}({ast.unparse(args)})"
            if extra or [n for n, _ in got] != [n for n, _ in want]:
                problems.append(f"{shown}: the parameters of {name} are {sig}")
                continue
            for (arg, doc_ann), (_, code_ann) in zip(got, want, strict=True):
                if doc_ann is not None and doc_ann != code_ann:
                    problems.append(f"{shown}: {arg} is annotated {code_ann!r} in the code")
            code_ret = _annotation(sig.return_annotation)
            if node.returns is not None and ast.unparse(node.returns) != code_ret:
                problems.append(f"{shown}: {name} returns {code_ret!r} in the code")
    return problems


def doc_files(text: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for match in FILE_BLOCK.finditer(text):
        path = match.group("path")
        assert path not in files, f"docs/plugins.md shows fdm-haar/{path} twice"
        files[path] = match.group("body")
    return files


def example_files() -> dict[str, str]:
    files = {}
    for folder, dirs, names in os.walk(EXAMPLE):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in names:
            if not name.endswith(".pyc"):
                path = Path(folder) / name
                files[path.relative_to(EXAMPLE).as_posix()] = path.read_text(encoding="utf-8")
    return files


def drift(text: str) -> list[str]:
    """Where the tutorial's files and examples/fdm-haar differ (empty: nowhere)."""
    shown, real = doc_files(text), example_files()
    problems = [
        f"fdm-haar/{p} is in docs/plugins.md but not in examples/" for p in shown.keys() - real
    ]
    problems += [
        f"examples/fdm-haar/{p} is not shown in docs/plugins.md" for p in real.keys() - shown
    ]
    problems += [
        f"the doc's fdm-haar/{p} differs from examples/fdm-haar/{p}"
        for p in sorted(shown.keys() & real.keys())
        if shown[p].rstrip("\n") != real[p].rstrip("\n")
    ]
    return problems


def test_hookspecs_are_discovered() -> None:
    specs = hook_specs()
    assert {"fdm_register_transforms", "fdm_register_noise_schedules"} <= specs.keys()
    assert all(list(sig.parameters) == ["register"] for sig in specs.values())


def test_every_hookspec_is_documented_with_its_signature() -> None:
    problems = signature_problems(DOC.read_text(encoding="utf-8"))
    assert not problems, "docs/plugins.md disagrees with fdm_core.hookspecs:\n" + "\n".join(
        problems
    )


def test_a_wrong_or_missing_signature_is_caught() -> None:
    """The check itself: break a copy of the doc in each way it guards against."""
    text = DOC.read_text(encoding="utf-8")
    line = "def fdm_register_stage_schedules(register: Register) -> None:"
    assert line in text
    broken = {
        "renamed parameter": text.replace(line, line.replace("(register:", "(registry:")),
        "extra parameter": text.replace(line, line.replace("Register)", "Register, name: str)")),
        "wrong annotation": text.replace(line, line.replace(": Register", ": Callable")),
        "wrong return": text.replace(line, line.replace("-> None", "-> bool")),
        "missing hook": text.replace(line, "def something_else(register):"),
        "unknown hook": text + "\n```python\ndef fdm_register_models(register):\n```\n",
    }
    for what, copy in broken.items():
        assert signature_problems(copy), f"a {what} in docs/plugins.md went unnoticed"


def test_tutorial_files_are_the_example_files() -> None:
    problems = drift(DOC.read_text(encoding="utf-8"))
    assert not problems, "docs/plugins.md and examples/fdm-haar drifted apart:\n" + "\n".join(
        problems
    )


def test_drift_is_caught() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert {"pyproject.toml", "src/fdm_haar/transform.py", "src/fdm_haar/plugin.py"} <= set(
        doc_files(text)
    )
    assert drift(text.replace("boundary = Boundary.IDENTITY", "boundary = Boundary.RENOISE"))
    assert drift(text.replace("**fdm-haar/src/fdm_haar/plugin.py**", "plugin.py:"))
