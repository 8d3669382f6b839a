"""Training: stratified times, targets per parameterization, the batch split by stage."""

import pytest
import torch

from fdm_core import diffusion_loss, stratified_times

from .helpers import make_process, oracle

DS3 = [{"name": "downsample"}] * 2


@pytest.mark.parametrize("batch", [3, 4, 7, 64])
def test_every_stage_appears_in_every_batch(batch):
    process = make_process(DS3, stage_schedule={"name": "explicit", "boundaries": [0.1, 0.2]})
    for seed in range(20):
        t, _ = stratified_times(process, batch, torch.Generator().manual_seed(seed))
        assert set(process.stage_of(t).tolist()) == {0, 1, 2}


def test_importance_weights_make_the_estimate_unbiased():
    """E[w f(t)] over the stratified design equals int_0^1 f(t) dt for unequal stages."""
    process = make_process(DS3, stage_schedule={"name": "explicit", "boundaries": [0.1, 0.2]})
    gen = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(400):
        t, w = stratified_times(process, 5, gen)
        estimates.append(float((w * t.float() ** 2).mean()))
    mean = sum(estimates) / len(estimates)
    assert mean == pytest.approx(1 / 3, abs=5e-3)


@pytest.mark.parametrize("parameterization", ["v", "x0"])
def test_target_inverts_to_the_stage_signal(parameterization):
    process = make_process(DS3, parameterization=parameterization)
    x = torch.randn(9, 1, 8, 8, dtype=torch.float64)
    t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    for group in process.split_by_stage(x, t):
        clean = process.predict_clean(group.target, group.z, group.t, group.stage)
        assert torch.allclose(clean, group.x_stage, atol=1e-8)
        assert group.z.shape[1:] == process.stage_shapes[group.stage]


def test_v_target_is_v_prediction_at_the_stage_start():
    process = make_process(DS3)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.full((2,), process.boundaries[1], dtype=torch.float64)  # delta = 0 in stage 1
    (group,) = process.split_by_stage(x, t)
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in process.alpha_sigma(group.t, 1))
    v = alpha * group.eps - sigma * group.x_stage
    assert torch.allclose(group.target, v, atol=1e-10)


@pytest.mark.parametrize("parameterization", ["v", "x0"])
def test_oracle_has_zero_loss_and_gradients_reach_every_stage(parameterization):
    process = make_process(DS3, parameterization=parameterization)
    x = torch.randn(1, 1, 8, 8)
    assert float(diffusion_loss(process, oracle(process, x), x.expand(6, -1, -1, -1)).loss) < 1e-8
    scale = torch.nn.Parameter(torch.ones(3))
    out = diffusion_loss(process, lambda z, t, k: scale[k] * z, torch.randn(6, 1, 8, 8))
    out.loss.backward()
    assert (scale.grad != 0).all() and torch.isfinite(out.per_stage).all()
    assert out.counts == [2, 2, 2]


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "truncated"])
def test_x0_weightings(weighting):
    process = make_process(DS3, parameterization="x0", weighting=weighting, min_snr_gamma=5.0)
    x = torch.zeros(3, 1, 8, 8)
    t = torch.tensor([0.05, 0.5, 0.95])
    out = diffusion_loss(process, lambda z, tt, k: torch.ones_like(z), x, t=t)
    from fdm_core.loss import loss_weight

    snr = torch.stack(
        [process.logsnr(t[i : i + 1].double(), k).exp()[0] for i, k in enumerate([0, 1, 2])]
    )
    expected = {"snr": snr, "min_snr": snr.clamp(max=5.0), "truncated": snr.clamp(min=1.0)}[
        weighting
    ]
    assert float(out.loss) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert float(loss_weight(process, t[:1], 0)) == pytest.approx(float(expected[0]), rel=1e-6)


def test_eps_parameterization_for_ddpm():
    process = make_process([], parameterization="eps")
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    (group,) = process.split_by_stage(x, torch.full((4,), 0.5, dtype=torch.float64))
    assert torch.equal(group.target, group.eps)


def test_caller_times_in_any_order_are_grouped_by_stage():
    """Given t is sorted by stage before slicing: a permuted batch gives the same loss."""
    process = make_process(DS3)
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.4])
    perm = torch.tensor([1, 3, 2, 5, 0, 4])  # by stage, same order inside each stage

    def zero_net(z, tt, k):
        return torch.zeros_like(z)

    losses = [
        diffusion_loss(process, zero_net, xs, t=ts, generator=torch.Generator().manual_seed(1))
        for xs, ts in ((x, t), (x[perm], t[perm]))
    ]
    assert losses[0].counts == losses[1].counts == [2, 2, 2]
    torch.testing.assert_close(losses[0].loss, losses[1].loss)
    with pytest.raises(ValueError, match="ordered by stage"):
        process.split_by_stage(x, t)
