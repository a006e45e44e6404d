"""Pairing labeled source data with unlabeled target data for training, and input checks.

:func:`pair` is what ``DomainAdapter.fit`` trains on; call it directly to write your
own training loop. Everything here runs before a training graph is traced, so bad
input is reported as a ``ValueError``/``TypeError`` that names the argument, never
as a graph error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from domadapt._checks import check_seed  # noqa: F401 (re-exported for the public modules: one rule for every seed)

__all__ = ["PairedData", "pair"]

# Marker put in in-pipeline assertion messages so `fit` can recognise and re-raise them.
_PIPELINE_ERROR_MARKER = "domadapt-input-error:"


@dataclass
class _Stream:
    """One input stream, unbatched, before shuffling and pairing.

    ``images``/``labels`` hold numpy arrays for array input; ``dataset`` holds an
    unbatched dataset of ``images`` or ``(images, labels)`` otherwise.
    """

    argument: str
    labeled: bool
    size: int | None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    dataset: tf.data.Dataset | None = None
    user_batch_size: int | None = None
    user_num_batches: int | None = None
    # Float images of a dataset are checked for NaN/inf per batch as they stream.
    check_finite: bool = False
    # A dataset's first element's images, for the cross-stream checks before training.
    first_images: np.ndarray | None = None


def describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, tf.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype.name}"
    if isinstance(value, tf.data.Dataset):
        return f"a tf.data.Dataset with element_spec {value.element_spec}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:200]


def to_numpy(value, argument: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = np.asarray(value.numpy())
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        hint = (" A list or tuple is read as one array: np.concatenate parts of different lengths first."
                if isinstance(value, (list, tuple)) else "")
        raise TypeError(f"Argument `{argument}`: could not be read as an array ({error}).{hint}") from None
    if array.dtype == object or np.issubdtype(array.dtype, np.complexfloating) or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        # Name what was passed, not the object array numpy made of it (a generator, a folder object, None).
        received = describe(value) if array.dtype == object else describe(array)
        hint = ""
        if hasattr(value, "dataset") and isinstance(getattr(value, "dataset"), tf.data.Dataset):
            hint = " Pass its `.dataset` (a tf.data.Dataset)."
        elif hasattr(value, "__next__") or hasattr(value, "send"):
            hint = " Wrap a generator in tf.data.Dataset.from_generator(...) or pass an array."
        raise TypeError(f"Argument `{argument}`: expected a real numeric array; received {received}.{hint}")
    return array


def _shape_matches(actual, expected) -> bool:
    if len(actual) != len(expected):
        return False
    return all(e is None or a is None or int(a) == int(e) for a, e in zip(actual, expected))


def check_image_shape(images: np.ndarray, argument: str, image_shape: tuple) -> None:
    """``images`` must be ``(num_images,) + image_shape`` (``None``: any size there), else a ValueError."""
    expected = "(num_images, " + ", ".join("?" if d is None else str(d) for d in image_shape) + ")"
    if images.ndim != len(image_shape) + 1 or not _shape_matches(images.shape[1:], image_shape):
        raise ValueError(
            f"Argument `{argument}`: expected images of shape {expected} to match the "
            f"backbone's input; received shape {images.shape}."
        )


def check_finite_images(images: np.ndarray, argument: str) -> None:
    """A ValueError naming the first image with a NaN or inf value, if any (float arrays)."""
    if np.issubdtype(images.dtype, np.floating) and images.size:
        finite = np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"Argument `{argument}`: image {bad} (and {int((~finite).sum()) - 1} others) "
                "contains NaN or inf values."
            )


def check_images(images: np.ndarray, argument: str, image_shape: tuple) -> None:
    check_image_shape(images, argument, image_shape)
    if images.shape[0] == 0:
        raise ValueError(f"Argument `{argument}`: received no images (an empty array).")
    check_finite_images(images, argument)


def _check_labels(labels: np.ndarray, argument: str, num_images: int, num_classes: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"Argument `{argument}`: expected integer class labels of shape ({num_images},) "
            f"(sparse labels, not one-hot); received shape {labels.shape}."
        )
    if labels.shape[0] != num_images:
        raise ValueError(
            f"Argument `{argument}`: {num_images} images but {labels.shape[0]} labels; "
            "expected one label per image."
        )
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(
                f"Argument `{argument}`: labels must be whole class indices; received "
                "non-integer or non-finite float labels."
            )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Argument `{argument}`: labels must be in [0, {num_classes - 1}] for "
            f"num_classes={num_classes}; received labels from {labels.min()} to {labels.max()}."
        )
    return labels.astype(np.int32)


def _split_element_spec(spec, labeled: bool, argument: str):
    """Return (image_spec, label_spec_or_None) from a dataset's element_spec."""
    if isinstance(spec, tf.TensorSpec):
        if labeled:
            raise ValueError(
                f"Argument `{argument}`: expected a dataset of (images, labels); received a "
                f"dataset of single tensors {spec}."
            )
        return spec, None
    if isinstance(spec, tuple) and len(spec) in (2, 3) and all(isinstance(s, tf.TensorSpec) for s in spec):
        # (images, labels, sample_weights) for training: the weights would be dropped silently (evaluation keeps
        # accepting them, as Keras' evaluate does).
        if labeled and len(spec) == 3 and argument in ("source", "target_labeled"):
            raise ValueError(
                f"Argument `{argument}`: a dataset of (images, labels, sample_weights); DomainAdapter.fit does not "
                "use sample weights (as fit(sample_weight=) is refused): map the dataset to (images, labels), or "
                "weigh classes with a strategy's class_weights=."
            )
        return spec[0], spec[1]
    raise ValueError(
        f"Argument `{argument}`: expected a dataset of "
        f"{'(images, labels)' if labeled else 'images or (images, labels)'} tensors; "
        f"received element_spec {spec}."
    )


