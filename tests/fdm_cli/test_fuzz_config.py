"""Fuzzing the config path with hypothesis: whatever a user writes in ``--set key=value`` or in
a config file, `resolve_train_config` either returns a valid TrainConfig or raises UserError
(which the CLI prints as one line); no other exception escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fdm_cli.config.train import TrainConfig, resolve_train_config  # noqa: E402
from fdm_cli.errors import UserError  # noqa: E402

# Real keys (so values reach the validators) and some that do not exist.
KEYS = [
    "process.gamma", "process.interpolation", "process.resolution", "process.channels",
    "process.transforms", "process.stage_schedule", "process.noise_schedule",
    "process.parameterization", "process.weighting", "process.min_snr_gamma",
    "process.latent", "process.autoencoder", "model.base_channels", "model.channel_mult",
    "model.num_res_blocks", "model.attention_levels", "model.num_heads", "model.dropout",
    "model.attention", "optim.lr", "optim.betas", "optim.ema_decay", "optim.warmup_steps",
    "train.batch_size", "train.max_steps", "train.minutes", "train.seed", "train.threads",
    "train.device", "train.precision", "sample.steps", "sample.eta", "sample.num",
    "data.fit", "data.channels", "data.strict", "process", "model", "nonsense.key", "",
    "process.transforms.0.name", "process..gamma", "train.seed.x",
]  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
RAW_TEXT = st.text(max_size=20)


def _value_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), JSON_VALUES | RAW_TEXT), max_size=4))
def test_random_overrides_validate_or_raise_a_user_error(pairs: list) -> None:
    overrides = [f"{key}={_value_text(value)}" for key, value in pairs]
    try:
        cfg = resolve_train_config(preset="fdm-ds", overrides=overrides)
    except UserError:
        return
    assert isinstance(cfg, TrainConfig)


@FUZZ
@given(st.sampled_from(KEYS), RAW_TEXT)
def test_malformed_override_syntax_is_a_user_error(key: str, text: str) -> None:
    for override in (text, f"{key}{text}", f"={text}", f"{key}=={text}"):
        try:
            resolve_train_config(preset="fdm-ds", overrides=[override])
        except UserError:
            pass


@FUZZ
@given(JSON_VALUES)
def test_random_config_files_validate_or_raise_a_user_error(document: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(document))
        try:
            resolve_train_config(config_file=path)
        except UserError:
            pass
