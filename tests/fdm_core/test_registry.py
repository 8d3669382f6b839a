"""Plugin discovery through real ``fdm`` entry points (fake distributions put on sys.path)."""

import sys
import textwrap

import pytest

from fdm_core import PluginError, load_registry

PLUGIN = """
from fdm_core import hookimpl
from fdm_transforms import IdentityTransform


class {cls}(IdentityTransform):
    name = "{name}"


@hookimpl
def fdm_register_transforms(register):
    register("{name}", {cls})
"""


def make_distribution(root, dist, module, body):
    info = root / f"{dist.replace('-', '_')}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[fdm]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FDM_LOAD_PLUGINS", raising=False)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fdmtest_")]:
        del sys.modules[name]


def test_builtins_come_through_entry_points():
    registry = load_registry()
    entries = registry.entries
    assert {"identity", "downsample", "blur"} <= set(entries["transform"])
    assert entries["transform"]["downsample"].distribution == "fdm-transforms"
    assert entries["noise_schedule"]["cosine"].distribution == "fdm-core"
    assert entries["stage_schedule"]["explicit"].version == "0.1.0"
    assert not registry.errors


def test_fdm_load_plugins_limits_external_plugins(site, monkeypatch):
    make_distribution(
        site, "fdmtest-swirl", "fdmtest_swirl", PLUGIN.format(cls="Swirl", name="swirl")
    )
    assert load_registry().entries["transform"]["swirl"].distribution == "fdmtest-swirl"
    assert "swirl" not in load_registry(load_plugins="").entries["transform"]
    assert "swirl" in load_registry(load_plugins="other, fdmtest-swirl").entries["transform"]
    monkeypatch.setenv("FDM_LOAD_PLUGINS", "")
    registry = load_registry()
    assert (
        "swirl" not in registry.entries["transform"]
        and "downsample" in registry.entries["transform"]
    )


def test_a_broken_plugin_is_reported_and_skipped(site, caplog):
    make_distribution(
        site, "fdmtest-broken", "fdmtest_broken", "raise ImportError('needs libfoo')\n"
    )
    make_distribution(site, "fdmtest-fine", "fdmtest_fine", PLUGIN.format(cls="Fine", name="fine"))
    registry = load_registry()
    assert "fine" in registry.entries["transform"]
    (error,) = registry.errors
    assert error.distribution == "fdmtest-broken" and "needs libfoo" in error.error
    assert "fdmtest_broken" in caplog.text and "failed to load" in caplog.text


def test_a_duplicate_name_is_rejected_naming_both(site):
    make_distribution(
        site, "fdmtest-dup", "fdmtest_dup", PLUGIN.format(cls="Dup", name="downsample")
    )
    with pytest.raises(
        PluginError,
        match="transform 'downsample' is registered twice: "
        "by 'fdm-transforms' and by 'fdmtest-dup'",
    ):
        load_registry()
    assert "downsample" in load_registry(load_plugins="").entries["transform"]


def test_an_external_transform_is_usable_in_a_process_config(site, monkeypatch):
    from fdm_core import FDMProcess, ProcessConfig, registry

    make_distribution(
        site, "fdmtest-swirl", "fdmtest_swirl", PLUGIN.format(cls="Swirl", name="swirl")
    )
    registry.reset_registry()
    try:
        process = FDMProcess(ProcessConfig(transforms=["swirl"]))
        assert type(process.transforms[0]).__name__ == "Swirl"
    finally:
        registry.reset_registry()


TYPO_HOOK = """
from fdm_core import hookimpl


@hookimpl
def fdm_register_transform(register):  # misspelled: the hook is fdm_register_transforms
    register("typo", object)
"""

WRONG_ARGUMENT = """
from fdm_core import hookimpl


@hookimpl
def fdm_register_transforms(registry):  # the hook's argument is `register`
    registry("wrong", object)
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (TYPO_HOOK, "unknown hook 'fdm_register_transform'"),
        (WRONG_ARGUMENT, r"Argument\(s\) \{'registry'\} are declared in the hookimpl"),
    ],
)
def test_pluggy_rejects_an_invalid_hook_implementation(site, body, message):
    make_distribution(site, "fdmtest-bad", "fdmtest_bad", body)
    import fdmtest_bad

    registry = load_registry(load_plugins="")
    with pytest.raises(
        PluginError, match=f"fdm plugin 'fdmtest_bad' from 'fdmtest-bad' is invalid: .*{message}"
    ):
        registry.register_plugin(fdmtest_bad, "fdmtest-bad", "1.2")
    assert not registry.pm.has_plugin("fdmtest-bad:fdmtest_bad")
    registry.pm.check_pending()  # the rejected plugin left nothing behind

    loaded = load_registry()  # through the entry point: reported and skipped
    (error,) = loaded.errors
    assert error.distribution == "fdmtest-bad" and "InvalidPluginError" in error.error
    assert "downsample" in loaded.entries["transform"]
    assert "fdmtest_bad" not in {module for module, _, _ in loaded.plugins}


def test_one_plugin_manager_calls_each_plugins_hooks_with_its_distribution(site):
    make_distribution(
        site, "fdmtest-swirl", "fdmtest_swirl", PLUGIN.format(cls="Swirl", name="swirl")
    )
    registry = load_registry()
    names = dict(registry.pm.list_name_plugin())
    assert {"fdm-core:fdm_core.builtins", "fdm-transforms:fdm_transforms.plugin"} <= set(names)
    assert names["fdmtest-swirl:fdmtest_swirl"].__name__ == "fdmtest_swirl"
    assert ("fdmtest_swirl", "fdmtest-swirl", "1.2") in registry.plugins
    assert registry.get("transform", "swirl").version == "1.2"
    with pytest.raises(PluginError, match="'fdmtest_swirl' from 'fdmtest-swirl' is registered"):
        registry.register_plugin(names["fdmtest-swirl:fdmtest_swirl"], "fdmtest-swirl")


def test_a_plugin_object_can_be_registered_directly():
    from fdm_core import hookimpl
    from fdm_transforms import IdentityTransform

    class Plugin:
        @hookimpl
        def fdm_register_transforms(self, register):
            register("mine", IdentityTransform)

    registry = load_registry(load_plugins="")
    registry.register_plugin(Plugin(), "my-dist", "3.0")
    entry = registry.get("transform", "mine")
    assert (entry.distribution, entry.version) == ("my-dist", "3.0")
    assert registry.build("transform", {"name": "mine"}).encode is not None


def test_a_plugin_author_imports_everything_from_fdm_core():
    from fdm_core import (  # noqa: F401
        Boundary,
        Register,
        Shape,
        SignalTransform,
        TransformConformance,
        TransformParams,
        check_transform,
        hookimpl,
    )
    from fdm_core.testing import TransformConformance as Conformance
    from fdm_core.testing import check_transform as check

    assert (TransformConformance, check_transform) == (Conformance, check)
