"""The suite catches known bugs: each mutant in tests/mutants.py, injected into the core, must
make every test it names fail (and the same tests pass on the real code, as the rest of the
suite shows). Each run is a fresh pytest process, so nothing leaks into this one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .mutants import ENV, MUTANTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_suite_catches_the_mutant(name):
    mutant = MUTANTS[name]
    env = {**os.environ, ENV: name}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rf",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.mutants",
            *mutant.caught_by,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"{mutant.what}: pytest exited {result.returncode}\n{output}"
    survived = [test for test in mutant.caught_by if f"FAILED {test}" not in output]
    assert not survived, f"{mutant.what} was not caught by {survived}\n{output[-3000:]}"
