"""AdaBN: re-estimate batch-norm statistics on target data."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def batchnorm_layers(model):
    return [layer for layer in model._flatten_layers(include_self=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _batches(images, batch_size, image_rank):
    """Batches of images from an array or a (batched or unbatched) dataset of images or (images, ...)."""
    if isinstance(images, tf.data.Dataset):
        if isinstance(images.element_spec, tuple):
            images = images.map(lambda *element: element[0])
        if images.element_spec.shape.rank == image_rank:
            images = images.batch(batch_size)
        yield from images
        return
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _accuracy(model, images, labels, batch_size):
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(labels).reshape(-1)))


def adapt_batchnorm(model, target_images, labels=None, *, batch_size=64):
    """Re-estimate every batch-norm layer's moving statistics on target images (AdaBN, Li et al. 2016).

    No gradient step is taken and no other weight changes: each BatchNormalization
    layer's ``moving_mean`` and ``moving_variance`` become the average of its batch
    statistics over ``target_images`` (a cumulative average, momentum k/(k+1) at
    batch k), so normalisation matches the target domain at inference.

    Args:
        model: a Keras model, or a ``da.DomainAdapter`` (its classifier is used).
        target_images: array or dataset of target images.
        labels: optional target labels; then the change in accuracy is returned.
        batch_size: images per forward pass (for arrays).

    Returns:
        ``accuracy_after - accuracy_before`` when ``labels`` is given, else ``None``.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    da.adapt_batchnorm(model, np.random.rand(64, 4) + 3.0)
    ```
    """
    model = getattr(model, "classifier", model)
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("Argument `model` has no BatchNormalization layers: there are no statistics to adapt.")
    if not isinstance(target_images, tf.data.Dataset):
        target_images = np.asarray(target_images)
        if len(target_images) == 0:
            raise ValueError("Argument `target_images` is empty.")
    if labels is not None and isinstance(target_images, tf.data.Dataset):
        raise ValueError("Pass `labels` with an image array, not with a dataset.")
    before = _accuracy(model, target_images, labels, batch_size) if labels is not None else None
    saved = [(layer, layer.trainable, layer.momentum) for layer in layers]
    try:
        for layer in layers:
            # A frozen BN layer runs in inference mode even when training=True.
            layer.trainable = True
        for index, batch in enumerate(_batches(target_images, batch_size, len(model.input_shape) - 1)):
            for layer in layers:
                layer.momentum = index / (index + 1.0)
            model(tf.convert_to_tensor(batch, tf.float32), training=True)
    finally:
        for layer, trainable, momentum in saved:
            layer.trainable = trainable
            layer.momentum = momentum
    if labels is None:
        return None
    return _accuracy(model, target_images, labels, batch_size) - before
