"""A broken installed plugin never breaks fdm (issue 25, items 7-11 and 13).

Each broken plugin is installed alone (a fake distribution on sys.path); `fdm plugins`,
`fdm env`, `fdm train --preset fdm-ds --dry-run` and a two-step tiny run must still exit 0,
with the plugin reported (by the two diagnostic commands) together with its fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fdm_core import registry as registry_module

from ..fdm_core.test_registry import BROKEN, PLUGIN, make_distribution

MARKUP = {
    "markup-in-an-error": ("raise ImportError('needs [/etc/foo] and [red]x')\n", "[/etc/foo]"),
    "markup-in-a-name": (PLUGIN.format(cls="Tint", name="[red]tint"), "[red]tint"),
}
CASES = {
    **{name: body for name, (body, _) in BROKEN.items()},
    **{k: b for k, (b, _) in MARKUP.items()},
}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Install the case's plugin for the duration of the test, with a fresh default registry."""
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "fdmtest-broken", "fdmtest_broken", CASES[request.param])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FDM_LOAD_PLUGINS", raising=False)
    registry_module.reset_registry()
    yield request.param
    registry_module.reset_registry()
    sys.modules.pop("fdmtest_broken", None)


@pytest.mark.parametrize("installed", list(CASES), indirect=True)
def test_diagnostics_report_a_broken_plugin_and_built_in_training_works(
    installed: str, cli, tiny, tmp_path: Path
) -> None:
    """Catches a traceback (or a silent sys.exit) from `fdm plugins`, `fdm env` or a built-in
    run, and plugin text printed as rich markup (a MarkupError, or `[red]` swallowed)."""
    shown = json.loads(cli("plugins", "--json").output)
    if installed == "markup-in-a-name":
        assert "[red]tint" in {c["name"] for c in shown["components"]}
    else:
        (error,) = shown["errors"]
        assert error["distribution"] == "fdmtest-broken"
        assert error["fix"].startswith("pip uninstall fdmtest-broken")
    for command in (("plugins",), ("env",)):
        result = cli(*command)
        assert result.exit_code == 0, result.output
        if installed == "markup-in-an-error" or (command == ("plugins",) and installed in MARKUP):
            assert MARKUP[installed][1] in result.output, result.output
    dry = cli("train", "--preset", "fdm-ds", "--dry-run", "--out", tmp_path / "dry")
    assert dry.exit_code == 0, dry.output
    run = cli("train", "--preset", "fdm-ds", "--out", tmp_path / "run", "--max-steps", "2", *tiny)
    assert run.exit_code == 0 and "done: 2 steps" in run.output, run.output


WRONG_AT_THE_REAL_BATCH = """
from fdm_core import hookimpl
from fdm_transforms import DownsampleTransform


class Odd(DownsampleTransform):
    name = "odd"

    def encode(self, x):
        y = super().encode(x)
        if x.shape[0] <= 4:  # right for the contract probe's small batches only
            return y
        return {body}


@hookimpl
def fdm_register_transforms(register):
    register("odd", Odd)
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("y * float('nan')", "returned NaN or infinite values from finite stage-0 signals"),
        ("y[..., :-1]", "encoded a batch of 6 to per-sample shape (1, 16, 15)"),
    ],
    ids=["nan", "shape"],
)
def test_a_transform_wrong_at_the_real_batch_is_named_before_training(
    body: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli, tiny
) -> None:
    """Catches a plugin's NaN blamed on --lr at the first divergence, and a shape bug surfacing
    as a traceback from the loss; both must name transforms[0] and its distribution, before
    any step, leaving no checkpoint or loss log."""
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "fdmtest-odd", "fdmtest_odd", WRONG_AT_THE_REAL_BATCH.format(body=body))
    monkeypatch.syspath_prepend(str(site))
    registry_module.reset_registry()
    try:
        run = tmp_path / "run"
        chain = "process.transforms=[{name: odd}, {name: downsample}]"
        result = cli("train", "--out", run, "--max-steps", "2", "--set", chain, *tiny)
    finally:
        registry_module.reset_registry()
        sys.modules.pop("fdmtest_odd", None)
    assert result.exit_code == 2, result.output
    assert "transforms[0] (odd, from fdmtest-odd 1.2)" in result.output and message in result.output
    assert not (run / "loss.csv").exists() and not (run / "checkpoints").exists()


def test_run_and_model_folders_record_and_name_their_plugins(
    ds_run: Path, tmp_path: Path, cli, caplog: pytest.LogCaptureFixture
) -> None:
    """Each component's distribution and version is recorded in config.yaml and the model
    folder's config.json; a model whose plugin is missing says what to pip install (it used to
    list the registered names only), and a version that differs is one warning."""
    import shutil

    import yaml

    saved = yaml.safe_load((ds_run / "config.yaml").read_text())["process"]["plugins"]
    assert saved["transform:downsample"].startswith("fdm-transforms ")
    assert saved["noise_schedule:cosine"].startswith("fdm-core ")
    model = tmp_path / "model"
    shutil.copytree(ds_run / "model", model)
    config = json.loads((model / "config.json").read_text())
    assert config["process"]["plugins"] == saved
    config["process"]["transforms"][0] = {"name": "quantize"}
    config["process"]["plugins"]["transform:quantize"] = "fdm-quantize 0.3.0"
    (model / "config.json").write_text(json.dumps(config))
    result = cli("sample", model, "--out", tmp_path / "g.png", "--num", "1", "--steps", "3")
    assert result.exit_code == 2, result.output
    assert "pip install fdm-quantize" in result.output and "fdm-quantize 0.3.0" in result.output

    from fdm_core import ProcessConfig, load_registry
    from fdm_transforms import IdentityTransform

    registry = load_registry(load_plugins="")
    registry.add("transform", "swirl", IdentityTransform, "fdm-swirl", "2.0")
    data = {"transforms": ["downsample", "swirl"], "plugins": {"transform:swirl": "fdm-swirl 1.0",
            "transform:downsample": "fdm-transforms 0.0.1"}}  # fmt: skip
    with caplog.at_level("WARNING", logger="fdm_core.config"):
        ProcessConfig.model_validate(data, context={"registry": registry})
    (warning,) = [r.getMessage() for r in caplog.records]  # not for the built-in downsample
    assert warning == "transform:swirl was made with fdm-swirl 1.0; fdm-swirl 2.0 is installed"
