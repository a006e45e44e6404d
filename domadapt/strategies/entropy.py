"""Entropy minimisation on target predictions, with a diversity term against collapse."""

from __future__ import annotations

import math
import numbers

import keras

from domadapt import _distribute, ops
from domadapt.strategies.base import WeightedStrategy


@keras.saving.register_keras_serializable(package="domadapt")
class EntropyMinimization(WeightedStrategy):
    """Push the classifier to confident, diverse predictions on target data.

    entropy_loss = weight * (mean_t H(p_t) - diversity * H(mean_t p_t)),
    H(p) = -sum_k p_k log p_k (:func:`domadapt.ops.entropy`), p_t = softmax(logits_t).

    The first term is entropy minimisation (Grandvalet & Bengio 2005): confident
    target predictions. On its own it collapses: the cheapest way to be confident is
    to put every target image in one class, and on the project's shift suite it did
    so (``benchmarks/results/shifts.md``, ``diversity=0``: below source-only on every
    shift, one class for 100% of the foggy targets). The second term, the entropy of
    the batch's mean prediction, is maximised: predictions must spread over the
    classes. Together they are the information-maximisation loss of SHOT (Liang et
    al. 2020) and of the ``"information_maximization"`` validator. ``diversity=1``
    (default) assumes the target's classes are roughly balanced within a batch; for
    a target with a very different class mix lower it (``0`` is plain entropy
    minimisation).

    Segmentation (``DomainAdapter(task="segmentation")``): H is taken per pixel and
    averaged over pixels (ADVENT's entropy loss, Vu et al. 2019), the marginal over
    every pixel of the batch. Pixel classes are rarely balanced (road and sky
    dominate driving scenes), so pass ``diversity=0`` there: plain ADVENT.

    Reports ``entropy_loss``.

    Args:
        weight: the loss weight (its largest value under the schedule).
        schedule: ``"ganin"`` (default: ramps in as the classifier learns) or
            ``"constant"`` or a callable ``progress -> multiplier``.
        diversity: weight of the batch-marginal entropy term, >= 0.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.EntropyMinimization(0.1)])
    plain = da.EntropyMinimization(0.1, diversity=0.0)  # Grandvalet & Bengio, no diversity term
    ```
    """

    log_names = ("entropy_loss",)
    default_schedule = "ganin"
    tasks = ("classification", "segmentation")

    def __init__(self, weight=0.1, schedule=None, diversity=1.0, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        if (isinstance(diversity, bool) or not isinstance(diversity, numbers.Real) or not diversity >= 0
                or not math.isfinite(diversity)):  # inf made the loss non-finite at the first step
            raise ValueError(f"Argument `diversity` must be a finite number >= 0; received diversity={diversity!r}.")
        self.diversity = float(diversity)

    def loss(self, step):
        probabilities = step.target_probabilities
        value = keras.ops.mean(ops.entropy(probabilities))
        if self.diversity:
            # The marginal over every prediction of the global batch (images, or pixels for
            # segmentation): it is not a mean of per-replica terms, so tf.distribute must gather it.
            flat = _distribute.gather_replicas(
                keras.ops.reshape(probabilities, (-1, keras.ops.shape(probabilities)[-1])))
            value = value - self.diversity * ops.entropy(keras.ops.mean(flat, axis=0))
        return {"entropy_loss": self.current_weight(step) * value}

    def get_config(self):
        return {**super().get_config(), "diversity": self.diversity}
