"""Deep CORAL: align second-order statistics of the features."""

from __future__ import annotations

import keras

from domadapt import _distribute, ops
from domadapt.strategies.base import WeightedStrategy


@keras.saving.register_keras_serializable(package="domadapt")
class CORAL(WeightedStrategy):
    """Minimise ||Cov_s - Cov_t||_F^2 / (4 d^2) between batch feature covariances (Sun & Saenko 2016).

    Reports ``coral_loss`` (weight * distance).

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.CORAL(weight=1.0)])
    ```
    """

    log_names = ("coral_loss",)

    def __init__(self, weight=1.0, schedule=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)

    def loss(self, step):
        # The global batch under tf.distribute (see MMD.loss).
        source, target = _distribute.gather_replicas(step.source_features), _distribute.gather_replicas(step.target_features)
        return {"coral_loss": self.current_weight(step) * ops.coral(source, target)}

