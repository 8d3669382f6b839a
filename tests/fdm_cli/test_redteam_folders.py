"""Issue 21, part A: a run or model folder never executes anything and never reads outside
itself, and a config file cannot take the machine down.

Run folders, model folders and autoencoder folders are downloaded and shared, so each test
opens one that an attacker prepared: a ``pipe:`` data source in a saved ``config.yaml`` (its
payload creates a marker file, which must never appear), symbolic links in an autoencoder or
model folder (the linked secret must never be copied or loaded), a YAML alias bomb (refused
under a memory limit set with `resource.setrlimit` in a subprocess), and values that used to
fail late with a traceback (``optim.betas``, a huge batch). Every refusal is one line, exit 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel

from fdm_cli.config.autoencoder import DEFAULTS
from fdm_cli.config.files import (
    MAX_ALIASES,
    MAX_CONFIG_BYTES,
    ConfigLimitError,
    is_command_or_url,
    read_config_file,
)
from fdm_cli.errors import UserError
from fdm_cli.evaluation.evaluate import training_data
from fdm_core import AssetError, AssetPath, bundle_assets
from fdm_core.assets import resolve_asset
from fdm_models import Autoencoder, AutoencoderConfig, save_autoencoder

from .conftest import refused

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for sharing"


def pipe_source(marker: Path) -> str:
    """A data source whose shell payload creates `marker` (then streams a tar)."""
    return f"pipe:touch {marker}; cat shards.tar"


def plant_source(run: Path, source: str) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["source"] = source
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def fake_run(folder: Path, config: dict | str) -> Path:
    """A run folder with `config` as config.yaml and a checkpoint file (never opened: the saved
    config is resolved, and refused, before any checkpoint is read)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000001.safetensors").write_bytes(b"")
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (folder / "config.yaml").write_text(text)
    return folder


# ---------------------------------------------------------------------------------------------
# 1. A data source saved in a run folder that is a command or a URL is never used


@pytest.fixture
def pipe_run(ds_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a trained fdm-ds run whose config.yaml's data source is a `pipe:` payload;
    returns (run, the marker file the payload would create)."""
    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    marker = tmp_path / "OWNED"
    plant_source(run, pipe_source(marker))
    return run, marker


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_train_resume_never_runs_a_pipe_source_from_the_run_folder(cli, pipe_run, dry_run):
    """Catches `saved_run_config` handing a run folder's ``pipe:`` source to the resolver,
    which runs it while probing the data's channels (seen failing: the marker was created)."""
    run, marker = pipe_run
    extra = ["--dry-run"] if dry_run else ["--max-steps", "5", "--no-progress"]
    result = cli("train", "--out", run, "--resume", *extra)
    refused(result, f"{run / 'config.yaml'}", "command or URL", "--data SOURCE")
    assert not marker.exists()
    # Given again on the command line, the user's own source is used.
    again = cli("train", "--out", run, "--resume", "--dry-run", "--data", "fashion-mnist")
    assert again.exit_code == 0, again.output
    assert not marker.exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_train_autoencoder_resume_never_runs_a_pipe_source(cli, tmp_path, dry_run):
    """Catches `resolve_autoencoder_config` using the saved ``pipe:`` source of the run it
    resumes (seen failing: the payload ran while probing the data)."""
    marker = tmp_path / "OWNED"
    run = fake_run(tmp_path / "ae", {**DEFAULTS, "data": {"source": pipe_source(marker)}})
    extra = ["--dry-run"] if dry_run else ["--no-progress"]
    refused(cli("train-autoencoder", "--out", run, "--resume", *extra), "command or URL")
    assert not marker.exists()
    again = cli(
        "train-autoencoder", "--out", run, "--resume", "--dry-run",
        "--set", "data.source=fashion-mnist",
    )  # fmt: skip
    assert again.exit_code == 0, again.output


def test_eval_never_takes_a_command_or_url_from_a_run_or_model_folder(tmp_path):
    """Catches `training_data` returning a run's (or MODEL_DIR's) ``pipe:`` source, which eval
    would then open to find the training crop."""
    marker = tmp_path / "OWNED"
    run = fake_run(tmp_path / "run", {"data": {"source": pipe_source(marker)}})
    assert training_data(run) == (None, "auto")
    assert training_data(run / "checkpoints" / "step-00000001.safetensors") == (None, "auto")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"fdm": {"data": "https://example.com/x.tar"}}')
    assert training_data(model) == (None, "auto")
    (model / "config.json").write_text('{"fdm": {"data": "photos"}}')
    assert training_data(model) == ("photos", "auto")  # a local source is still used
    assert not marker.exists()


