"""EMA: warm-up decay, update math, buffers, copy/swap, state dict round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fdm_models import EMA


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_warmup_decay_schedule() -> None:
    ema = EMA(_model(), decay=0.9)
    decays = []
    for _ in range(200):
        decays.append(ema.current_decay())
        ema.step += 1
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert decays[-1] == 0.9 and max(decays) == 0.9
    assert EMA(_model(), decay=0.9, warmup=False).current_decay() == 0.9


def test_update_math_and_buffers() -> None:
    model = _model()
    ema = EMA(model, decay=0.999)
    start = model[0].weight.detach().clone()
    expected = start.clone()
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.fill_(float(step))
        decay = min(0.999, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
        ema.update(model)
        torch.testing.assert_close(ema.shadow["0.weight"], expected)
        torch.testing.assert_close(ema.shadow["1.running_mean"], torch.full((4,), float(step)))
    assert ema.step == 3
    assert "1.num_batches_tracked" not in ema.shadow  # integer buffers are not averaged


def test_copy_and_averaged_model() -> None:
    model = _model()
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update(model)
    trained = model[0].weight.detach().clone()
    averaged = ema.averaged_model(model)
    assert not averaged.training and averaged is not model
    torch.testing.assert_close(averaged[0].weight, trained - 1.0)  # halfway back
    torch.testing.assert_close(model[0].weight, trained)
    ema.copy_to(model)
    torch.testing.assert_close(model[0].weight, trained - 1.0)


def test_unwraps_ddp_style_wrappers() -> None:
    model = _model()
    wrapped = nn.DataParallel(model)
    ema = EMA(wrapped)
    assert "0.weight" in ema.shadow
    ema.update(wrapped)


def test_state_dict_round_trip_and_mismatch() -> None:
    model = _model()
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model[0].bias.add_(1.0)
    ema.update(model)
    state = ema.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    restored = EMA(_model(), decay=0.5)
    restored.load_state_dict(state)
    assert restored.step == 1 and restored.decay == pytest.approx(0.99)
    torch.testing.assert_close(restored.shadow["0.bias"], ema.shadow["0.bias"])
    with pytest.raises(ValueError, match=r"missing \['0.weight', '2.bias', '2.weight'\]"):
        EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))).load_state_dict(
            {k: v for k, v in state.items() if k != "shadow.0.weight"}
        )
    with pytest.raises(ValueError, match=r"shadow.0.weight has shape \(4, 3\).*expects \(5, 3\)"):
        EMA(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(4))).load_state_dict(state)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        EMA(_model(), decay=1.0)
