"""Invalid configurations fail with a message naming the field and what is allowed."""

import pytest
from pydantic import ValidationError

from fdm_core import FDMProcess, ProcessConfig, SamplerConfig

DS = {"name": "downsample"}

INVALID_PROCESS = [
    (
        {"transforms": [{"name": "warp"}]},
        r"transforms\[0\]: unknown transform 'warp'; registered: .*downsample",
    ),
    (
        {"noise_schedule": "quadratic"},
        r"noise_schedule: unknown noise_schedule 'quadratic'; registered: cosine",
    ),
    (
        {"stage_schedule": "fancy"},
        r"stage_schedule: unknown stage_schedule 'fancy'; registered: equal, explicit",
    ),
    (
        {"transforms": [DS, DS], "stage_schedule": {"name": "explicit", "boundaries": [0.6, 0.3]}},
        "boundaries must be strictly increasing",
    ),
    (
        {"transforms": [DS], "stage_schedule": {"name": "explicit", "boundaries": [1.2]}},
        r"boundaries must lie strictly inside \(0, 1\)",
    ),
    (
        {"transforms": [DS, DS], "stage_schedule": {"name": "explicit", "boundaries": [0.5]}},
        "1 boundaries given but the transform chain makes 3 stages, which need 2",
    ),
    (
        {"resolution": 20, "transforms": [DS, DS, DS]},
        r"transforms\[2\] \(downsample\) cannot take stage 2 of shape \(1, 5, 5\): "
        "downsample factor 2 must divide",
    ),
    ({"gamma": 1.5}, "gamma\n  Input should be less than or equal to 1"),
    ({"gamma": -0.1}, "gamma\n  Input should be greater than or equal to 0"),
    (
        {"transforms": [DS], "parameterization": "eps"},
        "parameterization 'eps' needs an identity mean path",
    ),
    ({"parameterization": "score"}, "parameterization\n  Input should be 'v', 'x0' or 'eps'"),
    (  # a weighting the v loss would silently ignore (docs/design.md (E20): x0 only)
        {"weighting": "min_snr"},
        "weighting 'min_snr' weights the x0 loss .* parameterization 'v' is unweighted",
    ),
    ({"parameterization": "eps", "weighting": "snr"}, "parameterization 'eps' is unweighted"),
    (
        {"transforms": [{"name": "downsample", "factor": 1}]},
        r"transforms\[0\] \(downsample\): factor: Input should be greater than or equal to 2",
    ),
    (
        {"transforms": [{"name": "blur", "kind": "uniform", "size": 4}]},
        "size must be an odd kernel length",
    ),
    (
        {"transforms": [{"name": "blur", "kind": "motion"}]},
        r"kind: Input should be 'gaussian' or 'uniform'",
    ),
    ({"transforms": [{"name": "downsample", "scale": 2}]}, "scale: Extra inputs are not permitted"),
    ({"resolution": 0}, "resolution\n  Input should be greater than 0"),
    ({"learning_rate": 1e-3}, "learning_rate\n  Extra inputs are not permitted"),
    (
        {"noise_schedule": {"name": "cosine", "logsnr_min": 5, "logsnr_max": -5}},
        "logsnr_min .* must be below logsnr_max",
    ),
    (
        {"transforms": [{"name": "blur", "sigma": 3.0}], "resolution": 8},
        "blur kernel radius 9 needs a stage larger",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), INVALID_PROCESS)
def test_invalid_process_config(overrides, message):
    with pytest.raises(ValidationError, match=message):
        ProcessConfig(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eta": 1.5}, "eta\n  Input should be less than or equal to 1"),
        ({"steps": 0}, "steps\n  Input should be greater than 0"),
        ({"steps": -3}, "steps\n  Input should be greater than 0"),
        ({"steps_per_stage": [4, 0, 2]}, "steps_per_stage must be positive step counts"),
        ({"clip": -1.0}, "clip\n  Input should be greater than 0"),
    ],
)
def test_invalid_sampler_config(overrides, message):
    with pytest.raises(ValidationError, match=message):
        SamplerConfig(**overrides)


def test_steps_per_stage_must_match_the_stage_count():
    from fdm_core import steps_per_stage

    process = FDMProcess(ProcessConfig(transforms=[DS]))
    with pytest.raises(ValueError, match="steps_per_stage has 3 entries; the process has 2 stages"):
        steps_per_stage(process, SamplerConfig(steps_per_stage=[1, 2, 3]))


def test_config_round_trips_through_json():
    config = ProcessConfig(
        transforms=[DS, {"name": "blur", "kind": "uniform", "size": 3}],
        stage_schedule={"name": "explicit", "boundaries": [0.4, 0.7]},
        gamma=0.5,
    )
    again = ProcessConfig.model_validate_json(config.model_dump_json())
    assert again == config
    process = FDMProcess(again)
    assert process.stage_shapes == [(1, 32, 32), (1, 16, 16), (1, 16, 16)]
    assert [t.to_config() for t in process.transforms] == [
        {"name": "downsample", "factor": 2},
        {"name": "blur", "kind": "uniform", "size": 3},
    ]