@pytest.mark.parametrize(
    ("source", "remote"),
    [
        ("pipe:curl x", True),
        ("  pipe:touch x", True),  # webdataset's urlparse strips leading blanks
        ("\x01pipe:x", True),
        ("PIPE:x", True),
        ("https://host/s-{000..009}.tar", True),
        ("s3://bucket/x.tar", True),
        ("fashion-mnist", False),
        ("shards/s-{000000..000009}.tar", False),
        ("./a:b/x.tar", False),
        ("~/photos", False),
        ("C:\\data", False),  # a Windows drive, not a scheme
    ],
)
def test_commands_and_urls_are_recognised(source, remote):
    """Catches a source that webdataset would open as a command or URL slipping through."""
    assert is_command_or_url(source) is remote


# ---------------------------------------------------------------------------------------------
# 2. Assets are copied without following links; a model folder reads only its own files


class _Params(BaseModel):
    path: AssetPath


class _Factory:
    """A registry factory with one asset parameter (all that `bundle_assets` looks at)."""

    Params = _Params


def _asset(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 1000)
    (folder / "sub" / "notes.txt").write_text("n")
    return folder


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in (dest / "assets").iterdir()) if (dest / "assets").exists() else []


@pytest.mark.parametrize("kind", ["file", "folder", "loop"])
def test_a_link_in_an_asset_is_refused_leaves_nothing_and_does_not_block(tmp_path, kind):
    """Catches `_bundle_one` copying through links (a secret copied in as a plain file, a folder
    link breaking the digest, a loop leaving a temporary folder that blocks the next copy; each
    seen failing with shutil.copytree restored)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(SECRET)
    asset = _asset(tmp_path / "encoder")
    link = asset / "sub" / {"file": "key", "folder": "ssh", "loop": "again"}[kind]
    link.symlink_to(
        {"file": home / ".ssh" / "id_ed25519", "folder": home / ".ssh"}.get(kind, asset)
    )
    dest = tmp_path / "run"
    spec = [{"name": "autoencoder", "path": str(asset)}]
    with pytest.raises(AssetError, match=re.escape(f"{link} is a symbolic link")):
        bundle_assets(spec, [_Factory], dest)
    assert _leftovers(dest) == []
    link.unlink()
    (bundled,) = bundle_assets(spec, [_Factory], dest)
    assert _leftovers(dest) == [bundled["path"].split("/")[-1]]
    copied = [p for p in (dest / bundled["path"]).rglob("*")]
    assert not any(p.is_symlink() for p in copied)
    assert all(SECRET not in p.read_bytes() for p in copied if p.is_file())


def test_a_linked_secret_in_an_autoencoder_folder_never_reaches_the_run(cli, tiny, tmp_path):
    """The issue's reproduction end to end: `fdm train --autoencoder AE` where AE (a
    train-autoencoder run folder) links to a private key. Catches the bundled copy following
    the link (seen failing: the key was in RUN/assets as a plain file)."""
    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    ae = tmp_path / "ae"
    make_autoencoder(ae / "model")
    (ae / "notes").mkdir()
    (ae / "notes" / "key").symlink_to(secret)
    run = tmp_path / "run"
    result = cli(
        "train", "--preset", "fdm-vae", "--autoencoder", ae, "--out", run, "--max-steps", "1",
        *tiny,
    )  # fmt: skip
    refused(result, f"{ae / 'notes' / 'key'} is a symbolic link", "cp -rL")
    files = [p for p in run.rglob("*") if p.is_file()] if run.exists() else []
    assert all(SECRET not in p.read_bytes() for p in files)
    assert not (run / "assets").exists() or _leftovers(run) == []


def make_autoencoder(folder: Path) -> Path:
    model = Autoencoder(AutoencoderConfig(resolution=32, factor=4, base_channels=8))
    save_autoencoder(model, folder)
    return folder


def test_a_model_folder_never_loads_a_file_outside_itself(cli, ds_run, tmp_path):
    """Catches `load_weights` / `read_model_config` following a link out of MODEL_DIR (seen
    failing: the outside weights were loaded and sampled from)."""
    model = tmp_path / "model"
    shutil.copytree(ds_run / "model", model)
    outside = tmp_path / "elsewhere" / "model.safetensors"
    outside.parent.mkdir()
    shutil.move(model / "model.safetensors", outside)
    (model / "model.safetensors").symlink_to(outside)
    result = cli("sample", model, "--num", "1", "--steps", "2", "--out", tmp_path / "x.png")
    refused(result, "leads outside", str(model))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["fdm", "diffusers"])
def test_an_autoencoder_folder_never_loads_a_file_outside_itself(tmp_path, monkeypatch, kind):
    """Catches the autoencoder transform loading weights linked from elsewhere: an fdm folder
    (`load_weights`' check) and a diffusers one (`_stamp`'s check: diffusers, replaced here by
    a recorder, must never be asked to load it; seen failing without that check)."""
    from fdm_transforms.autoencoder import AutoencoderTransform

    real = make_autoencoder(tmp_path / "real")
    ae = tmp_path / "ae"
    ae.mkdir()
    if kind == "fdm":
        shutil.copy(real / "config.json", ae / "config.json")
        (ae / "model.safetensors").symlink_to(real / "model.safetensors")
    else:
        (ae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
        (ae / "diffusion_pytorch_model.safetensors").symlink_to(real / "model.safetensors")
    calls = fake_diffusers(monkeypatch)
    with pytest.raises(ValueError, match="leads outside"):
        AutoencoderTransform(path=str(ae))
    assert calls == []


def fake_diffusers(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace diffusers by a module whose AutoencoderKL.from_pretrained records its keyword
    arguments and fails; returns the record."""
    import types

    calls: list[dict] = []

    class AutoencoderKL:
        @classmethod
        def from_pretrained(cls, path, **kwargs):
            calls.append(kwargs)
            raise OSError("no file named diffusion_pytorch_model.safetensors")

    monkeypatch.setitem(
        sys.modules, "diffusers", types.SimpleNamespace(AutoencoderKL=AutoencoderKL)
    )
    return calls