def _make_stream(value, *, argument: str, labeled: bool, image_shape: tuple, num_classes: int) -> _Stream:
    """Check ``value`` and wrap it as a :class:`_Stream`.

    Labeled input: ``(images, labels)`` arrays or a dataset of ``(images, labels)``.
    Unlabeled input: an image array, ``(images, labels)`` (labels dropped) or a
    dataset of images or ``(images, labels, ...)`` (everything after images dropped).
    """
    if isinstance(value, tf.data.Dataset):
        return _dataset_stream(value, argument, labeled, image_shape, num_classes)
    if labeled:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(
                f"Argument `{argument}`: expected a tuple (images, labels) of arrays or a "
                f"tf.data.Dataset of (images, labels); received {describe(value)}."
            )
        images = to_numpy(value[0], f"{argument}[0] (images)")
        labels = to_numpy(value[1], f"{argument}[1] (labels)")
        check_images(images, f"{argument}[0] (images)", image_shape)
        labels = _check_labels(labels, f"{argument}[1] (labels)", images.shape[0], num_classes)
        return _Stream(argument, True, images.shape[0], images=images, labels=labels)
    if isinstance(value, (tuple, list)) and len(value) == 2 and (value[1] is None
                                                                   or _looks_like_labels(value[1], value[0])):
        value = value[0]  # (images, labels): the labels of an unlabeled stream are never used
    images = to_numpy(value, argument)
    check_images(images, argument, image_shape)
    return _Stream(argument, False, images.shape[0], images=images)


def without_labels(value, image_rank=None):
    """``value[0]`` when ``value`` is an ``(images, labels)`` pair, else ``value`` unchanged: a list of two
    images stays two images.

    A pair: two arrays with one label (a class, a value, a mask) per image. With ``image_rank`` (the model's
    input rank without the batch) the first must hold images of that rank; without it, the labels must have
    fewer dimensions than the images (class labels, one-hot rows, regression targets, masks of HxW images),
    where a list of two images has as many.
    """
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        return value
    try:
        first, second = np.shape(value[0]), np.shape(value[1])
    except (TypeError, ValueError):  # ragged: not two arrays
        return value
    if not first or not second or first[0] != second[0]:
        return value
    if image_rank is not None:
        return value[0] if len(first) == image_rank + 1 else value
    return value[0] if len(second) < len(first) or _looks_like_labels(value[1], value[0]) else value


