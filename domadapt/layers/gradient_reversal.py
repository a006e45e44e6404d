"""The gradient reversal layer (Ganin & Lempitsky 2015)."""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf
from keras import ops


@tf.custom_gradient
def _reverse_gradient(inputs, scale):
    def gradient(upstream):
        return -ops.cast(scale, upstream.dtype) * upstream, None

    return tf.identity(inputs), gradient


# Registered apart from the DANN strategy of the same class name.
@keras.saving.register_keras_serializable(package="domadapt.layers")
class GradientReversal(keras.layers.Layer):
    """Identity on the forward pass; multiplies the gradient by ``-scale`` on the backward pass.

    Placed between a feature extractor and a domain discriminator, it lets one
    optimizer step train the discriminator to tell domains apart while pushing
    the features to make that impossible (DANN, Ganin et al. 2016).

    ``scale`` (lambda) lives in a non-trainable weight: assign a new value with
    ``layer.scale.assign(x)`` at any time, also during training; the compiled graph
    reads it each step, so nothing is retraced.

    Args:
        scale: lambda, a finite number (usually in [0, 1]).

    Example:

    ```python
    import tensorflow as tf, domadapt as da
    layer = da.layers.GradientReversal(scale=0.5)
    x = tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    print(y.numpy(), tape.gradient(y, x).numpy())  # [[1. 2.]] [[-0.5 -0.5]]
    ```
    """

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"Argument `scale` must be a finite number; received scale={scale!r}.")
        self.initial_scale = float(scale)
        self.scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_scale),
            trainable=False,
            dtype="float32",
            name="scale",
        )
        self.built = True

    def call(self, inputs):
        return _reverse_gradient(inputs, ops.convert_to_tensor(self.scale))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.initial_scale}
