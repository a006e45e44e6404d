"""Batch-norm statistics: one definition of their re-estimation (AdaBN, precise BN), shared by
``DomainAdapter.fit``, :func:`adapt_batchnorm` and test-time adaptation."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from domadapt.data import check_image_shape, without_labels

__all__ = ["MIN_REESTIMATION_IMAGES", "adapt_batchnorm", "batchnorm_layers", "reestimate_batchnorm_statistics"]

# Below this many images the estimate is noisy enough to cost accuracy; reestimate_batchnorm_statistics
# warns. Measured on foggy 8x8 digits (a 2-BN-layer CNN; source-only and MMD, 3 seeds each, 3 draws of
# the images, 448 held-out target images), accuracy against re-estimating on all 450 target images:
# 16 images -4.3 points, 32 -0.9, 64 -0.5 (down to -1.6), 128 +0.2 (within +-0.6), 256 -0.3. Deeper
# networks, whose last BN layers see few values per image, may need more; not measured.
MIN_REESTIMATION_IMAGES = 128
_MISSING = object()


def batchnorm_layers(model):
    """Every ``keras.layers.BatchNormalization`` in ``model``, nested models included (in the order Keras
    tracks them, which need not be call order)."""
    return [layer for layer in model._flatten_layers(include_self=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _batches(images, batch_size, image_rank, max_images=None):
    """Batches of images from an array or a (batched or unbatched) dataset of images or (images, ...).

    An array is read in a seeded random order (and, above ``max_images``, as a seeded random subset): arrays
    often come sorted by class (folder readers list class by class), and batches of one class would give
    the statistics of the first classes only, and within-class variances. Datasets are read in their order.
    """
    if isinstance(images, tf.data.Dataset):
        if isinstance(images.element_spec, tuple):
            images = images.map(lambda *element: element[0])
        if images.element_spec.shape.rank == image_rank:
            images = images.batch(batch_size)
        yield from images
        return
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)  # tensors and lists: indexed by an index array below
    order = np.random.default_rng(0).permutation(len(images))[:max_images]
    for start in range(0, len(order), batch_size):
        yield images[np.sort(order[start : start + batch_size])]


def _check_images(images, argument, model):
    """``images`` checked against ``model``'s input (shape, numbers) before any statistic changes: an array
    (``(images, labels)`` loses its labels) or a dataset of images or ``(images, ...)``, batched or not."""
    try:
        expected = tuple(model.input_shape[1:])
    except (AttributeError, TypeError, ValueError) as error:
        raise TypeError(f"Argument `model` must be a built Keras model with one image input; received a "
                        f"{type(model).__name__} without an input shape ({error}).") from error
    if not all(d is None or isinstance(d, int) for d in expected):
        raise TypeError(f"Argument `model` must have one image input; its input shape is {model.input_shape}.")
    image_rank = len(expected)
    if isinstance(images, tf.data.Dataset):
        spec = images.element_spec[0] if isinstance(images.element_spec, tuple) else images.element_spec
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"Argument `{argument}`: expected a dataset of images or (images, ...) tuples; received "
                            f"elements {images.element_spec}.")
        shape = spec.shape
        if shape.rank is not None and shape.rank not in (image_rank, image_rank + 1):
            raise ValueError(f"Argument `{argument}`: dataset elements have shape {shape}; the model takes images of "
                             f"shape {expected}, one per element or batched.")
        return images
    images = without_labels(images, image_rank)  # (images, labels): labels are never read
    images = np.asarray(images)
    if images.ndim == 0 or len(images) == 0:
        raise ValueError(f"Argument `{argument}` is empty: expected an array or dataset of images; received "
                         f"shape {images.shape}.")
    if images.dtype.kind not in "biuf":
        raise TypeError(f"Argument `{argument}`: expected numeric images; received an array of dtype {images.dtype}.")
    check_image_shape(images, argument, expected)
    return images


def reestimate(model, layers, images, *, batch_size=64, max_images=None, argument="images"):
    """Re-estimate the moving statistics of ``layers`` (BN layers of ``model``) on ``images``; returns images used.

    The model runs in inference mode (dropout, noise and augmentation layers off)
    except ``layers``, which normalise with their batch statistics; each one's
    ``moving_mean``/``moving_variance`` becomes the image-weighted mean of its batch
    statistics (momentum seen / (seen + n) per batch of n). Trainable flags, momenta
    and every other weight are left as they were. A batch with a non-finite value is
    a ``ValueError`` naming ``argument``; on any error the statistics are left as they
    were before the call (not half re-estimated).
    """
    if not layers:
        return 0
    image_rank = len(model.input_shape) - 1
    saved = [(layer, layer.trainable, layer.momentum, layer.__dict__.get("call", _MISSING)) for layer in layers]
    statistics = [variable for layer in layers for variable in (layer.moving_mean, layer.moving_variance)]
    before = [keras.ops.convert_to_numpy(variable) for variable in statistics]
    seen = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BN layer runs in inference mode even when training=True
            object.__setattr__(layer, "call", _in_training_mode(layer.call))
        for batch in _batches(images, batch_size, image_rank, max_images):
            if max_images is not None and seen >= max_images:
                break
            batch = tf.cast(batch, tf.float32)
            if max_images is not None:
                batch = batch[: max_images - seen]
            count = int(batch.shape[0])
            if count == 0:
                continue
            # One NaN image would set every statistic to NaN, and every later output with it.
            if not bool(tf.reduce_all(tf.math.is_finite(batch))):
                raise ValueError(f"Argument `{argument}` holds non-finite values (NaN or inf) in the images "
                                 f"{seen} to {seen + count - 1} read; batch-norm statistics were left unchanged.")
            for layer in layers:
                layer.momentum = seen / (seen + count)
            model(batch, training=False)
            seen += count
    except BaseException:
        for variable, value in zip(statistics, before):
            variable.assign(value)
        raise
    finally:
        for layer, trainable, momentum, call in saved:
            layer.trainable = trainable
            layer.momentum = momentum
            if call is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", call)
    return seen


def _in_training_mode(call):
    def call_with_batch_statistics(*args, **kwargs):
        kwargs["training"] = True
        return call(*args, **kwargs)

    return call_with_batch_statistics


def reestimate_batchnorm_statistics(model, images, *, batch_size=64, max_images=None):
    """Set every batch-norm layer's moving statistics to its statistics on ``images``, with the current weights.

    What the model normalises with at inference then matches ``images`` (a domain's
    unlabeled images: AdaBN, Li et al. 2016) and the final weights (precise BN, Wu &
    Johnson 2021) instead of the moving averages collected while the weights still
    changed. Only ``moving_mean`` and ``moving_variance`` change: each becomes the
    mean of the layer's batch statistics over ``images`` weighted by batch size
    (for the variance: the mean of the batch variances, what the layer normalises
    with in training and what Keras's moving average estimates; for batches of B
    random images about (B - 1) / B of the images' overall variance),
    every BN layer included (nested in keras.applications models, and frozen ones);
    the model runs in inference mode otherwise (dropout and augmentation layers
    off). Fewer than ``MIN_REESTIMATION_IMAGES`` images gives a warning.

    Args:
        model: a Keras model with BatchNormalization layers (modified in place).
        images: an array of images, ``(images, labels)`` (labels unused), or a
            dataset of images or ``(images, ...)``, batched or not. Arrays are read
            in a seeded random order, so class-sorted arrays give batches of mixed
            classes; datasets in their own order (shuffle a class-sorted one).
        batch_size: images per forward pass (for arrays and unbatched datasets).
        max_images: at most this many images (``None``: all; needed for an endless
            dataset): a seeded random subset of an array, the first ones of a dataset.

    Returns:
        The number of images used.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    used = da.reestimate_batchnorm_statistics(model, np.random.rand(512, 4) + 3.0)
    print(used, model.layers[0].moving_mean.numpy())  # 512, about 3.5
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a keras.Model; received {type(model).__name__}.")
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("Argument `model` has no BatchNormalization layers: there are no statistics to re-estimate.")
    images = _check_images(images, "images", model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be a positive integer; received batch_size={batch_size!r}.")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer))
                                   or max_images < 1):
        raise ValueError(f"Argument `max_images` must be None or a positive integer; received max_images={max_images!r}.")
    check_not_endless(images, "images", max_images)
    used = reestimate(model, layers, images, batch_size=int(batch_size), max_images=max_images)
    warn_if_few(used, "images")
    return used


def check_not_endless(images, argument, max_images=None):
    """A ValueError naming ``argument`` for an endless dataset (``repeat()``) read without a ``max_images`` bound:
    every image would be read, and the call would never return."""
    if (max_images is None and isinstance(images, tf.data.Dataset)
            and int(images.cardinality()) == int(tf.data.INFINITE_CARDINALITY)):
        raise ValueError(f"Argument `{argument}` is an endless tf.data.Dataset (it repeats): reading all of it never "
                         f"ends. Pass `{argument}.take(n)` or a `max_images` bound.")


def warn_if_few(used, what):
    if used < MIN_REESTIMATION_IMAGES:
        warnings.warn(
            f"Batch-norm statistics were re-estimated on {used} {what}; below {MIN_REESTIMATION_IMAGES} the estimate "
            "is noisy enough to cost accuracy. Pass more unlabeled images if you have them.", stacklevel=3)


def _accuracy(model, images, labels, batch_size):
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(labels).reshape(-1)))


def adapt_batchnorm(model, target_images, labels=None, *, batch_size=64):
    """Re-estimate every batch-norm layer's moving statistics on target images, in place (AdaBN, Li et al. 2016).

    :func:`reestimate_batchnorm_statistics` on the model (a ``DomainAdapter``'s
    classifier): no gradient step, only ``moving_mean``/``moving_variance`` change.
    A ``DomainAdapter`` with ``bn_mode="domain"`` (the default) already does this at
    the end of ``fit``; this function is for other models.

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
    da.adapt_batchnorm(model, np.random.rand(256, 4) + 3.0)
    ```
    """
    model = getattr(model, "classifier", model)
    if not batchnorm_layers(model):
        raise ValueError("Argument `model` has no BatchNormalization layers: there are no statistics to adapt.")
    target_images = _check_images(target_images, "target_images", model)
    if labels is not None and isinstance(target_images, tf.data.Dataset):
        raise ValueError("Pass `labels` with an image array, not with a dataset.")
    before = _accuracy(model, target_images, labels, batch_size) if labels is not None else None
    reestimate_batchnorm_statistics(model, target_images, batch_size=batch_size)
    if labels is None:
        return None
    return _accuracy(model, target_images, labels, batch_size) - before
