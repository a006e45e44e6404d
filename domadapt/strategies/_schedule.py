"""Weight schedules over training progress p in [0, 1] (a float32 tensor in the graph)."""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

SCHEDULES = ("ganin", "constant")


def ganin_ramp(progress):
    """2 / (1 + exp(-10 p)) - 1 (Ganin et al. 2016): 0 at the start, ~1 from p = 0.5 on."""
    return 2.0 / (1.0 + ops.exp(-10.0 * progress)) - 1.0


def check_weight(weight, argument="weight"):
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"Argument `{argument}` must be a non-negative number; received {argument}={weight!r}.")
    return float(weight)


def check_units(value, argument, allow_empty=True):
    """A tuple of positive integers (layer widths, filters), or a clear error naming ``argument``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"Argument `{argument}` must be a tuple of positive integers; received {argument}={value!r}.")
    units = tuple(value)
    if (not units and not allow_empty) or any(
            isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1 for u in units):
        raise ValueError(f"Argument `{argument}` must be a {'' if allow_empty else 'non-empty '}tuple of positive "
                         f"integers; received {argument}={value!r}.")
    return tuple(int(u) for u in units)


def check_schedule(schedule):
    if not ((isinstance(schedule, str) and schedule in SCHEDULES) or callable(schedule)):
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