@pytest.mark.parametrize("name", ["../outside", "ABSOLUTE", "assets/link"])
def test_a_run_folder_names_only_assets_inside_itself(tmp_path, name):
    """Catches `resolve_asset` accepting a run or model folder's asset outside it (``..``, an
    absolute path, a link out of it), which would then be loaded and bundled."""
    outside = _asset(tmp_path / "outside")
    run = tmp_path / "run"
    (run / "assets").mkdir(parents=True)
    (run / "assets" / "link").symlink_to(outside)
    value = str(outside) if name == "ABSOLUTE" else name
    with pytest.raises(AssetError, match="leads outside"):
        resolve_asset(value, run)
    assert resolve_asset(str(outside), None) == outside  # from the command line: anywhere


def test_diffusers_weights_are_loaded_from_safetensors_only(tmp_path, monkeypatch):
    """Catches ``from_pretrained`` without ``use_safetensors=True``, which lets a ``.bin``
    weights file go through pickle (diffusers is replaced by a recorder)."""
    from fdm_transforms import autoencoder as transform

    calls = fake_diffusers(monkeypatch)
    with pytest.raises(ValueError, match="only safetensors weights are loaded"):
        transform._load_diffusers(tmp_path, "AutoencoderKL")
    assert calls == [{"local_files_only": True, "use_safetensors": True}]


def test_every_package_requires_a_torch_without_cve_2025_32434():
    """Catches a torch floor below 2.6 (``torch.load(weights_only=True)`` can run code there)
    or a pin instead of a range."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    files = [*ROOT.glob("packages/*/pyproject.toml"), ROOT / "examples/fdm-haar/pyproject.toml"]
    assert len(files) >= 5
    for file in files:
        deps = tomllib.loads(file.read_text())["project"]["dependencies"]
        (torch_req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
        spec = torch_req.specifier
        assert "2.5.1" not in spec and "2.6.0" in spec and "2.13.0" in spec, (file, spec)


# ---------------------------------------------------------------------------------------------
# 3. Config bombs: bounded memory, one line


def alias_bomb() -> str:
    """80 aliases, 10**9 values once expanded (a few hundred bytes of YAML)."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        name, previous = chr(97 + i), chr(96 + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    return "\n".join(lines) + "\n"


