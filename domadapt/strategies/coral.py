"""Deep CORAL: align second-order statistics of the features."""

from __future__ import annotations

import keras

from domadapt import _distribute, ops
from domadapt.strategies._class_weights import ClassWeightedAlignment
from domadapt.strategies.base import WeightedStrategy
from domadapt.tasks import TASKS


@keras.saving.register_keras_serializable(package="domadapt")
class CORAL(ClassWeightedAlignment, WeightedStrategy):
    """Minimise ||Cov_s - Cov_t||_F^2 / (4 d^2) between batch feature covariances (Sun & Saenko 2016).

    Reports ``coral_loss`` (weight * distance).

    Args:
        weight: loss weight.
        schedule: ``"constant"`` (default), ``"ganin"`` or a callable ``progress -> multiplier``.
        class_weights: per-class weights of the source examples for a target whose
            class mix differs: ``None`` (default), ``"auto"`` (estimated during
            training, PADA) or one weight per class; Cov_s becomes the weighted
            covariance (:func:`domadapt.ops.covariance`; see :class:`~domadapt.DANN`).

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.CORAL(weight=1.0)])
    ```
    """

    log_names = ("coral_loss",)
    tasks = TASKS  # pooled features exist in every task

    def __init__(self, weight=1.0, schedule=None, *, class_weights=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        self.init_class_weights(class_weights)

    def setup(self, adapter):
        self.setup_class_weights(adapter)

    def loss(self, step):
        # The global batch under tf.distribute (see MMD.loss).
        source, target = _distribute.gather_replicas(step.source_features), _distribute.gather_replicas(step.target_features)
        weights = self.source_class_weights(step)
        if weights is not None:
            weights = _distribute.gather_replicas(weights)
        return {"coral_loss": self.current_weight(step) * ops.coral(source, target, source_weights=weights)}

    def get_config(self):
        return {**super().get_config(), **self.class_weights_config()}

