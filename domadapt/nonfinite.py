"""The non-finite guard of the train step: a step whose loss terms are not all finite changes nothing.

The guard runs in the compiled step and needs no host synchronisation: it drops
the step's gradients when any term is NaN or inf on any replica, and records the
first such optimizer step and which terms were bad. ``da.callbacks.StopOnNonFinite``
reads that record every few batches and stops training with a clear error.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from domadapt import _distribute

__all__ = ["NonFiniteGuard"]


class NonFiniteGuard(keras.layers.Layer):
    """Drops the gradients of a step with non-finite loss terms and records it.

    Attributes:
        first_step: the first optimizer step (1-based; 0: none yet) whose loss terms
            were not all finite (an int64 variable, written in the graph).
        term_mask: bit ``i`` set when term ``i`` of ``term_names`` was not finite at ``first_step``.
        term_names: the names of the loss terms, in the order of the mask bits (set at trace time).

    Example:

    ```python
    import keras, domadapt as da
    guard = da.nonfinite.NonFiniteGuard()
    terms = {"cls_loss": keras.ops.convert_to_tensor(0.5), "bad": keras.ops.log(0.0)}
    kept = guard.filter([keras.ops.ones(3)], terms, iteration=keras.ops.convert_to_tensor(4, "int64"))
    print(kept[0].numpy(), int(guard.first_step.numpy()), guard.names_of(int(guard.term_mask.numpy())))
    # [0. 0. 0.] 5 ['bad']
    ```
    """

    def __init__(self, name="nonfinite_guard", **kwargs):
        super().__init__(name=name, **kwargs)
        # Only the first replica's value counts: every replica writes the same one.
        self.first_step = self.add_weight(shape=(), initializer="zeros", trainable=False, name="first_nonfinite_step",
                                          dtype="int64", aggregation="only_first_replica")
        self.term_mask = self.add_weight(shape=(), initializer="zeros", trainable=False, name="nonfinite_terms",
                                         dtype="int64", aggregation="only_first_replica")
        self.term_names = ()
        self.built = True

    def filter(self, gradients, terms, iteration):
        """Gradients, zeroed when a term of ``terms`` ({name: scalar}) is not finite on any replica.

        ``iteration`` is the optimizer's step counter before this step's update.
        """
        self.term_names = tuple(terms)
        bad = ops.stack([ops.cast(ops.logical_not(ops.all(ops.isfinite(t))), "float32") for t in terms.values()])
        bad = _distribute.replica_sum(bad)
        mask = ops.cast(sum(ops.where(bad[index] > 0, 1 << index, 0) for index in range(len(terms))), "int64")
        finite = ops.equal(mask, 0)
        record = ops.logical_and(ops.logical_not(finite), ops.equal(self.first_step, 0))
        self.first_step.assign(ops.where(record, ops.cast(iteration, "int64") + 1, self.first_step))
        self.term_mask.assign(ops.where(record, mask, self.term_mask))
        return [g if g is None or isinstance(g, tf.IndexedSlices) else ops.where(finite, g, ops.zeros_like(g))
                for g in gradients]

    def reset(self):
        """Forget the record (at the start of training)."""
        self.first_step.assign(0)
        self.term_mask.assign(0)

    def names_of(self, mask):
        """The term names whose bits are set in ``mask``."""
        return [name for index, name in enumerate(self.term_names) if mask >> index & 1]

    def call(self, *args, **kwargs):
        raise NotImplementedError("NonFiniteGuard is used through filter(), not called on tensors.")
