"""fdm-core's own plugin: the built-in noise and stage schedules, registered through the hooks."""

from __future__ import annotations

from .hookspecs import Register, hookimpl
from .schedules import (
    CosineSchedule,
    EqualStages,
    ExplicitStages,
    LinearBetaSchedule,
    ShiftedCosineSchedule,
)


@hookimpl
def fdm_register_noise_schedules(register: Register) -> None:
    for schedule in (CosineSchedule, ShiftedCosineSchedule, LinearBetaSchedule):
        register(schedule.name, schedule)


@hookimpl
def fdm_register_stage_schedules(register: Register) -> None:
    for schedule in (EqualStages, ExplicitStages):
        register(schedule.name, schedule)
