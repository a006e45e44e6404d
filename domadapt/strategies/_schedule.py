"""Weight schedules over training progress p in [0, 1] (a float32 tensor in the graph)."""

from __future__ import annotations

import math

import keras
from keras import ops

from domadapt.strategy import Strategy

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


class WeightedStrategy(Strategy):
    """A strategy whose loss term is ``scheduled(weight) * value(step)``.

    Args:
        weight: the loss weight (its largest value under a schedule).
        schedule: ``"constant"``, ``"ganin"`` (ramp from 0 to weight over
            training, so the classifier learns before alignment dominates), or a
            callable ``progress -> multiplier`` written with keras.ops.
    """

    default_schedule = "constant"

    def __init__(self, weight=1.0, schedule=None, **kwargs):
        super().__init__(**kwargs)
        self.weight = check_weight(weight)
        self.schedule = check_schedule(self.default_schedule if schedule is None else schedule)

    def current_weight(self, step):
        return scheduled(self.weight, self.schedule, step.progress)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "schedule": serialize_schedule(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_schedule(config))
