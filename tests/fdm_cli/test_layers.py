"""fdm-cli's layers, read from the code's own import statements (every ``import``, also those
inside functions): the commands on top, then training, evaluation, generation and configuration,
then data and run artifacts, then the runtime, then errors and seeding.

A module may import its own subpackage and any lower layer, never a higher one nor a peer of its
own height; no module imports a private name of another; there is no import circle; only the
command line imports Typer. The bug each test catches: a library module that reaches up into
the commands (or a data module into the configuration) and so drags the layer above it in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fdm_cli

PACKAGE = Path(fdm_cli.__file__).parent
# Height of each layer: a module imports only from strictly lower layers (or its own folder).
LAYERS = {
    "cli": 7,
    "api": 6,
    "training": 5,
    "evaluation": 4,
    "generation": 3,
    "config": 3,
    "data": 2,
    "artifacts": 2,
    "runtime": 1,
    "errors": 0,
    "seeding": 0.5,  # seeds are checked with UserError
}
ENTRY = {"fdm_cli", "fdm_cli.__main__"}  # the lazy API re-exports and `python -m fdm_cli`


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every fdm_cli import in `path`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target == "fdm_cli":  # `from fdm_cli import data`: a submodule each
                for n in names:
                    sub = f"fdm_cli.{n}"
                    if _exists(sub):
                        found.append((sub, [], node.lineno))
                continue
            found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {
        name: [i for i in _imports(path) if i[0].startswith("fdm_cli")]
        for name, path in _modules().items()
    }


def _layer_breaches(graph: dict[str, list[tuple[str, list[str], int]]]) -> list[str]:
    breaches = []
    for module, imports in graph.items():
        if module in ENTRY:
            continue
        here = _layer(module)
        assert here in LAYERS, f"{module}: in no layer; add its folder to LAYERS"
        for target, _, line in imports:
            there = _layer(target)
            if target == "fdm_cli" or there == here:
                continue
            if LAYERS[there] >= LAYERS[here]:
                breaches.append(f"{module}:{line} imports {target} ({there} is not below {here})")
    return breaches


def _private_names(graph: dict[str, list[tuple[str, list[str], int]]]) -> list[str]:
    return [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in graph.items()
        for target, names, line in imports
        for name in names
        if name.startswith("_") and target != module
    ]


def _circles(graph: dict[str, list[tuple[str, list[str], int]]]) -> list[list[str]]:
    edges = {
        m: sorted({t for t, _, _ in imps if t in graph and t != m}) for m, imps in graph.items()
    }
    for entry in ENTRY:  # the package's lazy re-exports are not an import of its parts
        edges[entry] = []
    circles, state, stack = [], dict.fromkeys(edges, 0), []

    def visit(node: str) -> None:
        state[node], _ = 1, stack.append(node)
        for nxt in edges[node]:
            if state[nxt] == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt)
        state[node], _ = 2, stack.pop()

    for node in edges:
        if state[node] == 0:
            visit(node)
    return circles


def test_every_import_points_down_the_layers():
    assert _layer_breaches(_graph()) == []


def test_no_module_imports_a_private_name_of_another():
    assert _private_names(_graph()) == []


def test_no_import_circle():
    assert _circles(_graph()) == []


def test_only_the_command_line_imports_typer():
    users = [
        name
        for name, path in _modules().items()
        if any(t == "typer" or t.startswith("typer.") for t, _, _ in _imports(path))
    ]
    assert users and all(_layer(u) == "cli" for u in users), users


@pytest.mark.parametrize(
    ("module", "target", "names", "breach"),
    [
        ("fdm_cli.data.dataset", "fdm_cli.config.train", ["TrainConfig"], "layer"),
        ("fdm_cli.training.loop", "fdm_cli.cli.train", ["train"], "layer"),
        ("fdm_cli.generation.sampling", "fdm_cli.config.presets", ["PRESETS"], "layer"),
        ("fdm_cli.evaluation.fid", "fdm_cli.data.dataset", ["_helper"], "private"),
        ("fdm_cli.runtime.threads", "fdm_cli.runtime.device", [], "circle"),
    ],
)
def test_the_checks_catch_a_breach(module, target, names, breach):
    """Negative controls: one wrong import added to today's graph is reported."""
    graph = _graph()
    graph[module] = [*graph[module], (target, names, 1)]
    if breach == "circle":
        graph[target] = [*graph[target], (module, [], 1)]
    found = {
        "layer": _layer_breaches,
        "private": _private_names,
        "circle": _circles,
    }[breach](graph)
    assert found, f"{module} -> {target} was not reported"
