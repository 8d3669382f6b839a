"""Known bugs, injected on purpose, and the tests that must catch each (see test_mutations.py).

A mutant rewrites one snippet of one function's source and installs the rewritten function in
place of the original (with pytest's MonkeyPatch), so the suite runs against the buggy core.
Loaded as a pytest plugin, ``FDM_MUTANT=<name> pytest -p tests.mutants ...``, it injects the
named mutant before any test module is imported; without FDM_MUTANT it does nothing.

A snippet must occur exactly once in its function: when a refactor changes the code, the
mutation test fails and says which mutant to update, rather than silently testing nothing.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import os
import textwrap
from dataclasses import dataclass

import pytest

ENV = "FDM_MUTANT"


@dataclass(frozen=True)
class Mutant:
    what: str  # the bug, in words
    module: str
    function: str  # "name" or "Class.method"
    original: str
    mutated: str
    caught_by: tuple[str, ...]  # test node ids that must fail


SAMPLER = "tests/fdm_core/test_sampler.py"
BOUNDARIES = "tests/fdm_core/test_boundaries.py"
REDUCTIONS = "tests/fdm_core/test_reductions.py"
STREAMING = "tests/fdm_cli/test_streaming.py"

MUTANTS = {
    "ddim-noise-scale": Mutant(
        "DDIM noise scale c without its sigma_s / sigma_t factor",
        "fdm_core.sampler",
        "step_coefficients",
        "c = eta * (sigma[1] / sigma[0]) * ",
        "c = eta * ",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds3-1.0-noise]",
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[blur3-0.5-mid-stage]",
            f"{SAMPLER}::test_ddim_step_preserves_the_marginal_under_a_moving_mean[1.0]",
            f"{REDUCTIONS}::test_k0_ddim_step_is_textbook_ddim[1.0]",
        ),
    ),
    "boundary-sigma-of-next-stage": Mutant(
        "the (I - P) boundary noise scaled by sigma_{k+1} instead of sigma_k",
        "fdm_core.process",
        "FDMProcess.up_step",
        "self.alpha_sigma(tau, k))",
        "self.alpha_sigma(tau, k + 1))",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds3-0.0-noise]",
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[blur-ds-blur-0.0-noise]",
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[renoise-0.5-noise]",
            f"{BOUNDARIES}::test_up_step_noise_is_isotropic_and_recovers_the_stage_marginal",
        ),
    ),
    "plain-up-sampling": Mutant(
        "the projection up-step without its (I - P) noise: plain up-sampling of z",
        "fdm_core.process",
        "FDMProcess.up_step",
        " + sigma * orthogonal",
        "",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds2-0.5-boundary]",
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds-factor3-0.0-noise]",
            f"{BOUNDARIES}::test_up_step_noise_is_isotropic_and_recovers_the_stage_marginal",
        ),
    ),
    "mean-frozen-in-step": Mutant(
        "M_s given the interpolation weight of t (delta_t for delta_s) in the step",
        "fdm_core.sampler",
        "mix_coefficients",
        "project = step.alpha_s * step.delta_s - r * step.alpha_t * step.delta_t",
        "project = step.alpha_s * step.delta_t - r * step.alpha_t * step.delta_t",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds2-0.0-noise]",
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[blur3-0.5-boundary]",
            f"{SAMPLER}::test_ddim_step_preserves_the_marginal_under_a_moving_mean[0.0]",
        ),
    ),
    "rescaling-offset-dropped": Mutant(
        "the resolution-aware offset gamma log(d_0 / d_k) dropped from the log-SNR",
        "fdm_core.process",
        "FDMProcess.logsnr",
        "return self.noise_schedule.logsnr(t) + offset",
        "return self.noise_schedule.logsnr(t)",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[ds3-0.0-noise]",
            f"{BOUNDARIES}::test_down_step_gives_the_next_stage_marginal[2]",
            "tests/fdm_core/test_terminal_noise.py::"
            "test_anneal_keeps_the_boundaries_exact_and_the_last_stage_monotone[cosine]",
            "tests/fdm_core/test_golden.py::test_golden_values[fdm-ds-ddim]",
        ),
    ),
    "packed-rows-leave-at-the-wrong-offset": Mutant(
        "in the packed UNet forward, a stage's rows read from the start of the batch instead of "
        "after the rows that go on up",
        "fdm_models.unet",
        "MultiStageUNet.forward_packed",
        "row = rows_to[level - 1]",
        "row = 0",
        (
            "tests/fdm_models/test_unet_packed.py::"
            "test_packed_outputs_and_gradients_equal_per_stage_calls[down]",
            "tests/fdm_models/test_unet_packed.py::"
            "test_the_loss_is_the_same_packed_or_per_stage[7-fdm-ds]",
        ),
    ),
    "delta-not-clamped": Mutant(
        "the interpolation weight delta not clamped to [0, 1] at the stage ends",
        "fdm_core.process",
        "FDMProcess.delta",
        ".clamp(0.0, 1.0)",
        "",
        (f"{BOUNDARIES}::test_interpolation_weight_is_clamped_to_its_stage",),
    ),
    "renoise-as-rescale": Mutant(
        "the renoise up-step carrying the noisy latent over (decode z) instead of decoding the "
        "clean prediction and noising it afresh",
        "fdm_core.process",
        "FDMProcess.up_step",
        "return alpha * transform.decode(clean_next) + sigma * xi",
        "return self.boundary_scale(k) * transform.decode(z_next)",
        (
            f"{SAMPLER}::test_oracle_noisy_path_is_exact[renoise-0.0-noise]",
            "tests/fdm_transforms/test_autoencoder_transform.py::"
            "test_the_renoise_boundary_keeps_the_noisy_path_exact_with_a_real_autoencoder",
        ),
    ),
    "latent-not-decoded": Mutant(
        "latent diffusion returning the clean latent instead of decoding it to data space",
        "fdm_core.sampler",
        "sample",
        "SampleOutput(process.to_data_space(clean, 0), z)",
        "SampleOutput(clean, z)",
        (
            "tests/fdm_core/test_latent.py::"
            "test_samples_are_decoded_and_the_latent_noisy_path_is_exact",
        ),
    ),
    "contract-unchecked": Mutant(
        "a process built without checking each transform's boundary contract",
        "fdm_core.config",
        "_transform",
        "verify_contract(transform, shape, ",
        "(lambda *args: None)(transform, shape, ",
        (
            "tests/fdm_core/test_contract.py::"
            "test_a_transform_that_raises_on_a_batch_is_reported_with_the_shape",
        ),
    ),
    "shard-resume-not-skipped": Mutant(
        "a resumed shard stream restarts at its first sample instead of the saved position",
        "fdm_cli.data.shards",
        "ShardStream.take",
        "self._it = self._stream(local_position)",
        "self._it = self._stream(0)",
        (f"{STREAMING}::test_shard_stream_resumes_exactly",),
    ),
    "shard-replacement-consumes-the-next-image": Mutant(
        "an undecodable shard image is replaced by the next one, which then loses its own slot",
        "fdm_cli.data.shards",
        "ShardStream._next_decodable",
        "data, ahead_label, _ = self._ahead[i]",
        "data, ahead_label, _ = self._ahead.popleft()",
        (f"{STREAMING}::test_an_undecodable_shard_image_is_replaced_by_the_next_one",),
    ),
    "ranks-read-the-same-shards": Mutant(
        "every DDP rank reads the first rank's share of the shards",
        "fdm_cli.data.shards",
        "rank_shards",
        "[rank::world_size]",
        "[0::world_size]",
        (f"{STREAMING}::test_ranks_read_disjoint_shards_covering_all",),
    ),
    "cache-reads-the-wrong-image": Mutant(
        "the decoded cache reads image i ^ 1 for index i",
        "fdm_cli.data.cache",
        "CachedImages.read",
        "HEADER_BYTES + i * self.item_bytes",
        "HEADER_BYTES + (i ^ 1) * self.item_bytes",
        (f"{STREAMING}::test_cached_batches_equal_the_in_memory_ones",),
    ),
}


def mutate(mutant: Mutant, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the mutated function; AssertionError if the original snippet is not found once."""
    module = importlib.import_module(mutant.module)
    owner_name, _, name = mutant.function.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    original = getattr(owner, name)
    source = textwrap.dedent(inspect.getsource(original))
    count = source.count(mutant.original)
    assert count == 1, (
        f"mutant {mutant.what!r}: {mutant.original!r} occurs {count} times in "
        f"{mutant.module}.{mutant.function}; update tests/mutants.py to the current code"
    )
    namespace = dict(vars(module))
    code = compile(
        source.replace(mutant.original, mutant.mutated),
        module.__file__,
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, namespace)
    monkeypatch.setattr(owner, name, namespace[name])
    package = importlib.import_module(mutant.module.split(".")[0])
    if not owner_name and getattr(package, name, None) is original:
        monkeypatch.setattr(package, name, namespace[name])  # the re-export, too


def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get(ENV)
    if name:
        mutate(MUTANTS[name], pytest.MonkeyPatch())
