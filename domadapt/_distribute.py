"""Global-batch helpers for losses under ``tf.distribute``.

Under tf.distribute each replica sees a slice of the global batch. Losses that are
means over examples add up correctly by themselves; losses built on batch
statistics (kernel means, covariances, normalised weights) must see the global
batch, or they would change with the number of replicas.
"""

from __future__ import annotations

import tensorflow as tf


def _replica_context():
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def gather_replicas(tensor):
    """The global batch: every replica's rows, concatenated (gradients flow back to each replica's own rows)."""
    context = _replica_context()
    return tensor if context is None else context.all_gather(tensor, axis=0)


def replica_sum(value):
    """``value`` summed over replicas (forward only: for statistics under ``stop_gradient``)."""
    context = _replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_count():
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync
