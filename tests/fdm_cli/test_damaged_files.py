"""Damaged or hostile model files: a truncated model.safetensors, checkpoint metadata that
`save_state` cannot have written, a config that does not fit its weights. `fdm sample` and
`fdm train --resume` refuse each with one line (exit 2) before any work; none is a traceback."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_core.checkpoint import CONFIG_KEY, STATE_KEY, with_digest

from .conftest import refused

Meta = dict[str, str]


def _skeleton(meta: Meta) -> dict:
    return json.loads(meta[STATE_KEY])


def _with_skeleton(meta: Meta, skeleton: object) -> Meta:
    return {**meta, STATE_KEY: json.dumps(skeleton)}


def _drop_entry(meta: Meta, name: str) -> Meta:
    skeleton = _skeleton(meta)
    skeleton["dict"] = [kv for kv in skeleton["dict"] if kv[0] != name]
    return _with_skeleton(meta, skeleton)


def _replace_entry(meta: Meta, name: str, node: dict) -> Meta:
    skeleton = _skeleton(meta)
    skeleton["dict"] = [[k, node if k == name else v] for k, v in skeleton["dict"]]
    return _with_skeleton(meta, skeleton)


def _nested(depth: int) -> dict:
    node: dict = {"value": 1}
    for _ in range(depth):
        node = {"list": [node]}
    return node


# name -> (change of (metadata, tensors), phrase of the one-line error)
DAMAGE: dict[str, tuple[Callable, str]] = {
    "bad JSON": (lambda m, t: ({**m, STATE_KEY: "{not json"}, t), "damaged state metadata"),
    "a tensor the skeleton names is missing": (
        lambda m, t: (m, dict(list(t.items())[1:])),
        "the file does not hold",
    ),
    "an unknown node": (
        lambda m, t: (_with_skeleton(m, {"pickle": "cos\nsystem"}), t),
        "unknown skeleton node",
    ),
    "deep nesting": (
        lambda m, t: (_replace_entry(m, "progress", _nested(200)), t),
        "nested deeper than 64",
    ),
    "no ema entry": (lambda m, t: (_drop_entry(m, "ema"), t), "no ema"),
    "progress of the wrong type": (
        lambda m, t: (_replace_entry(m, "progress", {"value": "soon"}), t),
        "'progress' entry",
    ),
    "a config that is not an object": (
        lambda m, t: ({**m, CONFIG_KEY: "[1, 2]"}, t),
        "not a JSON object",
    ),
}


def damaged_copy(ds_run: Path, tmp_path: Path, change: Callable) -> Path:
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    path = ckpt.latest_checkpoint(run)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta, tensors = change(meta, tensors)
    # A hostile writer can store a matching digest: the checks below the digest must hold alone.
    path.write_bytes(save(tensors, metadata=with_digest(tensors, meta)))
    return run


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_metadata_is_refused_by_sample_and_resume(
    damage: str, ds_run: Path, tmp_path: Path, cli, tiny
) -> None:
    change, phrase = DAMAGE[damage]
    run = damaged_copy(ds_run, tmp_path, change)
    refused(cli("sample", run, "--out", tmp_path / "grid.png", "--steps", "4"), phrase)
    assert not (tmp_path / "grid.png").exists()
    resumed = cli("train", "--out", run, "--resume", "--max-steps", "6", *tiny)
    refused(resumed, phrase)


@pytest.mark.parametrize("keep", [0.5, 0.0, 0.01])
def test_truncated_model_weights_are_refused(
    keep: float, ds_run: Path, tmp_path: Path, cli
) -> None:
    """Truncated to half, empty, or cut inside the header: SafetensorError was not translated
    on the MODEL_DIR path."""
    model = tmp_path / "model"
    shutil.copytree(ds_run / "model", model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    refused(cli("sample", model, "--out", tmp_path / "g.png"), "model.safetensors")


def test_a_huge_config_is_refused_before_allocating(ds_run: Path, tmp_path: Path, cli) -> None:
    """base_channels 100000 would allocate ~10^10 parameters (tens of GB) before the weights
    were compared with the config: the check now runs on the meta device."""
    model = tmp_path / "model"
    shutil.copytree(ds_run / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["unet"]["base_channels"] = 100_000
    (model / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    refused(cli("sample", model, "--out", tmp_path / "g.png"), "does not match the UNet")
    assert time.perf_counter() - start < 60


def _edited_model(ds_run: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    model = tmp_path / "model"
    shutil.copytree(ds_run / "model", model)
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_a_process_that_does_not_fit_the_unet_is_refused(ds_run: Path, tmp_path: Path, cli) -> None:
    """A 3-stage UNet with a 1-stage (ddpm) process sampled garbage with exit 0, or failed in
    the sampler; the model folder is now checked for consistency first."""
    model = _edited_model(ds_run, tmp_path, lambda c: c["process"].update(transforms=[]))
    refused(cli("sample", model, "--out", tmp_path / "g.png"), "do not belong together")


def test_a_model_config_error_keeps_its_field_path(ds_run: Path, tmp_path: Path, cli) -> None:
    model = _edited_model(ds_run, tmp_path, lambda c: c["unet"].update(num_heads="many"))
    refused(cli("sample", model, "--out", tmp_path / "g.png"), "unet.num_heads")


def test_unknown_top_level_keys_in_a_model_config_are_refused(
    ds_run: Path, tmp_path: Path, cli
) -> None:
    """A misspelt 'procces' next to the real entry would otherwise be ignored silently."""
    model = _edited_model(ds_run, tmp_path, lambda c: c.update(procces={}))
    refused(cli("sample", model, "--out", tmp_path / "g.png"), "'procces'")


def _reshaped_model_tensor(meta: Meta, tensors: dict) -> tuple[Meta, dict]:
    """The first EMA weight (what sampling loads), one row longer: a well-formed file whose
    weights do not fit."""
    name = next(k for k in tensors if k.startswith("state.ema.") and tensors[k].dim() > 0)
    weight = tensors[name]
    return meta, {**tensors, name: torch.cat([weight, weight[:1]])}


def test_checkpoint_weights_that_do_not_fit_the_config_are_refused(
    ds_run: Path, tmp_path: Path, cli, tiny
) -> None:
    """The skeleton and the config are intact and the digest matches, but one EMA weight has
    the wrong shape: `sample` and `train --resume` refuse with one line naming the file (before,
    load_state_dict's multi-line RuntimeError)."""
    run = damaged_copy(ds_run, tmp_path, _reshaped_model_tensor)
    name = ckpt.latest_checkpoint(run).name
    refused(cli("sample", run, "--out", tmp_path / "grid.png", "--steps", "4"), name)
    resumed = cli("train", "--out", run, "--resume", "--max-steps", "6", *tiny)
    refused(resumed, name, "does not fit this run")
