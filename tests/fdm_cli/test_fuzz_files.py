"""Random byte-level corruption of a checkpoint and of a model folder (issue 10, item 7).

Every file fdm writes with tensors carries a SHA-256 digest of its content
(`fdm_core.checkpoint.with_digest`), so one changed byte anywhere in a checkpoint or in
``model.safetensors`` (length prefix, JSON header, tensor data) is refused with one line and
exit 2 by `fdm sample` and `fdm train --resume`. Before the digest, a byte changed in the
tensor data loaded as silently different weights and sampled with exit 0.

``config.json`` is meant to be edited by hand, so it carries no digest: a changed byte there is
either refused with one line (bad JSON or UTF-8, an invalid value, a config that does not fit
the weights) or, when the result is still a valid config that fits, accepted as an edit.
Nothing escapes as a traceback either way.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdm_cli.artifacts import checkpoints as ckpt

from .conftest import refused

FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of a safetensors file: the 8-byte header length, the JSON header, the data."""
    (header,) = struct.unpack("<Q", data[:8])
    return {"length": (0, 8), "header": (8, 8 + header), "data": (8 + header, len(data))}


@st.composite
def corruption(draw: st.DrawFn, data: bytes) -> tuple[int, int]:
    """(offset, xor mask): one byte of one region changed to a different value."""
    start, end = _regions(data)[draw(st.sampled_from(["length", "header", "data"]))]
    return draw(st.integers(start, end - 1)), draw(st.integers(1, 255))


@contextlib.contextmanager
def corrupted(path: Path, data: st.DataObject, anywhere: bool = False) -> Iterator[None]:
    """`path` with one byte changed (of a region of a safetensors file, or `anywhere`), put
    back afterwards."""
    original = path.read_bytes()
    if anywhere:
        offset = data.draw(st.integers(0, len(original) - 1))
        mask = data.draw(st.integers(1, 255))
    else:
        offset, mask = data.draw(corruption(original))
    damaged = bytearray(original)
    damaged[offset] ^= mask
    path.write_bytes(bytes(damaged))
    try:
        yield
    finally:
        path.write_bytes(original)


@pytest.fixture
def run_copy(ds_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    return run


@FUZZ
@given(data=st.data(), resume=st.booleans())
def test_a_changed_byte_in_a_checkpoint_is_refused(
    data: st.DataObject, resume: bool, run_copy: Path, tmp_path: Path, cli, tiny
) -> None:
    with corrupted(ckpt.latest_checkpoint(run_copy), data):
        if resume:
            result = cli("train", "--out", run_copy, "--resume", "--max-steps", "6", *tiny)
        else:
            result = cli("sample", run_copy, "--out", tmp_path / "grid.png", "--steps", "4")
    refused(result)
    assert not (tmp_path / "grid.png").exists()


@FUZZ
@given(data=st.data())
def test_a_changed_byte_in_model_weights_is_refused(
    data: st.DataObject, run_copy: Path, tmp_path: Path, cli
) -> None:
    with corrupted(run_copy / "model" / "model.safetensors", data):
        result = cli("sample", run_copy / "model", "--out", tmp_path / "grid.png", "--steps", "4")
    refused(result)


@FUZZ
@given(data=st.data())
def test_a_changed_byte_in_a_model_config_is_refused_or_a_valid_edit(
    data: st.DataObject, run_copy: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "grid.png"
    out.unlink(missing_ok=True)
    with corrupted(run_copy / "model" / "config.json", data, anywhere=True):
        result = cli("sample", run_copy / "model", "--out", out, "--num", "4", "--steps", "4")
    if result.exit_code == 0:
        assert out.is_file(), result.output
    else:
        refused(result)
