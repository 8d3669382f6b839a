"""Library errors name the parameter a Python caller passed; the command line shows its own flag
in that place (`UserError.with_names`, `fdm_cli.cli.console.flag_names`).

Bugs caught: a library message that names a flag its Python caller never passed (``--holdout``
from `train_autoencoder(...)`), and a backticked name no command has a flag for, which would reach
a command-line user as a raw parameter name in backticks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import fdm_cli
from fdm_cli.cli.app import app
from fdm_cli.cli.console import API_FLAGS, flag_names
from fdm_cli.errors import PARAMETER, UserError
from fdm_cli.runtime.device import resolve_device

from .conftest import run_cli

PACKAGE = Path(fdm_cli.__file__).parent


def _commands() -> list:
    found, groups = [], [app]
    while groups:
        group = groups.pop()
        found += [c.callback for c in group.registered_commands]
        groups += [g.typer_instance for g in group.registered_groups]
    return found


def _all_flags() -> dict[str, str]:
    names = dict(API_FLAGS)
    for command in _commands():
        names.update(flag_names(command))
    return names


def _backticked_in_user_errors(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError":
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found += [(node.lineno, m) for m in PARAMETER.findall(part.value)]
    return found


def _library_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_python_caller_reads_the_parameter_and_the_cli_user_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^`device` cuda: CUDA is not available"):
        resolve_device("cuda")
    result = run_cli("sample", tmp_path / "run", "--device", "cuda", "--out", tmp_path / "g.png")
    assert result.exit_code == 2
    assert "fdm: error: --device cuda: CUDA is not available" in result.stderr
    assert "`" not in result.stderr


def test_every_named_parameter_has_a_flag() -> None:
    flags = _all_flags()
    missing = [
        f"{path.relative_to(PACKAGE)}:{line}: `{name}`"
        for path in _library_modules()
        for line, name in _backticked_in_user_errors(ast.parse(path.read_text()))
        if name not in flags
    ]
    assert missing == []


def test_the_check_catches_a_name_without_a_flag() -> None:
    """Negative control for the test above."""
    tree = ast.parse('raise UserError(f"`no_such_parameter` {x} must be positive")')
    found = _backticked_in_user_errors(tree)
    assert found == [(1, "no_such_parameter")] and "no_such_parameter" not in _all_flags()


def test_flags_follow_each_commands_own_declarations() -> None:
    from fdm_cli.cli import env, train

    assert flag_names(train.train)["batch_size"] == "--batch-size"
    assert flag_names(train.train)["config"] == "CONFIG"  # an argument
    assert flag_names(train.train)["compile"] == "--compile"  # declared "--compile/--no-compile"
    assert flag_names(env.env)["as_json"] == "--json"  # declared with another name
    message = UserError(
        "`batch_size` 7 must divide; `compile=False` here; `resume=True` there; `other` kept"
    )
    assert message.with_names(flag_names(train.train)) == (
        "--batch-size 7 must divide; --no-compile here; --resume there; `other` kept"
    )
