"""Feature alignment by maximum mean discrepancy (DAN)."""

from __future__ import annotations

import keras

from domadapt import _distribute, _ops
from domadapt.strategies._schedule import WeightedStrategy

_KERNELS = ("multi", "rbf", "linear")


@keras.saving.register_keras_serializable(package="domadapt")
class MMD(WeightedStrategy):
    """Minimise the squared MMD between source and target features of each batch.

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) (Gretton et al. 2012). With
    ``kernels="multi"`` (DAN, Long et al. 2015) k is the mean of Gaussian kernels
    with bandwidths 0.25x to 4x the batch's mean squared distance; ``"rbf"`` uses
    that single bandwidth; ``"linear"`` compares feature means only.

    Reports ``mmd_loss`` (current weight * MMD^2).

    Args:
        weight: loss weight.
        kernels: ``"multi"``, ``"rbf"`` or ``"linear"``.
        schedule: ``"ganin"`` (default) ramps the weight from 0 so the classifier
            learns first (without it, a large initial gap can collapse the
            features); ``"constant"`` or a callable ``progress -> multiplier``.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD(weight=1.0)])
    ```
    """

    log_names = ("mmd_loss",)
    default_schedule = "ganin"

    def __init__(self, weight=1.0, kernels="multi", schedule=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        if kernels not in _KERNELS:
            raise ValueError(f"Argument `kernels` must be one of {_KERNELS}; received kernels={kernels!r}.")
        self.kernels = kernels

    def loss(self, step):
        # The global batch under tf.distribute; each replica then holds the same loss,
        # which the train step divides by the number of replicas.
        source = _distribute.gather_replicas(step.source_features)
        target = _distribute.gather_replicas(step.target_features)
        if self.kernels == "linear":
            value = _ops.linear_mmd_squared(source, target)
        else:
            multipliers = _ops.MULTI_KERNEL_MULTIPLIERS if self.kernels == "multi" else (1.0,)
            value = _ops.mmd_squared(source, target, multipliers)
        return {"mmd_loss": self.current_weight(step) * value}

    def get_config(self):
        return {**super().get_config(), "kernels": self.kernels}