def _looks_like_labels(labels, images) -> bool:
    """Whether ``(images, labels)`` is a labeled pair: ``labels`` one per image, (N,) or (N, 1) or one-hot (N, K).
    Two image arrays (``[part_a, part_b]``) or two single images are not."""
    try:
        labels, image_shape = np.shape(labels), np.shape(images)
    except (TypeError, ValueError):
        return False
    return (len(labels) in (1, 2) and len(image_shape) >= 2 and labels[0] == image_shape[0]
            and labels[1:] != image_shape[1:])


def _dataset_stream(dataset, argument, labeled, image_shape, num_classes) -> _Stream:
    given = dataset  # as the user built it: its batching is what _batched_size reads
    image_spec, label_spec = _split_element_spec(dataset.element_spec, labeled, argument)
    rank = len(image_spec.shape) if image_spec.shape.rank is not None else None
    if rank == len(image_shape) + 1:
        batched = True
    elif rank == len(image_shape):
        batched = False
    else:
        raise ValueError(
            f"Argument `{argument}`: dataset images have shape {image_spec.shape}; expected "
            f"{image_shape} per image (unbatched) or (batch,) + {image_shape} (batched)."
        )
    per_image = image_spec.shape[1:] if batched else image_spec.shape
    if not _shape_matches(tuple(per_image), image_shape):
        raise ValueError(
            f"Argument `{argument}`: dataset images have shape {tuple(per_image)} per image; "
            f"the backbone expects {image_shape}."
        )
    if not (image_spec.dtype.is_floating or image_spec.dtype.is_integer):
        raise TypeError(
            f"Argument `{argument}`: dataset images must be numeric; received dtype {image_spec.dtype.name}."
        )
    if labeled and not label_spec.dtype.is_integer and not label_spec.dtype.is_floating:
        raise TypeError(
            f"Argument `{argument}`: labels must be integer class indices; received dtype {label_spec.dtype.name}."
        )

    # Keep just what the stream needs: target labels are dropped here, at the very
    # start, so nothing downstream can ever see them.
    if labeled:
        dataset = dataset.map(lambda *element: (element[0], element[1]))
    elif label_spec is not None:
        dataset = dataset.map(lambda *element: element[0])

    # Peek at one element to catch empty datasets and wrong values before training.
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(f"Argument `{argument}`: the dataset is empty.")
    first_images = first[0] if labeled else first
    first_images = first_images.numpy()
    if not batched:
        first_images = first_images[None]
    check_images(first_images, f"{argument} (first element)", image_shape)
    if labeled:
        first_labels = np.reshape(first[1].numpy(), (first_images.shape[0], -1))
        if first_labels.shape[1] != 1:
            raise ValueError(
                f"Argument `{argument}`: expected one integer label per image (sparse labels); "
                f"received labels of shape {tuple(first[1].shape)}."
            )
        _check_labels(first_labels[:, 0], f"{argument} (labels of the first element)", first_images.shape[0], num_classes)

    cardinality = int(dataset.cardinality())
    user_batch_size = int(first_images.shape[0]) if batched else None
    size = None
    num_batches = None
    if cardinality >= 0:
        if batched:
            num_batches = cardinality
            size = _batched_size(given, cardinality, user_batch_size, image_spec.shape[0])
        else:
            size = cardinality
    if batched:
        dataset = dataset.unbatch()
    if any(d is None and e is not None for d, e in zip(per_image, image_shape)) and all(
            e is not None for e in image_shape):
        # A dataset declared with unknown sizes (a generator's (None, None, 1)) was checked on its first element
        # only; a later image of another size would stop training with a raw batching error. (A backbone that
        # takes any size may see images of several sizes, one per step.)
        expected = tuple(int(d) for d in image_shape)
        dataset = dataset.map(lambda *element: (_same_shape(element[0], expected, argument), *element[1:])
                              if labeled else _same_shape(element[0], expected, argument))
    if labeled:
        dataset = dataset.map(lambda images, labels: (images, _checked_labels(labels, num_classes, argument)))
    return _Stream(argument, labeled, size, dataset=dataset, user_batch_size=user_batch_size,
                  user_num_batches=num_batches, check_finite=image_spec.dtype.is_floating,
                  first_images=first_images)


