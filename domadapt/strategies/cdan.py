"""CDAN / CDAN+E: adversarial alignment conditioned on the classifier's predictions."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from domadapt import _distribute, ops as domadapt_ops
from domadapt.data import check_positive_int
from domadapt.strategies.base import AdversarialStrategy

# Above this many multilinear features, use the randomised map (Long et al. 2018, sec. 3.3).
_MAX_EXACT_DIM = 4096


@keras.saving.register_keras_serializable(package="domadapt")
class CDAN(AdversarialStrategy):
    """Conditional domain-adversarial training (CDAN, Long et al. 2018).

    The discriminator sees the multilinear map of features f and (gradient-
    stopped) softmax predictions g, h = f (x) g (their outer product, flattened),
    so it aligns the joint distribution of features and classes rather than the
    features alone. When ``feature_dim * num_classes`` exceeds 4096, the randomised
    map h = (R_f f) * (R_g g) / sqrt(random_dim) is used, with fixed R_f, R_g drawn
    from N(0, 1) as in the paper and its official code, so that E[h . h] = |f|^2 |g|^2,
    the squared norm of the exact map.

    With ``entropy_conditioning=True`` (CDAN+E), each example's domain loss is
    weighted by 1 + exp(-H(g)), so confident predictions count more.

    Reports ``cdan_loss``, ``cdan_acc`` and ``cdan_lambda``.

    Args:
        weight: the largest lambda (default 0.1, as DANN's and for the same reason:
            with lambda = 1 CDAN collapsed on the colour-cast shift in 2 of 3 seeds;
            0.1 gave 73.9% against 69.0% on rain, seed 0; see
            ``benchmarks/results/tune_defaults.md`` and ``shifts.md``).
        schedule, discriminator, hidden_units, dropout, class_weights: as in
            :class:`~domadapt.DANN` (class weights multiply the entropy weights).
        entropy_conditioning: CDAN+E weighting.
        random_dim: output width of the randomised multilinear map.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2,
                               strategies=[da.CDAN(hidden_units=(32,))])
    ```
    """

    log_names = {"cdan_loss": "mean", "cdan_acc": "mean", "cdan_lambda": "last"}
    loss_name, accuracy_name, lambda_name = "cdan_loss", "cdan_acc", "cdan_lambda"

    def __init__(self, weight=0.1, entropy_conditioning=True, random_dim=1024, **kwargs):
        super().__init__(weight=weight, **kwargs)
        if not isinstance(entropy_conditioning, (bool, np.bool_)):  # bool("no") is True
            raise TypeError(f"Argument `entropy_conditioning` must be True or False; received "
                            f"entropy_conditioning={entropy_conditioning!r}.")
        self.entropy_conditioning = bool(entropy_conditioning)
        self.random_dim = check_positive_int(random_dim, "random_dim")

    def discriminator_input_dim(self, adapter):
        self._randomised = adapter.feature_dim * adapter.num_classes > _MAX_EXACT_DIM
        if self._randomised:
            # Fixed random projections: weights (saved with the model), never trained.
            self.feature_projection = self.add_weight(
                shape=(adapter.feature_dim, self.random_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1),
                trainable=False,
                name="feature_projection",
            )
            self.prediction_projection = self.add_weight(
                shape=(adapter.num_classes, self.random_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2),
                trainable=False,
                name="prediction_projection",
            )
            return self.random_dim
        return adapter.feature_dim * adapter.num_classes

    def _multilinear(self, features, logits):
        predictions = ops.stop_gradient(ops.softmax(logits, axis=-1))
        if self._randomised:
            projected = ops.matmul(features, self.feature_projection) * ops.matmul(
                predictions, self.prediction_projection
            )
            return projected / (self.random_dim**0.5)
        outer = features[:, :, None] * predictions[:, None, :]
        return ops.reshape(outer, (-1, ops.shape(features)[1] * ops.shape(predictions)[1]))

    def discriminator_inputs(self, step):
        return (
            self._multilinear(step.source_features, step.source_logits),
            self._multilinear(step.target_features, step.target_logits),
        )

    def example_weights(self, step):
        if not self.entropy_conditioning:
            return None

        def weights(logits):
            w = 1.0 + ops.exp(-domadapt_ops.entropy(ops.softmax(logits, axis=-1)))
            return w / _distribute.replica_sum(ops.sum(w))  # each domain contributes equally (global batch)

        return weights(step.source_logits), weights(step.target_logits)

    def get_config(self):
        return {**super().get_config(), "entropy_conditioning": self.entropy_conditioning, "random_dim": self.random_dim}
