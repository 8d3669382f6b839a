"""Assets (docs/design.md §10.5): a transform that loads a file is bundled with the model by
content digest, resolves relative to the model's folder, and refuses a changed file."""

from __future__ import annotations

import os
import shutil

import pytest

from fdm_core import (
    AssetPath,
    Boundary,
    FDMProcess,
    ProcessConfig,
    SignalTransform,
    TransformParams,
    bundle_assets,
    content_digest,
    load_registry,
)


class GainParams(TransformParams):
    path: AssetPath
    scale: float = 1.0


class FileGain(SignalTransform):
    """Multiplies by a gain read from a folder holding gain.txt."""

    name = "file_gain"
    boundary = Boundary.RENOISE
    Params = GainParams

    def __init__(self, **params):
        super().__init__(**params)
        from pathlib import Path

        self.gain = float((Path(self.params.path) / "gain.txt").read_text())

    def out_shape(self, shape):
        return tuple(shape)

    def encode(self, x):
        return self.gain * x

    def decode(self, y):
        return y / self.gain


@pytest.fixture
def registry():
    reg = load_registry(load_plugins="")
    reg.add("transform", FileGain.name, FileGain, "tests", "0")
    return reg


def config(path, registry, base_dir=None):
    data = {"resolution": 4, "transforms": [{"name": "file_gain", "path": str(path)}]}
    return ProcessConfig.model_validate(data, context={"registry": registry, "base_dir": base_dir})


def gain_folder(root, gain):
    root.mkdir(parents=True)
    (root / "gain.txt").write_text(str(gain))
    return root


def test_bundled_assets_move_with_the_model_and_keep_a_relative_path(tmp_path, registry):
    source = gain_folder(tmp_path / "my-encoder", 3.0)
    run = tmp_path / "run"
    specs = [c.as_dict() for c in config(source, registry).transforms]
    bundled = bundle_assets(specs, [FileGain], run)
    digest = content_digest(source)[:16]
    assert bundled == [{"name": "file_gain", "path": f"assets/file_gain-{digest}"}]
    assert (run / bundled[0]["path"] / "gain.txt").read_text() == "3.0"
    # Bundling again (e.g. on resume, or into the exported model folder) is a no-op copy.
    again = bundle_assets(bundled, [FileGain], tmp_path / "model", base_dir=run)
    assert again == bundled
    shutil.rmtree(source)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    data = {"resolution": 4, "transforms": bundled}
    process = FDMProcess(
        ProcessConfig.model_validate(data, context={"registry": registry, "base_dir": moved}),
        registry,
    )
    assert process.transforms[0].gain == 3.0
    assert process.config.transforms[0].as_dict()["path"] == bundled[0]["path"]


def test_nodes_with_the_same_process_id_copy_under_different_temporaries(
    tmp_path, registry, monkeypatch
):
    """The ranks of a multi-node run share the run folder and may have the same pid: each
    copies under a temporary name of its own before renaming into place."""
    spec = [{"name": "file_gain", "path": str(gain_folder(tmp_path / "enc", 2.0))}]
    temporaries = []
    replace = os.replace
    monkeypatch.setattr("os.getpid", lambda: 4242)
    monkeypatch.setattr(os, "replace", lambda a, b: temporaries.append(a.name) or replace(a, b))
    for node in ("node-a", "node-b"):
        monkeypatch.setattr("socket.gethostname", lambda node=node: node)
        bundled = bundle_assets(spec, [FileGain], tmp_path / node)
        assert (tmp_path / node / bundled[0]["path"] / "gain.txt").read_text() == "2.0"
    assert len(temporaries) == 2 and temporaries[0] != temporaries[1]


def test_a_changed_bundled_asset_is_refused(tmp_path, registry):
    run = tmp_path / "run"
    bundled = bundle_assets(
        [{"name": "file_gain", "path": str(gain_folder(tmp_path / "enc", 2.0))}], [FileGain], run
    )
    (run / bundled[0]["path"] / "gain.txt").write_text("5.0")  # a different encoder
    with pytest.raises(ValueError, match=r"bundled with content digest .* changed or replaced"):
        config(bundled[0]["path"], registry, base_dir=run)


def test_a_missing_asset_names_the_path_and_the_base(tmp_path, registry):
    with pytest.raises(ValueError, match=r"transforms\[0\] \(file_gain\): nowhere does not exist"):
        config("nowhere", registry, base_dir=tmp_path)


def test_the_digest_covers_names_and_bytes(tmp_path):
    a = gain_folder(tmp_path / "a", 1.0)
    b = gain_folder(tmp_path / "b", 1.0)
    assert content_digest(a) == content_digest(b)
    (b / "extra.txt").write_text("")
    assert content_digest(a) != content_digest(b)
