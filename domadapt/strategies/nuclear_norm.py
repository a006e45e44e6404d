"""Batch nuclear-norm maximisation (BNM) on target predictions."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from domadapt import _distribute
from domadapt.strategies.base import WeightedStrategy

__all__ = ["BNM", "batch_nuclear_norm"]


def batch_nuclear_norm(probabilities):
    """||P||_* / B for a ``(B, K)`` batch of probabilities: the sum of its singular values over B.

    Differentiable: the gradient of the sum of singular values is U V^T
    (TensorFlow's SVD gradient with ``compute_uv=False``), defined also when
    singular values repeat. Compiles under XLA.

    Example:

    ```python
    import numpy as np
    from domadapt.strategies.nuclear_norm import batch_nuclear_norm
    print(float(batch_nuclear_norm(np.eye(4))))  # 1.0: confident and diverse, the largest value
    ```
    """
    probabilities = ops.cast(probabilities, "float32")
    singular_values = tf.linalg.svd(probabilities, compute_uv=False)
    return ops.sum(singular_values) / ops.cast(ops.shape(probabilities)[0], "float32")


@keras.saving.register_keras_serializable(package="domadapt")
class BNM(WeightedStrategy):
    """Batch nuclear-norm maximisation: confident and diverse target predictions (Cui et al., CVPR 2020).

    Why: the nuclear norm of the batch's probability matrix P (B x K) grows both
    when each row is confident (low entropy, as in entropy minimisation) and when
    the rows spread over many classes (its rank grows), so maximising it sharpens
    target predictions without collapsing them onto the majority classes.

        bnm_loss = -weight * ||P_t||_* / B,   P_t = softmax(target_logits)

    ||.||_* is the sum of singular values (exact, by SVD; the paper's formula). The
    authors' code divides by min(B, K) instead of B, which multiplies the loss by
    B / min(B, K); with B > K raise ``weight`` by that factor to match it. Under
    ``tf.distribute`` the norm is taken over the global batch.

    Reports ``bnm_loss`` (negative: it is maximised).

    Args:
        weight: loss weight (the paper uses 1).
        schedule: ``"constant"`` (default), ``"ganin"`` or a callable
            ``progress -> multiplier``.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.strategies.nuclear_norm import BNM
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=[BNM(weight=1.0)])
    adapter.compile(optimizer="adam")
    xs, ys = np.random.rand(64, 2), np.random.randint(0, 3, 64)
    adapter.fit(source=(xs, ys), target=np.random.rand(64, 2) + 0.5, epochs=1, verbose=0)
    ```
    """

    log_names = ("bnm_loss",)

    def __init__(self, weight=1.0, schedule=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)

    def loss(self, step):
        probabilities = ops.softmax(_distribute.gather_replicas(step.target_logits), axis=-1)
        return {"bnm_loss": -self.current_weight(step) * batch_nuclear_norm(probabilities)}
