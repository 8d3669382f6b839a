"""safetensors checkpoints with JSON config, nested state, atomic writes."""

import os
import stat

import pytest
import torch

from fdm_core import (
    CheckpointError,
    atomic_write,
    load_state,
    load_tensors,
    save_state,
    save_tensors,
)


def test_tensors_and_config_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(path, tensors, {"resolution": 32, "transforms": [{"name": "downsample"}]})
    loaded, config = load_tensors(path)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    assert config == {"resolution": 32, "transforms": [{"name": "downsample"}]}


def test_nested_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 7,
        "rng": torch.get_rng_state(),
        "pair": (1, "a"),
        "none": None,
    }
    save_state(tmp_path / "ckpt.safetensors", state, {"seed": 0})
    loaded, config = load_state(tmp_path / "ckpt.safetensors")
    assert config == {"seed": 0} and loaded["step"] == 7 and loaded["pair"] == (1, "a")
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["none"] is None
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as handle:
        handle.write("half-written")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_new_files_the_umask_and_keeps_a_replaced_files_mode(tmp_path, umask):
    """Catches mkstemp's private 0600 leaking into outputs (PNGs, CSVs, checkpoints a group or
    a web server must read), and an overwrite resetting permissions the user chose."""
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "new.png") as handle:
            handle.write(b"png")
        assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o666 & ~umask
        kept = tmp_path / "kept.csv"
        kept.write_text("old")
        kept.chmod(0o640)
        with atomic_write(kept, "w") as handle:
            handle.write("new")
        assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_corrupt_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tensors(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors")
    save_tensors(tmp_path / "plain.safetensors", {"a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="no fdm state"):
        load_state(tmp_path / "plain.safetensors")


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store a set at 'state\.bad'"):
        save_state(tmp_path / "x.safetensors", {"bad": {1, 2}})


def test_a_changed_byte_anywhere_is_refused_by_the_digest(tmp_path):
    """Bug caught: a byte flipped in the tensor data (or a metadata value) loaded as silently
    different numbers; the SHA-256 digest written with every file now refuses it."""
    path = tmp_path / "c.safetensors"
    save_state(path, {"w": torch.arange(64, dtype=torch.float32), "step": 7}, {"lr": 0.1})
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    last_value = data.rindex(b"0.1")  # inside the config JSON of the metadata
    for offset in (len(data) - 3, 8 + header + 1, last_value):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="is damaged: its content does not match"):
            load_state(path)
    path.write_bytes(data)
    assert load_state(path)[0]["step"] == 7


def test_a_file_without_its_digest_is_refused(tmp_path):
    """A file with no digest, or with one changed byte in the digest's key, is refused.

    Catches the check that let such files load unchecked: one flipped bit in ``fdm_sha256``
    (``fdm_shA256``) turned verification off and a damaged model sampled with exit 0."""
    from safetensors.torch import save

    path = tmp_path / "old.safetensors"
    path.write_bytes(save({"w": torch.ones(3)}, metadata={"fdm_config": "{}"}))
    with pytest.raises(CheckpointError, match="carries no 'fdm_sha256' digest"):
        load_tensors(path)
    save_tensors(path, {"w": torch.ones(3)}, config={})
    data = path.read_bytes()
    key = data.index(b"fdm_sha256")
    path.write_bytes(data[: key + 6] + b"A" + data[key + 7 :])  # fdm_sha256 -> fdm_shA256
    with pytest.raises(CheckpointError, match="carries no 'fdm_sha256' digest"):
        load_tensors(path)
