"""Developer sessions. ``nox`` runs tests and lint; ``nox -s tests`` alone runs the test suite.

Every session installs into a fresh virtual environment with ``-c constraints.txt`` so that the
CPU torch wheel pinned there is used on this machine kind.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = False

PACKAGES = [
    "packages/fdm-core",
    "packages/fdm-models",
    "packages/fdm-transforms",
    "packages/fdm-cli",
]
CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """Install the four packages (editable) and run pytest."""
    session.install(*CONSTRAINTS, "torch", "triton", "pytest", "pytest-timeout")
    session.install(*CONSTRAINTS, *[arg for p in PACKAGES for arg in ("-e", p)])
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over packages, tests and bench."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "packages", "tests", "bench", "noxfile.py")
