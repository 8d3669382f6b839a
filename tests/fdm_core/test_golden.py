"""Golden values: `sample()` and the training loss for fixed seeds and a fixed network.

These pin the numbers the core produces, so a refactor that changes results fails loudly here
even when every property test still passes. The network is a small depthwise convolution with
weights given by a formula (no RNG), and every noise draw comes from `StageNoise` or a seeded
generator, so the values depend only on the code under test.

When a change is *meant* to alter results (a corrected equation, a new default), re-pin on
purpose and say why in the commit message:

    FDM_REPIN_GOLDEN=1 pytest tests/fdm_core/test_golden.py

which rewrites ``tests/fdm_core/golden.json``; review its diff before committing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from fdm_core import SamplerConfig, StageNoise, Start, diffusion_loss, sample

from .helpers import make_process

GOLDEN = Path(__file__).with_name("golden.json")
REPIN = os.environ.get("FDM_REPIN_GOLDEN", "") not in ("", "0")
RTOL = ATOL = 1e-5

PROCESSES = {
    "fdm-ds": {"transforms": [{"name": "downsample"}] * 2},
    "blur": {"transforms": [{"name": "blur", "sigma": 1.0}] * 2},
    "ddpm": {"transforms": []},
}
PIXELS = [(0, 0, 0, 0), (1, 0, 3, 5), (2, 0, 8, 9), (3, 0, 15, 15)]


class GoldenNet:
    """A fixed network F(z, t, k): a depthwise 3x3 convolution with formula weights, a tanh,
    and a time- and stage-dependent gain, so every input of the sampler matters."""

    def __call__(self, z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        channels = z.shape[1]
        taps = torch.arange(9 * channels, dtype=z.dtype, device=z.device)
        weight = (0.35 * torch.sin(1.3 * taps + stage)).reshape(channels, 1, 3, 3)
        h = torch.nn.functional.conv2d(z, weight, padding=1, groups=channels)
        gain = (0.5 + t.to(z.dtype)).view(-1, 1, 1, 1)
        return torch.tanh(h) * gain + 0.1 * (stage + 1) * z


def _summary(x: torch.Tensor) -> dict[str, float | list[float]]:
    x = x.double()
    return {
        "sum": float(x.sum()),
        "abs_sum": float(x.abs().sum()),
        "pixels": [float(x[p]) for p in PIXELS],
    }


def _data(batch: int = 4) -> torch.Tensor:
    """Fixed images in [-1, 1] given by a formula."""
    i = torch.arange(batch * 16 * 16, dtype=torch.float32).reshape(batch, 1, 16, 16)
    return torch.sin(0.37 * i) * torch.cos(0.11 * i)


def _compute(name: str, case: str) -> dict:
    process = make_process(resolution=16, **PROCESSES[name])
    net = GoldenNet()
    if case == "loss":
        generator = torch.Generator().manual_seed(3)
        out = diffusion_loss(process, net, _data(8), generator=generator)
        per_stage = out.per_stage.tolist()
        return {"loss": float(out.loss), "per_stage": per_stage}
    eta = {"ddim": 0.0, "ddpm": 1.0, "start": 0.5}[case]
    start = None
    if case == "start":  # from a stage signal: stage 1 at tau_1 (super-resolution), or mid-stage
        k = 0 if name == "ddpm" else 1
        start = Start(stage=k, signal=process.stage_signal(_data(), k), t=0.5 if k == 0 else None)
    out = sample(process, net, SamplerConfig(steps=12, eta=eta), StageNoise(range(4)), start)
    return {"x": _summary(out.x), "z": _summary(out.z)}


CASES = [(name, case) for name in PROCESSES for case in ("ddim", "ddpm", "start", "loss")]


def _flatten(value) -> list[float]:
    if isinstance(value, dict):
        return [v for key in sorted(value) for v in _flatten(value[key])]
    if isinstance(value, list):
        return [v for item in value for v in _flatten(item)]
    return [float(value)]


@pytest.fixture(scope="module")
def golden():
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    yield stored
    if REPIN:
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize(("name", "case"), CASES)
def test_golden_values(golden, name, case):
    got = _compute(name, case)
    key = f"{name}/{case}"
    if REPIN:
        golden[key] = got
        return
    assert key in golden, f"no golden value for {key}: re-pin with FDM_REPIN_GOLDEN=1"
    want, have = _flatten(golden[key]), _flatten(got)
    assert len(want) == len(have), f"{key}: {len(have)} values, golden has {len(want)}"
    for i, (w, h) in enumerate(zip(want, have, strict=True)):
        assert math.isclose(h, w, rel_tol=RTOL, abs_tol=ATOL), (
            f"{key}: value {i} is {h!r}, golden {w!r} (a deliberate change re-pins: "
            "FDM_REPIN_GOLDEN=1 pytest tests/fdm_core/test_golden.py)"
        )
