"""The packed multi-stage forward (docs/design.md §6.6): one call over every stage's rows gives
each row the output, and each parameter the gradient, of separate per-stage calls."""

from __future__ import annotations

import pytest
import torch

from fdm_core import FDMProcess, ProcessConfig, diffusion_loss
from fdm_models import MultiStageUNet, UNetConfig

CHAINS = {
    "down": [(1, 32, 32), (1, 16, 16), (1, 8, 8)],
    "blur": [(1, 32, 32)] * 3,  # every stage enters at level 0
    "latent": [(3, 32, 32), (4, 8, 8)],  # an autoencoder stage with its own channel count
    "unordered": [(1, 32, 32), (4, 8, 8), (1, 16, 16)],  # entry levels not in stage order
}


def _model(shapes: list, **overrides) -> MultiStageUNet:
    config = UNetConfig.for_stages(shapes, size="tiny", base_channels=16, **overrides)
    model = MultiStageUNet(config).double()
    with torch.no_grad():  # zero-initialised heads would hide every path but their own
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    return model


def _batches(shapes: list, counts: list[int]) -> tuple[list, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    zs = [
        torch.randn(n, *s, generator=generator, dtype=torch.float64)
        for s, n in zip(shapes, counts, strict=True)
    ]
    return zs, torch.rand(sum(counts), generator=generator, dtype=torch.float64)


def _grads(model: MultiStageUNet) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_packed_outputs_and_gradients_equal_per_stage_calls(chain: str) -> None:
    shapes = CHAINS[chain]
    model = _model(shapes)
    counts = [3, 2, 4][: len(shapes)]
    zs, t = _batches(shapes, counts)
    weights = [torch.randn_like(z) for z in zs]

    packed = model.forward_packed(zs, t)
    sum((o * w).sum() for o, w in zip(packed, weights, strict=True)).backward()
    packed_grads = _grads(model)

    model.zero_grad(set_to_none=True)
    offsets = [sum(counts[:k]) for k in range(len(counts))]
    separate = [
        model(z, t[o : o + len(z)], k) for k, (z, o) in enumerate(zip(zs, offsets, strict=True))
    ]
    sum((o * w).sum() for o, w in zip(separate, weights, strict=True)).backward()
    separate_grads = _grads(model)

    for k, (a, b) in enumerate(zip(packed, separate, strict=True)):
        torch.testing.assert_close(a, b, msg=f"stage {k} output")
    assert packed_grads.keys() == separate_grads.keys()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, separate_grads[name], msg=name)


def test_absent_stages_are_skipped_and_their_heads_untouched() -> None:
    shapes = CHAINS["down"]
    model = _model(shapes)
    zs, t = _batches(shapes, [0, 2, 3])
    outputs = model.forward_packed([None, zs[1], zs[2]], t)
    assert outputs[0] is None
    torch.testing.assert_close(outputs[1], model(zs[1], t[:2], 1))
    sum(o.sum() for o in outputs[1:]).backward()
    assert model.input_heads[0].weight.grad is None
    assert model.output_heads[0].conv.weight.grad is None
    assert model.encoder[0].res_blocks[0].conv1.weight.grad is None  # level 0 was not run


def test_packed_forward_with_gradient_checkpointing_matches() -> None:
    shapes = CHAINS["down"]
    model = _model(shapes, gradient_checkpointing=True).train()
    zs, t = _batches(shapes, [2, 2, 2])
    with_checkpoints = model.forward_packed(zs, t)
    model.config = model.config.model_copy(update={"gradient_checkpointing": False})
    for a, b in zip(with_checkpoints, model.forward_packed(zs, t), strict=True):
        torch.testing.assert_close(a, b)


def test_wrong_shapes_are_one_line_errors() -> None:
    shapes = CHAINS["down"]
    model = _model(shapes)
    zs, t = _batches(shapes, [2, 2, 2])
    with pytest.raises(ValueError, match=r"stage 1 expects z of shape \(B, 1, 16, 16\)"):
        model.forward_packed([zs[0], zs[0], zs[2]], t)
    with pytest.raises(ValueError, match=r"t must have shape \(6,\)"):
        model.forward_packed(zs, t[:5])
    with pytest.raises(ValueError, match="expected 3 stage batches"):
        model.forward_packed(zs[:2], t)
    with pytest.raises(ValueError, match="at least one stage batch"):
        model.forward_packed([None, None, None], t[:0])


@pytest.mark.parametrize(
    "transforms",
    [[{"name": "downsample"}] * 2, [{"name": "blur", "sigma": 1.0}] * 2, []],
    ids=["fdm-ds", "fdm-blur", "ddpm"],
)
@pytest.mark.parametrize("batch", [2, 7])  # 2 < K + 1: times over [0, 1], stages read back
def test_the_loss_is_the_same_packed_or_per_stage(transforms: list, batch: int) -> None:
    process = FDMProcess(ProcessConfig(resolution=16, transforms=transforms))
    model = _model(process.stage_shapes).float()
    x = torch.randn(batch, 1, 16, 16)

    def per_stage_calls(z: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        return model(z, t, k)  # a plain callable: the loss calls it once per stage

    results = []
    for network in (model, per_stage_calls):
        model.zero_grad(set_to_none=True)
        out = diffusion_loss(process, network, x, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        results.append((out, _grads(model)))
    (packed, packed_grads), (separate, separate_grads) = results
    torch.testing.assert_close(packed.loss, separate.loss)
    torch.testing.assert_close(packed.per_stage, separate.per_stage, equal_nan=True)
    assert packed.counts == separate.counts and sum(packed.counts) == batch
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, separate_grads[name], msg=name)
