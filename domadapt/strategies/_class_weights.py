"""Per-class source weights for alignment when the target's class mix differs (``class_weights=``).

Marginal alignment pulls target images of the common classes onto source images
of classes the target lacks (negative transfer under label shift / partial
adaptation). Weighting each source example by gamma[y], an estimate of how much
its class occurs in the target, aligns the target with the source restricted to
the target's classes (PADA, Cao et al. 2018; IWAN, Zhang et al. 2018).

``class_weights="auto"`` estimates gamma inside the train step, with no host
sync: the mean target prediction of the (global) batch, averaged by an
exponential moving average whose window is about one epoch (momentum 1 - 1 /
steps_per_epoch, PADA's once-per-epoch refresh made smooth), normalised by its
maximum. A fixed array (e.g. ``da.gap.label_shift(...).importance_weights``) is
used as given.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from domadapt import _distribute


def check_class_weights(class_weights):
    """``None``, ``"auto"``, or a tuple of non-negative floats with a positive one; else a ValueError."""
    if class_weights is None or (isinstance(class_weights, str) and class_weights == "auto"):
        return class_weights
    if not isinstance(class_weights, str):
        try:
            values = np.asarray(class_weights, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.ndim == 1 and values.size >= 2 and np.all(np.isfinite(values)) and np.all(values >= 0) \
                and values.max() > 0:
            return tuple(float(v) for v in values)
    raise ValueError(
        "Argument `class_weights` must be None, 'auto' (estimated from the target predictions during training) or "
        f"one non-negative weight per class with a positive one; received class_weights={class_weights!r}."
    )


class ClassWeightedAlignment:
    """Mixin of alignment strategies: ``class_weights=`` and the per-example source weights it gives.

    The strategy calls :meth:`init_class_weights` in ``__init__``, :meth:`setup_class_weights`
    in ``setup`` and :meth:`source_class_weights` in ``loss``.
    """

    def init_class_weights(self, class_weights):
        self.class_weights = check_class_weights(class_weights)
        self.target_class_estimate = None

    def setup_class_weights(self, adapter):
        if isinstance(self.class_weights, tuple) and len(self.class_weights) != adapter.num_classes:
            raise ValueError(
                f"Argument `class_weights` of {type(self).__name__} must hold one weight per class "
                f"({adapter.num_classes}); received {len(self.class_weights)}."
            )
        if self.class_weights == "auto" and self.target_class_estimate is None:
            # Every replica computes the same value from global-batch sums: keep the first.
            self.target_class_estimate = self.add_weight(
                shape=(adapter.num_classes,), initializer=keras.initializers.Constant(1.0 / adapter.num_classes), trainable=False,
                name="target_class_estimate", aggregation="only_first_replica")
            self.class_weight_momentum = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(0.9), trainable=False, name="class_weight_momentum",
                aggregation="only_first_replica")

    def on_fit_start(self, context):
        if self.class_weights == "auto":
            self.class_weight_momentum.assign(1.0 - 1.0 / max(int(context.steps_per_epoch), 1))

    def current_class_weights(self):
        """gamma: the class weights now (a numpy array; ``None`` without ``class_weights``)."""
        if self.class_weights is None:
            return None
        if self.class_weights == "auto":
            estimate = np.asarray(self.target_class_estimate)
            return estimate / max(float(estimate.max()), 1e-12)
        return np.asarray(self.class_weights)

    def source_class_weights(self, step):
        """gamma[y_i] for each source example of the step (float32, no gradient), or ``None``."""
        if self.class_weights is None:
            return None
        if self.class_weights == "auto":
            estimate = ops.convert_to_tensor(self.target_class_estimate)
            if step.training:
                probabilities = ops.stop_gradient(ops.softmax(ops.cast(step.target_logits, "float32"), axis=-1))
                count = _distribute.replica_sum(ops.cast(ops.shape(probabilities)[0], "float32"))
                batch_mean = _distribute.replica_sum(ops.sum(probabilities, axis=0)) / ops.maximum(count, 1.0)
                momentum = ops.convert_to_tensor(self.class_weight_momentum)
                estimate = momentum * estimate + (1.0 - momentum) * batch_mean
                self.target_class_estimate.assign(estimate)
            gamma = estimate / ops.maximum(ops.max(estimate), 1e-12)
        else:
            gamma = ops.convert_to_tensor(np.asarray(self.class_weights, "float32"))
        labels = ops.reshape(ops.cast(step.source_labels, "int32"), (-1,))
        return ops.stop_gradient(ops.take(gamma, labels, axis=0))

    def class_weights_config(self):
        return {"class_weights": list(self.class_weights) if isinstance(self.class_weights, tuple) else self.class_weights}

