"""Entropy minimisation on target predictions."""

from __future__ import annotations

import keras

from domadapt import ops
from domadapt.strategies.base import WeightedStrategy


@keras.saving.register_keras_serializable(package="domadapt")
class EntropyMinimization(WeightedStrategy):
    """Push the classifier to confident predictions on target data (Grandvalet & Bengio 2005).

    entropy_loss = weight * mean_t H(softmax(logits_t)), H(p) = -sum_k p_k log p_k
    (:func:`domadapt.ops.entropy`, the function of the ``"entropy"`` validator).
    On its own it can collapse onto one class; it is usually combined with an
    alignment strategy (``da.GradientReversal() + da.EntropyMinimization(0.1)``).

    Reports ``entropy_loss``.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.EntropyMinimization(0.1)])
    ```
    """

    log_names = ("entropy_loss",)
    default_schedule = "ganin"

    def __init__(self, weight=0.1, schedule=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)

    def loss(self, step):
        return {"entropy_loss": self.current_weight(step) * keras.ops.mean(ops.entropy(step.target_probabilities))}

