"""Weight schedules over training progress p in [0, 1] (a float32 tensor in the graph)."""

from __future__ import annotations

import math

import keras
from keras import ops

SCHEDULES = ("ganin", "constant")


def ganin_ramp(progress):
    """2 / (1 + exp(-10 p)) - 1 (Ganin et al. 2016): 0 at the start, ~1 from p = 0.5 on."""
    return 2.0 / (1.0 + ops.exp(-10.0 * progress)) - 1.0


def check_weight(weight, argument="weight"):
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"Argument `{argument}` must be a non-negative number; received {argument}={weight!r}.")
    return float(weight)


def check_schedule(schedule):
    if not (schedule in SCHEDULES or callable(schedule)):
        raise ValueError(
            f"Argument `schedule` must be one of {SCHEDULES} or a callable progress -> multiplier; "
            f"received schedule={schedule!r}."
        )
    return schedule


def scheduled(weight, schedule, progress):
    """weight times the schedule's value at ``progress`` (a float32 tensor)."""
    if schedule == "constant":
        return ops.convert_to_tensor(weight, "float32")
    if schedule == "ganin":
        return weight * ganin_ramp(progress)
    return weight * ops.cast(schedule(progress), "float32")


def serialize_schedule(schedule):
    return schedule if isinstance(schedule, str) else keras.saving.serialize_keras_object(schedule)


def deserialize_schedule(config):
    config = dict(config)
    if isinstance(config.get("schedule"), dict):
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
    return config
