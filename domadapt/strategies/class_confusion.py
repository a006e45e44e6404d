"""Minimum class confusion (MCC) on target predictions."""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from domadapt import _distribute, ops as domadapt_ops
from domadapt.strategies.base import WeightedStrategy

__all__ = ["MCC", "class_confusion"]


def class_confusion(logits, temperature=2.5):
    """MCC loss of one batch of logits (Jin et al. 2020, eq. 1-6); a float32 scalar.

    p = softmax(logits / T); each example is weighted by
    w_i = B (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j))) (gradient stopped);
    the class confusion C = p^T diag(w) p is normalised per row,
    C~_jk = C_jk / sum_k' C_jk', and the loss is sum_{j != k} C~_jk / num_classes:
    0 when no example is shared between two classes, up to (K - 1) / K.

    Example:

    ```python
    import numpy as np
    from domadapt.strategies.class_confusion import class_confusion
    print(float(class_confusion(np.zeros((8, 4)))))  # 0.75: uniform predictions, (K - 1) / K
    ```
    """
    logits = ops.cast(logits, "float32")
    probabilities = ops.softmax(logits / temperature, axis=-1)
    batch_size = ops.cast(ops.shape(probabilities)[0], "float32")
    num_classes = ops.cast(ops.shape(probabilities)[1], "float32")
    certainty = 1.0 + ops.exp(-domadapt_ops.entropy(ops.stop_gradient(probabilities)))
    example_weights = batch_size * certainty / ops.sum(certainty)
    confusion = ops.matmul(ops.transpose(probabilities * example_weights[:, None]), probabilities)
    confusion = confusion / ops.sum(confusion, axis=1, keepdims=True)
    # Each normalised row sums to 1, so the off-diagonal mass is K - trace.
    return (ops.sum(confusion) - ops.trace(confusion)) / num_classes


@keras.saving.register_keras_serializable(package="domadapt")
class MCC(WeightedStrategy):
    """Minimum class confusion: keep target predictions from mixing pairs of classes (Jin et al., ECCV 2020).

    Why: on a shifted target the classifier's errors are mostly confusions between
    a few similar classes. MCC penalises the probability mass that the batch puts
    on two classes at once, which sharpens predictions like entropy minimisation
    but, being normalised per class, does not reward collapsing onto one class.
    It needs no discriminator and combines with alignment strategies.

    With p = softmax(target_logits / T) over a batch of B examples and K classes:

        H_i = -sum_k p_ik log p_ik
        w_i = B (1 + exp(-H_i)) / sum_j (1 + exp(-H_j))      (no gradient)
        C   = p^T diag(w) p                                   (K x K)
        C~_jk = C_jk / sum_k' C_jk'
        mcc_loss = weight * sum_{j != k} C~_jk / K

    Under ``tf.distribute`` the matrix is computed on the global batch.

    Reports ``mcc_loss`` (current weight times the confusion).

    Args:
        weight: loss weight (the paper uses 1).
        temperature: T > 0 that softens the probabilities (the paper's 2.5).
        schedule: ``"constant"`` (default), ``"ganin"`` or a callable
            ``progress -> multiplier``.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.strategies.class_confusion import MCC
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=[MCC(temperature=2.5)])
    adapter.compile(optimizer="adam")
    xs, ys = np.random.rand(64, 2), np.random.randint(0, 3, 64)
    adapter.fit(source=(xs, ys), target=np.random.rand(64, 2) + 0.5, epochs=1, verbose=0)
    ```
    """

    log_names = ("mcc_loss",)

    def __init__(self, weight=1.0, temperature=2.5, schedule=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                f"Argument `temperature` must be a positive number; received temperature={temperature!r}."
            )
        self.temperature = float(temperature)

    def loss(self, step):
        logits = _distribute.gather_replicas(step.target_logits)
        return {"mcc_loss": self.current_weight(step) * class_confusion(logits, self.temperature)}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