BOMBED = """
import resource, sys
from fdm_cli.cli.app import app

def mapped():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

limit = mapped() + (768 << 20)  # what is mapped now, plus 768 MiB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["fdm", *sys.argv[1:]]
app()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("where", ["config-file", "run-folder"])
def test_a_yaml_alias_bomb_is_refused_under_a_memory_limit(tmp_path, where):
    """The bomb that reached 5.5 GB: `fdm train BOMB.yaml --dry-run`, and a run folder whose
    config.yaml is the bomb resumed, each in a subprocess limited to 768 MiB more than it maps
    after importing. Catches loading without the alias and expanded-size limits (seen failing:
    MemoryError traceback, exit 1)."""
    if where == "config-file":
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(alias_bomb())
        args = ["train", str(bomb), "--dry-run"]
    else:
        bomb = fake_run(tmp_path / "run", alias_bomb()) / "config.yaml"
        args = ["train", "--out", str(tmp_path / "run"), "--resume", "--dry-run"]
    env = {**os.environ, "FDM_DEBUG": "0"}
    done = subprocess.run(
        [sys.executable, "-c", BOMBED, *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    message = done.stderr.strip()
    assert done.returncode == 2, message[-2000:]
    assert message.startswith("fdm: error:") and len(message.splitlines()) == 1, message[-2000:]
    assert f"config file {bomb} is refused" in message and "values once" in message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n", "YAML aliases"),
        ("a: &a [*a]\n", "contains itself"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: " + "x" * MAX_CONFIG_BYTES + "\n", "larger than 1 MiB"),
    ],
    ids=["aliases", "recursive", "nested", "large"],
)
def test_config_files_over_the_limits_are_refused_naming_the_file(tmp_path, text, why):
    """Catches each limit of `fdm_cli.config.files` (alias count, a self-containing alias, a
    RecursionError traceback, a file read whole whatever its size)."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigLimitError, match=why) as caught:
        read_config_file(path)
    assert str(path) in str(caught.value)


def test_a_few_anchors_and_non_utf8_bytes(tmp_path):
    """Anchors within the limits still load; a non-UTF-8 file is one line, not a traceback."""
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 0.1}\noptim: *b\n")
    assert read_config_file(path) == {"base": {"lr": 0.1}, "optim": {"lr": 0.1}}
    path.write_bytes(b"optim: {lr: \xff}\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_config_file(path)


# ---------------------------------------------------------------------------------------------
# 4. Checked before the run instead of a traceback later


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--set", "optim.betas=[2,2]"], ["optim.betas.0", "less than 1"]),
        (["--set", "optim.betas=[0.9,-0.1]"], ["optim.betas.1", "greater than or equal to 0"]),
        (["--batch-size", "100000000"], ["train.batch_size", "65536"]),
        (["--set", "sample.batch_size=100000000"], ["sample.batch_size", "65536"]),
    ],
)
def test_betas_and_batch_sizes_are_checked_before_the_run(cli, args, phrases):
    """Catches betas outside [0, 1) (torch's ValueError at the first step) and an unbounded
    batch (an allocation RuntimeError after the run started): refused at --dry-run already."""
    refused(cli("train", *args, "--max-steps", "1", "--dry-run"), *phrases)


def test_train_autoencoder_batch_sizes_are_bounded(cli):
    """Catches the autoencoder's own batch fields (they override the shared ones) unbounded."""
    refused(cli("train-autoencoder", "--batch-size", "100000000", "--dry-run"), "65536")
    refused(
        cli("train-autoencoder", "--set", "train.eval_batch_size=100000000", "--dry-run"), "65536"
    )


def test_a_saved_cache_dir_is_not_where_a_resumed_run_writes(
    ds_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run folder must not choose where fdm writes: its `data.cache_dir` (say, a folder of
    the victim's) is dropped on resume, with one warning; the cache is only a speed-up."""
    import shutil

    import yaml

    from fdm_cli.config.files import saved_run_config

    run = tmp_path / "run"
    shutil.copytree(ds_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["cache_dir"] = str(tmp_path / "victim")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level("WARNING", logger="fdm_cli.config.files"):
        saved = saved_run_config(run)
    assert saved is not None and saved["data"]["cache_dir"] is None
    assert "not using data.cache_dir" in caplog.text
