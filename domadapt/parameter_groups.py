"""Learning-rate multipliers for groups of variables (layer-wise learning rates), applied around one optimizer.

In the spirit of ``optax.multi_transform``: variables are partitioned into groups,
each with its own learning-rate multiplier; the optimizer and its state stay the
user's (so loss scaling, tf.distribute and checkpoints are unchanged).
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

__all__ = ["ParameterGroups"]


class ParameterGroups:
    """Variables grouped with a learning-rate multiplier each; others keep multiplier 1.

    :meth:`apply` runs one optimizer step in which a variable with multiplier m
    moves m times as far as the optimizer moves it. For optimizers whose update is
    proportional to the learning rate (SGD, momentum, Adam, AdamW, RMSprop, ...)
    this equals training that variable with learning rate ``m * lr``; the
    optimizer's slots are updated as usual. ``da.FineTune`` builds one for
    layer-wise learning rates and installs it through ``FitContext.adapter``.

    Args:
        groups: an iterable of ``(variables, multiplier)``; multipliers are positive
            finite numbers; a variable may appear in one group only.

    Example:

    ```python
    import keras, domadapt as da
    kernel, bias = keras.Variable([1.0, 2.0]), keras.Variable([0.5])
    groups = da.parameter_groups.ParameterGroups([([kernel], 0.1)])
    groups.apply(keras.optimizers.SGD(1.0), [keras.ops.ones(2), keras.ops.ones(1)], [kernel, bias])
    print(kernel.numpy(), bias.numpy())  # [0.9 1.9] [-0.5]
    ```
    """

    def __init__(self, groups):
        self._multipliers = {}
        for position, group in enumerate(groups):
            if not isinstance(group, (tuple, list)) or len(group) != 2:
                raise TypeError(f"Argument `groups`: item {position} must be (variables, multiplier); received {group!r}.")
            variables, multiplier = group
            if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not (
                math.isfinite(multiplier) and multiplier > 0
            ):
                raise ValueError(
                    f"Argument `groups`: the multiplier of item {position} must be a positive number; received {multiplier!r}."
                )
            for variable in variables:
                if id(variable) in self._multipliers:
                    raise ValueError(f"Argument `groups`: variable {variable.path!r} appears in two groups.")
                self._multipliers[id(variable)] = (variable, float(multiplier))

    def multiplier(self, variable) -> float:
        """The learning-rate multiplier of ``variable`` (1.0 when in no group)."""
        return self._multipliers.get(id(variable), (None, 1.0))[1]

    def with_aliases(self, pairs):
        """A copy in which the ``alias`` of each ``(original, alias)`` pair moves with ``original``'s multiplier
        (the source domain's copy of a batch-norm scale trains at the rate of the layer's own)."""
        groups = [([variable], multiplier) for variable, multiplier in self._multipliers.values()]
        groups += [([alias], self._multipliers[id(original)][1]) for original, alias in pairs
                   if id(original) in self._multipliers and id(alias) not in self._multipliers]
        return ParameterGroups(groups)

    def key(self) -> tuple:
        """A hashable description (for deciding when a train function must be retraced)."""
        return tuple(sorted((variable.path, m) for variable, m in self._multipliers.values() if m != 1.0))

    def apply(self, optimizer, gradients, variables):
        """One ``optimizer.apply(gradients, variables)`` step with the multipliers applied to its updates."""
        scaled = [(v, self.multiplier(v)) for v in variables if self.multiplier(v) != 1.0]
        before = [tf.identity(v) for v, _ in scaled]
        optimizer.apply(gradients, variables)
        for (variable, multiplier), old in zip(scaled, before):
            variable.assign(old + multiplier * (variable - old))