# Datasets whose random access (tf.data.experimental.at) reads only the elements asked for: the last batch of a
# pipeline made of these costs one batch. Others (cache() fills itself whole, a generator, interleave) are not
# asked. Names of tf.data's classes; should they change, sizes fall back to the estimate, never to an error.
_CHEAP_RANDOM_ACCESS = {"_TensorSliceDataset", "_TensorDataset", "_RangeDataset", "_ZipDataset", "_MapDataset",
                        "_ParallelMapDataset", "_ShuffleDataset", "_TakeDataset", "_SkipDataset", "_PrefetchDataset",
                        "_OptionsDataset"}
_BATCHING = {"_BatchDataset", "_ParallelBatchDataset"}
# Above a batching, datasets that change neither the batches nor their number.
_TRANSPARENT = {"_PrefetchDataset", "_OptionsDataset"}
# Above the batching: datasets that keep the order of the batches, so the last index is the last (partial) batch.
_ORDER_KEEPING = {"_MapDataset", "_ParallelMapDataset", "_TakeDataset", "_SkipDataset", "_PrefetchDataset",
                  "_OptionsDataset"}


def _batched_size(dataset, cardinality, batch_size, static_batch_size):
    """The number of images of a batched dataset of ``cardinality`` batches of ``batch_size`` (its first's).

    ``cardinality * batch_size`` counts the last, partial batch of ``.batch()`` as full (1000 images in
    batches of 64 are not 1024); the size sets the steps of an epoch of another batch size and the reported
    sizes. A static batch size (``drop_remainder=True``) has no partial batch. A dataset that ends in
    ``.batch()`` (then perhaps ``prefetch``/``with_options``) holds what it batches, when that count is known
    (``cache()``, ``shard()`` and generators with ``assert_cardinality`` included). Otherwise (a map after the
    batching) the last batch is read by random access, where the pipeline reads only that batch
    (:data:`_CHEAP_RANDOM_ACCESS`, batches in order); elsewhere (``padded_batch``, batches shuffled or
    repeated, an unknown count) the estimate ``cardinality * batch_size`` stays: reading the last batch there
    may read the whole dataset.
    """
    estimate = cardinality * batch_size
    if static_batch_size is not None or cardinality < 1:
        return estimate
    try:
        # The common case, `.batch(n)` (parallel or not; then prefetch/options): what it batches, counted.
        batching = dataset
        while type(batching).__name__ in _TRANSPARENT and len(batching._inputs()) == 1:
            batching = batching._inputs()[0]
        if type(batching).__name__ in _BATCHING and len(batching._inputs()) == 1:
            images = int(batching._inputs()[0].cardinality())
            if images >= 0 and -(-images // batch_size) == cardinality:
                return images
        if not _last_batch_readable(dataset):
            return estimate
        # tf.data's own rewrites (a map and a batch fused into one) have no random access: off for this read.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        last = tf.nest.flatten(tf.data.experimental.at(dataset.with_options(options), cardinality - 1))[0]
    except (tf.errors.OpError, AttributeError, TypeError, ValueError, NotImplementedError):
        return estimate
    if not last.shape.rank or not 0 < last.shape[0] <= batch_size:
        return estimate
    return (cardinality - 1) * batch_size + int(last.shape[0])


def _last_batch_readable(dataset) -> bool:
    """Whether the last index of ``dataset`` is its last batch, read alone by random access: datasets that keep
    the batches' order above one ``batch()``, datasets of cheap random access below it."""
    name, inputs = type(dataset).__name__, dataset._inputs()
    if name in _BATCHING:
        return len(inputs) == 1 and _all_cheap(inputs[0])
    return name in _ORDER_KEEPING and len(inputs) == 1 and _last_batch_readable(inputs[0])


def _all_cheap(dataset) -> bool:
    """Whether every dataset of a pipeline is in :data:`_CHEAP_RANDOM_ACCESS`."""
    return type(dataset).__name__ in _CHEAP_RANDOM_ACCESS and all(_all_cheap(d) for d in dataset._inputs())


def _checked_images(images, argument):
    # As labels below: a NaN or inf image deeper in a dataset stops training with a
    # ValueError (a relu network would otherwise silently turn NaN into 0).
    finite = tf.reduce_all(tf.math.is_finite(images))
    with tf.control_dependencies([tf.debugging.Assert(finite, [f"{_PIPELINE_ERROR_MARKER} `{argument}` has an image with NaN or inf values"])]):
        return tf.identity(images)


def _same_shape(image, expected, argument):
    same = tf.reduce_all(tf.equal(tf.shape(image), tf.constant(expected, tf.int32)))
    message = (f"{_PIPELINE_ERROR_MARKER} `{argument}` has an image of another shape than its first image {expected} "
               "(images of one step must share one size; resize them in the dataset): shape")
    with tf.control_dependencies([tf.debugging.Assert(same, [message, tf.shape(image)])]):
        return tf.ensure_shape(tf.identity(image), expected)


def _checked_labels(labels, num_classes, argument):
    labels = tf.reshape(labels, [])
    if labels.dtype.is_floating:
        # Only the first element was checked for whole numbers on the host: the cast below would turn a later
        # 0.5 or -0.5 into class 0 without a word.
        whole = tf.logical_and(tf.math.is_finite(labels), tf.equal(labels, tf.round(labels)))
        with tf.control_dependencies([tf.debugging.Assert(whole, [
                f"{_PIPELINE_ERROR_MARKER} `{argument}` has a label that is not a whole class index:", labels])]):
            labels = tf.identity(labels)
    labels = tf.cast(labels, tf.int32)
    # Datasets are checked lazily: an out-of-range label deeper in the data stops
    # training with this message, which `fit` turns into a ValueError.
    tf.debugging.assert_greater_equal(labels, 0, message=f"{_PIPELINE_ERROR_MARKER} `{argument}` has a negative label")
    tf.debugging.assert_less(
        labels, num_classes, message=f"{_PIPELINE_ERROR_MARKER} `{argument}` has a label >= num_classes={num_classes}"
    )
    return labels


def _check_streams_agree(streams, image_shape) -> None:
    """Two silent mistakes, caught before training: domains scaled ~255x apart, images of different sizes.

    Source pixels in [0, 255] with target pixels in [0, 1] train without an error and
    the model sees the target as black images; with a ``(None, None, 3)`` backbone,
    target images of another size fail only inside the compiled step.
    """
    samples = {s.argument: s.images[:256] if s.images is not None else s.first_images for s in streams}
    samples = {argument: sample for argument, sample in samples.items() if sample is not None and sample.size}
    if any(d is None for d in image_shape):
        sizes = {argument: tuple(sample.shape[1:]) for argument, sample in samples.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                "Arguments " + ", ".join(f"`{a}`" for a in sizes) + ": images of one training step must share one "
                "size, even with a backbone that accepts any size; received "
                + ", ".join(f"`{a}` images of shape {shape}" for a, shape in sizes.items())
                + ". Resize them to one size (e.g. image_size= of the folder readers)."
            )
    mismatch = scale_mismatch(samples, lambda name: f"`{name}`")
    if mismatch:
        raise ValueError("Arguments " + mismatch)


def check_scale_like_source(source, value, argument) -> None:
    """``validation_data`` (or another labeled array pair) scaled ~255x apart from the source: a ValueError.
    Arrays only (a dataset's scale shows only while it is read)."""
    samples = {}
    for name, pair in (("source", source), (argument, value)):
        if isinstance(pair, (tuple, list)) and len(pair) == 2 and not isinstance(pair[0], tf.data.Dataset):
            try:
                samples[name] = np.asarray(pair[0][:256])
            except Exception:  # noqa: BLE001  (unreadable input is reported by the checks that read it)
                return
    mismatch = scale_mismatch(samples, lambda name: f"`{name}`")
    if mismatch:
        raise ValueError("Arguments " + mismatch)


def scale_mismatch(samples, quote=repr):
    """A sentence when two image samples ({name: array}) look scaled ~255x apart ([0, 1] and [0, 255]), else None."""
    scales = {name: float(np.max(np.abs(np.asarray(sample, np.float64)))) for name, sample in samples.items()
              if sample is not None and np.size(sample)}
    scales = {name: scale for name, scale in scales.items() if scale > 0}
    if len(scales) < 2:
        return None
    small, large = min(scales, key=scales.get), max(scales, key=scales.get)
    if not (scales[small] <= 1.5 and scales[large] > 10 and scales[large] >= 50 * scales[small]):
        return None
    return (f"{quote(small)} and {quote(large)} are scaled differently: {quote(small)} values reach "
            f"{scales[small]:.3g} (pixels in [0, 1]?) but {quote(large)} values reach {scales[large]:.3g} "
            f"(pixels in [0, 255]?), about {scales[large] / scales[small]:.0f}x apart. The model would see "
            f"one domain as nearly black images; scale both the same way (e.g. multiply {quote(small)} by 255).")


def _batched_forever(stream: _Stream, batch_size: int, *, shuffle: bool, seed: int | None, shuffle_buffer: int):
    """An endless dataset of full batches: shuffled, repeated, batched (remainder spills into the next pass)."""
    if stream.images is not None:
        # Arrays: shuffle indices, not images, then gather a whole batch at once.
        images = tf.constant(stream.images)
        labels = tf.constant(stream.labels) if stream.labeled else None
        if shuffle:
            # One stateless permutation per pass, a pure function of (seed, pass): the
            # same batches on one device, under tf.distribute's dataset rewrite (which
            # does not keep a seeded stateful shuffle's order) and after a restart.
            if seed is None:
                seed = int(np.random.randint(0, 2**31 - 1))
            size = stream.size
            indices = tf.data.Dataset.counter().map(
                lambda epoch: tf.random.experimental.stateless_shuffle(
                    tf.range(size, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
                )
            ).unbatch()
        else:
            indices = tf.data.Dataset.range(stream.size).repeat()
        indices = indices.batch(batch_size, drop_remainder=True)
        if stream.labeled:
            return indices.map(lambda index: (tf.gather(images, index), tf.gather(labels, index)))
        return indices.map(lambda index: tf.gather(images, index))
    dataset = stream.dataset
    if shuffle:
        buffer = shuffle_buffer if stream.size is None else max(1, min(shuffle_buffer, stream.size))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    batches = dataset.repeat().batch(batch_size, drop_remainder=True)
    if stream.check_finite:  # once per batch, not per image
        if stream.labeled:
            return batches.map(lambda images, labels: (_checked_images(images, stream.argument), labels))
        return batches.map(lambda images: _checked_images(images, stream.argument))
    return batches


@dataclass(frozen=True)
class PairedData:
    """The paired training stream returned by :func:`pair`, and what it is made of.

    Attributes:
        dataset: an endless ``tf.data.Dataset`` of dicts, one per training step:
            ``"step"`` (int64 scalar: the step's number in the run, counted from its
            first epoch, so it continues after a resume), ``"source"`` (``(images,
            labels)``), ``"target"`` (images; present when the target is paired) and
            ``"target_labeled"`` (``(images, labels)``; when given). Batches are full.
        steps_per_epoch: steps in one epoch (one pass over the source by default).
        batch_size, target_batch_size: images per step of the source and target streams.
        source_size, target_size, target_labeled_size: number of images of each
            input (``None`` when absent or unknown).
        target_images: the checked unlabeled target images (a numpy array, or an
            unbatched dataset of images, labels dropped), ``None`` without a target.
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    batch_size: int
    target_batch_size: int
    source_size: int | None
    target_size: int | None
    target_labeled_size: int | None
    target_images: np.ndarray | tf.data.Dataset | None


def pair(source, target=None, target_labeled=None, *, image_shape, num_classes, batch_size=None,
         target_batch_size=None, steps_per_epoch=None, shuffle=True, seed=None, shuffle_buffer=10_000,
         start_epoch=0, pair_target=True) -> PairedData:
    """Check labeled source, unlabeled target and optional labeled target data, and pair them per step.

    Each stream is shuffled (a fresh order every pass, a pure function of ``seed``
    and the pass for arrays), repeated and batched on its own: an epoch is one pass
    over the source; a shorter or longer target stream simply repeats. Target labels
    are dropped before anything else, so nothing downstream can see them.

    Args:
        source: ``(images, labels)`` arrays or a ``tf.data.Dataset`` of them, batched or not.
        target: unlabeled target images: an array, ``(images, labels)`` (labels
            dropped) or a dataset of images or ``(images, ...)``; or ``None``.
        target_labeled: optional few labeled target images ``(images, labels)``.
        image_shape: the shape of one image, e.g. ``(32, 32, 3)``.
        num_classes: labels must lie in ``[0, num_classes)``.
        batch_size: source images per step (default: a batched dataset's own batch
            size, else 32). ``target_batch_size``: target images per step (default:
            ``batch_size``); labeled target batches hold ``min(batch_size, size)``.
        steps_per_epoch: default one pass over the source (required when its size is unknown).
        shuffle, seed, shuffle_buffer: shuffling of each stream (datasets: with a
            buffer of ``shuffle_buffer`` images); stream ``i`` uses ``seed + i``.
        start_epoch: resume at this epoch: every stream starts where an
            uninterrupted run would be, and ``"step"`` counts from there.
        pair_target: ``False`` checks ``target`` and returns it in
            ``target_images`` without pairing it into the steps.

    Returns:
        A :class:`PairedData`.

    Example:

    ```python
    import numpy as np, domadapt as da
    xs, ys = np.random.rand(10, 4, 4, 1), np.arange(10) % 2
    paired = da.data.pair((xs, ys), np.random.rand(3, 4, 4, 1), image_shape=(4, 4, 1), num_classes=2, batch_size=5)
    for element in paired.dataset.take(paired.steps_per_epoch):
        source_images, source_labels = element["source"]
        target_images = element["target"]  # (5, 4, 4, 1): the short target repeats
    ```
    """
    # fit checks these itself; pair is public too, and passed them on to numpy and tf.data raw.
    seed, shuffle_buffer = check_seed(seed), check_positive_int(shuffle_buffer, "shuffle_buffer")
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, np.integer)) or start_epoch < 0:
        raise ValueError(f"Argument `start_epoch` must be a non-negative integer; received start_epoch={start_epoch!r}.")
    num_classes = check_positive_int(num_classes, "num_classes")
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, (tuple, list)) or not image_shape or any(
            side is not None and (isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1)
            for side in image_shape):
        raise ValueError("Argument `image_shape` must be the shape of one image, a tuple of positive integers (or "
                         f"None for a free size), e.g. (32, 32, 3); received image_shape={image_shape!r}.")
    shape = dict(image_shape=tuple(image_shape), num_classes=num_classes)
    source_stream = _make_stream(source, argument="source", labeled=True, **shape)
    target_stream = None if target is None else _make_stream(target, argument="target", labeled=False, **shape)
    labeled_stream = None
    if target_labeled is not None:
        labeled_stream = _make_stream(target_labeled, argument="target_labeled", labeled=True, **shape)
    return _paired_streams(source_stream, target_stream, labeled_stream, image_shape=shape["image_shape"],
                           batch_size=batch_size, target_batch_size=target_batch_size, steps_per_epoch=steps_per_epoch,
                           shuffle=shuffle, seed=seed, shuffle_buffer=shuffle_buffer, start_epoch=start_epoch,
                           pair_target=pair_target)


def _paired_streams(source_stream, target_stream, labeled_stream, *, image_shape, batch_size=None,
                    target_batch_size=None, steps_per_epoch=None, shuffle=True, seed=None, shuffle_buffer=10_000,
                    start_epoch=0, pair_target=True) -> PairedData:
    """:func:`pair` on checked streams: the labels' check is the caller's (class indices here, the
    task's labels in :func:`domadapt.tasks.pair`); the rest (agreement, batching, resuming) is shared."""
    _check_streams_agree([s for s in (source_stream, target_stream, labeled_stream) if s is not None], image_shape)
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True) or source_stream.user_batch_size or 32
    target_batch_size = check_positive_int(target_batch_size, "target_batch_size", allow_none=True) or batch_size
    steps_per_epoch = check_positive_int(steps_per_epoch, "steps_per_epoch", allow_none=True)
    if steps_per_epoch is None:
        steps_per_epoch = _steps_for(source_stream, batch_size)
        if steps_per_epoch is None:
            raise ValueError(
                "Argument `steps_per_epoch` is required: the size of the `source` dataset is unknown "
                "(e.g. after filter() or repeat())."
            )
    first_step = int(start_epoch) * steps_per_epoch

    def stream(s, size, offset):
        stream_seed = None if seed is None else int(seed) + offset
        batches = _batched_forever(s, size, shuffle=shuffle, seed=stream_seed, shuffle_buffer=shuffle_buffer)
        # For arrays, skipping only walks over indices (no images are gathered).
        return batches.skip(first_step) if first_step else batches

    streams = {"step": tf.data.Dataset.counter(start=first_step), "source": stream(source_stream, batch_size, 0)}
    if pair_target and target_stream is not None:
        streams["target"] = stream(target_stream, target_batch_size, 1)
    if labeled_stream is not None:
        streams["target_labeled"] = stream(labeled_stream, min(batch_size, labeled_stream.size or batch_size), 2)
    target_images = None
    if target_stream is not None:
        target_images = target_stream.images if target_stream.images is not None else target_stream.dataset
    return PairedData(
        dataset=tf.data.Dataset.zip(streams),
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        target_batch_size=target_batch_size,
        source_size=source_stream.size,
        target_size=None if target_stream is None else target_stream.size,
        target_labeled_size=None if labeled_stream is None else labeled_stream.size,
        target_images=target_images,
    )


def raise_input_error(error):
    """Re-raise a failed in-pipeline input check (bad label or NaN image deep in a dataset) as a ValueError."""
    message = str(getattr(error, "message", error))
    if _PIPELINE_ERROR_MARKER in message:
        detail = message.split(_PIPELINE_ERROR_MARKER, 1)[1].split("\n")[0].strip().replace("] [", " ").rstrip("]")
        raise ValueError(f"Bad input found while training: {detail}.") from None


def evaluation_dataset(value, *, argument: str, image_shape: tuple, num_classes: int, batch_size: int):
    """A finite batched dataset of ``(images, labels)`` for validation/evaluation."""
    stream = _make_stream(value, argument=argument, labeled=True, image_shape=image_shape, num_classes=num_classes)
    if stream.images is not None:
        dataset = tf.data.Dataset.from_tensor_slices((stream.images, stream.labels))
    else:
        dataset = stream.dataset
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _steps_for(stream: _Stream, batch_size: int) -> int | None:
    if stream.user_num_batches is not None and stream.user_batch_size == batch_size:
        return stream.user_num_batches
    if stream.size is None:
        return None
    return max(1, math.ceil(stream.size / batch_size))


def check_positive_int(value, argument: str, allow_none: bool = False):
    """``value`` as an int; a ValueError naming ``argument`` unless it is a positive integer (or None if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Argument `{argument}` must be a positive integer; received {argument}={value!r}.")
    return int(value)
