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
    assert (
        error.fix
        == "pip uninstall fdmtest-broken, or leave it out: FDM_LOAD_PLUGINS='fdmtest-fine'"
    )
    assert "fdmtest_broken" in caplog.text and "failed to import" in caplog.text


def test_a_builtin_name_taken_by_a_plugin_keeps_the_builtin(site):
    """Catches a plugin that replaces (or, as before, blocks every command over) a built-in."""
    make_distribution(
        site, "fdmtest-dup", "fdmtest_dup", PLUGIN.format(cls="Dup", name="downsample")
    )
    registry = load_registry()
    assert registry.get("transform", "downsample").distribution == "fdm-transforms"
    (error,) = registry.errors
    assert error.distribution == "fdmtest-dup" and "the built-in is kept" in error.error


def test_a_name_two_plugins_register_refuses_to_build_naming_both(site):
    for dist in ("fdmtest-one", "fdmtest-two"):
        module = dist.replace("-", "_")
        make_distribution(site, dist, module, PLUGIN.format(cls="Twin", name="twin"))
    registry = load_registry()
    with pytest.raises(
        PluginError, match="'twin' is registered by 'fdmtest-one' and by 'fdmtest-two'"
    ):
        registry.get("transform", "twin")
    assert "downsample" in registry.entries["transform"]  # everything else still works


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
    assert error.distribution == "fdmtest-bad" and error.error.startswith("is invalid: ")
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


BROKEN = {
    "hook-raises": (
        "from fdm_core import hookimpl\n\n@hookimpl\n"
        "def fdm_register_transforms(register):\n    raise TypeError('x')\n",
        "is invalid: TypeError: x",
    ),
    "hook-exits": (
        "import sys\nfrom fdm_core import hookimpl\n\n@hookimpl\n"
        "def fdm_register_noise_schedules(register):\n    sys.exit(0)\n",
        "is invalid: SystemExit",
    ),
    "import-exits": ("import sys\nsys.exit(0)\n", "failed to import: SystemExit"),
    "name-not-a-string": (
        "from fdm_core import hookimpl\n\n@hookimpl\n"
        "def fdm_register_transforms(register):\n    register(42, object)\n",
        "register() needs a non-empty string name, got 42",
    ),
    "factory-not-callable": (
        "from fdm_core import hookimpl\n\n@hookimpl\n"
        "def fdm_register_stage_schedules(register):\n    register('s', 'nope')\n",
        "register('s', ...) needs a class or callable, got 'nope'",
    ),
    "half-registered": (  # the first component must not survive the failing second one
        "from fdm_core import hookimpl\nfrom fdm_transforms import IdentityTransform\n\n"
        "@hookimpl\ndef fdm_register_transforms(register):\n"
        "    register('half', IdentityTransform)\n    register('', IdentityTransform)\n",
        "needs a non-empty string name",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_skipped_whole_and_reported_with_its_fix(site, case):
    """Every call into plugin code is guarded, SystemExit included: the plugin is skipped with
    none of its components, the built-ins load, and the error names the fix. Catches an
    unguarded hook (a traceback from every command), `except Exception` missing SystemExit (a
    silent exit 0), an unchecked register() and a half-registered plugin."""
    body, message = BROKEN[case]
    make_distribution(site, "fdmtest-broken", "fdmtest_broken", body)
    registry = load_registry()
    (error,) = registry.errors
    assert error.distribution == "fdmtest-broken" and message in error.error, error
    assert error.fix.startswith("pip uninstall fdmtest-broken")
    assert "half" not in registry.entries["transform"]
    assert {"downsample", "blur"} <= set(registry.entries["transform"])
    assert "cosine" in registry.entries["noise_schedule"]


def test_factories_are_guarded_and_type_checked(site):
    """A factory that raises (not a parameter error) or returns the wrong kind is a PluginError
    naming the component and distribution, not an AttributeError deep in the process."""
    make_distribution(
        site,
        "fdmtest-odd",
        "fdmtest_odd",
        "import sys\nfrom fdm_core import hookimpl\n\n@hookimpl\n"
        "def fdm_register_noise_schedules(register):\n"
        "    register('stringy', lambda: 'cosine')\n"
        "    register('exits', lambda: sys.exit(3))\n",
    )
    registry = load_registry()
    with pytest.raises(
        PluginError, match=r"'stringy' from fdmtest-odd 1\.2 built a str, not a Noise"
    ):
        registry.build("noise_schedule", {"name": "stringy"})
    with pytest.raises(
        PluginError, match=r"'exits' from fdmtest-odd 1\.2 failed to build: SystemExit"
    ):
        registry.build("noise_schedule", {"name": "exits"})
    with pytest.raises(ValueError):  # a parameter the factory refuses stays a config error
        registry.build("transform", {"name": "downsample", "factor": 1})


def test_the_default_registry_imports_plugins_only_when_a_name_needs_them(site):
    """A built-in preset never imports an external plugin (a slow or broken one costs it
    nothing); an unknown name does, and the import time is recorded for `fdm env`."""
    from fdm_core import registry as registry_module

    marker = site / "imported"
    make_distribution(
        site,
        "fdmtest-lazy",
        "fdmtest_lazy",
        f"open({str(marker)!r}, 'w').close()\n" + PLUGIN.format(cls="Lazy", name="lazy"),
    )
    registry_module.reset_registry()
    try:
        registry = registry_module.get_registry()
        assert registry.get("transform", "downsample") and not marker.exists()
        assert registry.get("transform", "lazy").distribution == "fdmtest-lazy"
        assert marker.exists() and "fdmtest-lazy:fdmtest_lazy" in registry.import_seconds
    finally:
        registry_module.reset_registry()
