"""Pooled backbone features of two image sets."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import tensorflow as tf

from domadapt.data import check_positive_int, scale_mismatch

_POOL = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D, 5: keras.layers.GlobalAveragePooling3D}


def pooled_model(backbone):
    """A model mapping images to ``(batch, d)`` features: the backbone, globally average-pooled."""
    backbone = getattr(backbone, "feature_extractor", backbone)  # a DomainAdapter gives its extractor
    if not isinstance(backbone, keras.layers.Layer):
        raise TypeError(f"Argument `backbone` must be a Keras model or a DomainAdapter; received {type(backbone).__name__}.")
    try:
        shape = backbone.input_shape
    except (AttributeError, ValueError):
        raise ValueError("Argument `backbone` has no defined input shape; build it with keras.Input first.") from None
    if isinstance(shape, list):
        raise ValueError("Argument `backbone` must have one image input.")
    rank = len(backbone.output_shape)
    if rank == 2:
        return backbone
    if rank not in _POOL:
        raise ValueError(f"The backbone's output shape {backbone.output_shape} cannot be pooled to a vector.")
    inputs = keras.Input(shape[1:])
    return keras.Model(inputs, _POOL[rank]()(backbone(inputs)))


def as_images(images, name, image_shape, batch_size=256):
    if isinstance(images, tf.data.Dataset):
        # Datasets of (images, labels, ...) give their images; unbatched ones
        # (e.g. da.datasets.image_folder(...).dataset) are batched here, by `batch_size`.
        spec = images.element_spec
        if isinstance(spec, tuple) and spec:
            spec = spec[0]
            images = images.map(lambda *element: element[0])
        if not isinstance(spec, tf.TensorSpec) or not (spec.dtype.is_floating or spec.dtype.is_integer):
            raise TypeError(f"Argument `{name}`: a dataset must yield numeric image tensors (or (images, labels) "
                            f"pairs); its elements are {spec}.")
        shape = spec.shape
        per_image = shape if shape.rank == len(image_shape) else shape[1:]
        if per_image.rank != len(image_shape) or any(
                e is not None and g is not None and e != g for e, g in zip(image_shape, per_image.as_list())):
            raise ValueError(f"Argument `{name}`: expected images of shape {tuple(image_shape)}, batched or not; the "
                             f"dataset yields elements of shape {tuple(shape.as_list())}.")
        if shape.rank == len(image_shape):
            images = images.batch(batch_size)
        return images
    if hasattr(images, "numpy") and not isinstance(images, np.ndarray):
        images = images.numpy()
    images = np.asarray(images)
    if images.dtype == object or not np.issubdtype(images.dtype, np.number):
        raise TypeError(f"Argument `{name}`: expected a numeric image array; received dtype {images.dtype}.")
    if images.ndim != len(image_shape) + 1 or any(
        e is not None and a != e for a, e in zip(images.shape[1:], image_shape)
    ):
        raise ValueError(f"Argument `{name}`: expected images of shape (N,) + {tuple(image_shape)}; received {images.shape}.")
    if len(images) < 2:
        raise ValueError(f"Argument `{name}`: needs at least 2 images; received {len(images)}.")
    return images  # cast per batch (or after subsampling) by the callers: a float32 copy of all would be 4x uint8


def check_same_scale(images) -> None:
    """A ValueError when two image sets (``{argument: array, or None}``) look scaled ~255x apart, [0, 1] and
    [0, 255]: training refuses them with this message, and a gap measured between them is the scale, huge and
    meaningless. Judged on up to 256 evenly spaced images of each; only on images (arrays of rank >= 3: a
    gain between two sets of sensor features is a shift to measure, not a mistake).
    """
    samples = {}
    for name, value in images.items():
        if value is None or np.ndim(value) < 3 or not len(value):
            continue
        samples[name] = value[np.unique(np.linspace(0, len(value) - 1, min(256, len(value))).round().astype(int))]
    mismatch = scale_mismatch(samples, lambda name: f"`{name}`") if len(samples) == 2 else None
    if mismatch:
        raise ValueError("Arguments " + mismatch)


def features(backbone, source_images, target_images, *, batch_size=256, verbose="auto"):
    """Pooled features of source and target images, batched, with Keras' progress bar.

    Args:
        backbone: a Keras model (feature maps are global-average pooled) or a
            ``da.DomainAdapter`` (its feature extractor).
        source_images, target_images: arrays (N, H, W, C) or datasets of image batches,
            scaled alike: one in [0, 1] and the other in [0, 255] is a ``ValueError``.
        batch_size: images per forward pass.

    Returns:
        ``(source_features, target_features)``: float32 arrays of shape (N, d).

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    fs, ft = da.gap.features(backbone, np.random.rand(10, 8, 8, 3), np.random.rand(12, 8, 8, 3), verbose=0)
    ```
    """
    check_positive_int(batch_size, "batch_size")
    if verbose != "auto" and (isinstance(verbose, bool) or verbose not in (0, 1, 2)):
        raise ValueError(f"Argument `verbose` must be 'auto', 0, 1 or 2 (as in Keras); received verbose={verbose!r}.")
    model = pooled_model(backbone)
    image_shape = tuple(model.input_shape[1:])
    # One trace for every batch size (the last batch is usually smaller).
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)])
    checked = {name: as_images(images, name, image_shape, batch_size)
               for name, images in (("source_images", source_images), ("target_images", target_images))}
    # A dataset is read once: its first batch is judged for scale, then fed first (a one-shot generator
    # cannot restart, and a shuffle buffer would fill twice).
    streams, firsts = {}, {}
    for name, images in checked.items():
        if isinstance(images, tf.data.Dataset):
            streams[name] = iter(images)
            first = next(streams[name], None)
            firsts[name] = None if first is None else first.numpy()
        else:
            firsts[name] = images
    check_same_scale(firsts)
    outputs = []
    for name, images in checked.items():
        if isinstance(images, tf.data.Dataset):
            batches = itertools.chain([] if firsts[name] is None else [firsts[name]], streams[name])
            total = None
        else:
            batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
            total = -(-len(images) // batch_size)
        progress = keras.utils.Progbar(total, verbose=1 if verbose == "auto" else int(verbose), unit_name="batch")
        pieces = []
        for index, batch in enumerate(batches):
            pieces.append(forward(tf.cast(batch, tf.float32)).numpy())
            progress.update(index + 1)
        if not pieces:  # an empty dataset (an array holds at least 2 images, checked above)
            raise ValueError(f"Argument `{name}`: the dataset gave no images.")
        outputs.append(np.concatenate(pieces).astype("float32"))
    return outputs[0], outputs[1]
