"""Self-training with consistency: FixMatch and AdaMatch pseudo-labels on strongly augmented target images."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import _distribute
from domadapt.strategies.base import WeightedStrategy

__all__ = ["SelfTraining", "adamatch_warmup", "pseudo_labels", "strong_augment"]

_METHODS = ("adamatch", "fixmatch")
# The papers' confidence thresholds: AdaMatch's is relative to the source confidence.
_DEFAULT_THRESHOLDS = {"adamatch": 0.9, "fixmatch": 0.95}
_NUM_COLOUR_OPS = 9  # identity, brightness, contrast, saturation, solarize, posterize, gamma, sharpness, noise
_NUM_GEOMETRIC_OPS = 5  # rotate, shear x, shear y, translate x, translate y


@keras.saving.register_keras_serializable(package="domadapt")
def adamatch_warmup(progress):
    """AdaMatch's loss-weight warm-up (Berthelot et al. 2022): 1/2 - cos(min(pi, 2 pi p)) / 2.

    0 at the start of training, 1 from half of training on (p is training progress in [0, 1]).
    SelfTraining's default schedule for ``method="adamatch"``.

    Example:

    ```python
    import numpy as np
    from domadapt.strategies.self_training import adamatch_warmup
    print(np.asarray(adamatch_warmup([0.0, 0.25, 0.5, 1.0])))  # [0.  0.5 1.  1. ]
    ```
    """
    return 0.5 - 0.5 * ops.cos(ops.minimum(math.pi, 2.0 * math.pi * ops.cast(progress, "float32")))


def pseudo_labels(source_probabilities, target_probabilities, threshold, method="adamatch"):
    """Hard pseudo-labels of a target batch and which of them are confident enough to train on.

    FixMatch (Sohn et al. 2020): q = target probabilities, label = argmax q,
    kept when max q >= threshold.

    AdaMatch (Berthelot et al. 2022) first aligns the target distribution with the
    source's and makes the threshold relative to the source confidence:

        q = normalise(p_t * mean_batch(p_s) / mean_batch(p_t))
        c = threshold * mean_batch(max_k p_s)
        label = argmax q, kept when max q >= c

    Args:
        source_probabilities: ``(B_s, K)`` source predictions (weak view); unused by FixMatch.
        target_probabilities: ``(B_t, K)`` target predictions (weak view).
        threshold: confidence threshold in (0, 1].
        method: ``"adamatch"`` or ``"fixmatch"``.

    Returns:
        ``(labels, mask, threshold)``: int32 ``(B_t,)``, float32 ``(B_t,)`` of 0/1 and the
        threshold applied (a float32 scalar). No gradient flows through them.

    Example:

    ```python
    import numpy as np
    from domadapt.strategies.self_training import pseudo_labels
    source = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    target = np.array([[0.5, 0.5], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels, mask, threshold = pseudo_labels(source, target, 0.9, "adamatch")
    print(np.asarray(labels), np.asarray(mask), float(threshold))  # [0 0 0 0] [1. 1. 0. 0.] 0.675
    ```
    """
    if method not in _METHODS:
        raise ValueError(f"Argument `method` must be one of {_METHODS}; received method={method!r}.")
    target = ops.stop_gradient(ops.cast(target_probabilities, "float32"))
    threshold = ops.convert_to_tensor(threshold, "float32")
    if method == "adamatch":
        source = ops.stop_gradient(ops.cast(source_probabilities, "float32"))
        ratio = ops.mean(source, axis=0) / ops.maximum(ops.mean(target, axis=0), 1e-6)
        target = target * ratio
        target = target / ops.maximum(ops.sum(target, axis=-1, keepdims=True), 1e-12)
        threshold = threshold * ops.mean(ops.max(source, axis=-1))
    labels = ops.cast(ops.argmax(target, axis=-1), "int32")
    mask = ops.cast(ops.max(target, axis=-1) >= threshold, "float32")
    return labels, mask, threshold


# ----------------------------------------------------------------------------- strong augmentation


# Philox explicitly, so that CPU and GPU kernels draw the same numbers ("auto_select" may not);
# XLA-compiled steps draw a different (equally random) stream.
_ALGORITHM = "philox"


def _split(seed, count):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count, alg=_ALGORITHM))


def _uniform(shape, seed, minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed, minval, maxval, alg=_ALGORITHM)


def _normal(shape, seed):
    return tf.random.stateless_normal(shape, seed, alg=_ALGORITHM)


def _blur3x3(images):
    """PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1) / 13 with edge padding, per channel."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = images.shape[-1]
    kernel = tf.tile(tf.reshape(kernel, [3, 3, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")


def _resample(images, matrices):
    """Bilinear resampling: output pixel (x, y), centred, reads the input at ``matrices @ (x, y, 1)``.

    Coordinates outside the image are clamped to its border (edge padding), which
    needs no fill value and so works for any value range. Gathers only: XLA-compatible.
    """
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ys, xs = tf.meshgrid(tf.range(h) - (h - 1.0) / 2.0, tf.range(w) - (w - 1.0) / 2.0, indexing="ij")
    grid = tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1]), tf.ones_like(tf.reshape(xs, [-1]))])
    mapped = tf.einsum("bij,jn->bin", matrices, grid)
    source_x = tf.clip_by_value(mapped[:, 0] + (w - 1.0) / 2.0, 0.0, w - 1.0)
    source_y = tf.clip_by_value(mapped[:, 1] + (h - 1.0) / 2.0, 0.0, h - 1.0)
    x0, y0 = tf.floor(source_x), tf.floor(source_y)
    x1, y1 = tf.minimum(x0 + 1.0, w - 1.0), tf.minimum(y0 + 1.0, h - 1.0)
    fx, fy = (source_x - x0)[..., None], (source_y - y0)[..., None]
    flat = tf.reshape(images, [batch, height * width, channels])

    def pixels(y, x):
        return tf.gather(flat, tf.cast(y * w + x, tf.int32), batch_dims=1)

    top = pixels(y0, x0) * (1.0 - fx) + pixels(y0, x1) * fx
    bottom = pixels(y1, x0) * (1.0 - fx) + pixels(y1, x1) * fx
    return tf.reshape(top * (1.0 - fy) + bottom * fy, shape)


def _geometric_matrices(magnitudes, signs, chosen, height, width):
    """One affine matrix per image: rotate, shear x, shear y, translate x, translate y (identity where not chosen)."""
    values = signs * magnitudes * chosen
    angle = values[:, 0] * (30.0 * math.pi / 180.0)
    shear_x, shear_y = values[:, 1] * 0.3, values[:, 2] * 0.3
    translate_x, translate_y = values[:, 3] * 0.3 * width, values[:, 4] * 0.3 * height
    zeros, ones = tf.zeros_like(angle), tf.ones_like(angle)

    def matrix(rows):
        return tf.reshape(tf.stack([value for row in rows for value in row], axis=1), [-1, 3, 3])

    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = matrix([[cos, -sin, zeros], [sin, cos, zeros], [zeros, zeros, ones]])
    shear = matrix([[ones, shear_x, zeros], [shear_y, ones, zeros], [zeros, zeros, ones]])
    translation = matrix([[ones, zeros, translate_x], [zeros, ones, translate_y], [zeros, zeros, ones]])
    return rotation @ shear @ translation


def strong_augment(images, seed, num_ops=2):
    """RandAugment-style strong augmentation with CutOut, as in FixMatch, in TensorFlow ops.

    Each image gets ``num_ops`` operations drawn at random, each with a random
    magnitude m in [0, 1] and a random sign s, out of: identity; brightness
    (x + 0.5 s m r); contrast and saturation (factor 1 + 0.9 s m about the image
    mean / the channel mean); solarize (values above 1 - m of the range inverted);
    posterize (2^(8 - 4 m) levels); gamma (3^(s m)); sharpness (factor 1 + 0.9 s m
    against a 3x3 blur); Gaussian noise (std 0.15 m r); rotation (30 s m degrees);
    shear (0.3 s m) in x or y; translation (0.3 s m of the size) in x or y. Then a
    CutOut square of side up to half the image is filled with the image mean.

    Colour operations work in units of each image's own range r = max - min, so any
    value range (0-1, 0-255, standardised) and any channel count works; results are
    not clipped. Inputs that are not ``(batch, H, W, C)`` images (feature vectors)
    get Gaussian noise of std up to 0.5 times each feature's batch standard deviation.

    Everything is drawn from ``seed`` (a shape-(2,) int32 tensor) with stateless
    random ops: deterministic, and compilable with XLA.

    Args:
        images: float tensor ``(batch, ...)``.
        seed: int32 tensor of shape ``(2,)``.
        num_ops: operations per image.

    Returns:
        Augmented float32 images of the same shape.

    Example:

    ```python
    import numpy as np, tensorflow as tf
    from domadapt.strategies.self_training import strong_augment
    images = np.random.rand(8, 28, 28, 1).astype("float32")
    strong = strong_augment(images, seed=tf.constant([0, 1]))
    print(strong.shape)  # (8, 28, 28, 1)
    ```
    """
    images = tf.cast(images, tf.float32)
    seed = tf.cast(seed, tf.int32)
    if images.shape.rank != 4:
        batch = tf.shape(images)[0]
        std = tf.math.reduce_std(images, axis=0, keepdims=True)
        scale_seed, noise_seed = _split(seed, 2)
        scale = _uniform(tf.concat([[batch], tf.ones([images.shape.rank - 1], tf.int32)], 0), scale_seed, 0.0, 0.5)
        return images + scale * std * _normal(tf.shape(images), noise_seed)

    batch = tf.shape(images)[0]
    num_kinds = _NUM_COLOUR_OPS + _NUM_GEOMETRIC_OPS
    pick_seed, magnitude_seed, sign_seed, noise_seed, cut_seed = _split(seed, 5)
    # num_ops distinct operations per image: the top scores of a random permutation.
    scores = _uniform([batch, num_kinds], pick_seed)
    picked = tf.math.top_k(scores, k=num_ops).indices
    chosen = tf.reduce_sum(tf.one_hot(picked, num_kinds), axis=1)
    magnitudes = _uniform([batch, num_kinds], magnitude_seed)
    signs = tf.where(_uniform([batch, num_kinds], sign_seed) < 0.5, -1.0, 1.0)

    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    value_range = tf.maximum(high - low, 1e-6)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)

    def parameter(values, index):
        return tf.reshape(values[:, index], [-1, 1, 1, 1])

    def unit(x):
        return (x - low) / value_range

    def from_unit(u):
        return low + u * value_range

    operations = [
        lambda x, m, s: x,
        lambda x, m, s: x + 0.5 * s * m * value_range,
        lambda x, m, s: mean + (x - mean) * (1.0 + 0.9 * s * m),
        lambda x, m, s: (lambda grey: grey + (x - grey) * (1.0 + 0.9 * s * m))(tf.reduce_mean(x, -1, keepdims=True)),
        lambda x, m, s: from_unit(tf.where(unit(x) > 1.0 - m, 1.0 - unit(x), unit(x))),
        lambda x, m, s: (lambda levels: from_unit(tf.round(tf.clip_by_value(unit(x), 0.0, 1.0) * levels) / levels))(
            tf.round(tf.pow(2.0, 8.0 - 4.0 * m)) - 1.0
        ),
        lambda x, m, s: from_unit(tf.pow(tf.clip_by_value(unit(x), 0.0, 1.0), tf.pow(3.0, s * m))),
        lambda x, m, s: (lambda blurred: blurred + (x - blurred) * (1.0 + 0.9 * s * m))(_blur3x3(x)),
        lambda x, m, s: x + 0.15 * m * value_range * _normal(tf.shape(x), noise_seed),
    ]
    augmented = images
    for index, operation in enumerate(operations):
        apply = parameter(chosen, index) > 0
        changed = operation(augmented, parameter(magnitudes, index), parameter(signs, index))
        augmented = tf.where(apply, changed, augmented)

    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    geometric = slice(_NUM_COLOUR_OPS, num_kinds)
    matrices = _geometric_matrices(magnitudes[:, geometric], signs[:, geometric], chosen[:, geometric], height, width)
    augmented = _resample(augmented, matrices)

    # CutOut (DeVries & Taylor 2017): a square of side up to half the smaller side.
    centre_y, centre_x, side = tf.unstack(_uniform([3, batch, 1, 1], cut_seed))
    side = side * 0.5 * tf.minimum(height, width)
    rows = tf.range(height)[None, :, None]
    columns = tf.range(width)[None, None, :]
    inside = (tf.abs(rows + 0.5 - centre_y * height) < side / 2.0) & (tf.abs(columns + 0.5 - centre_x * width) < side / 2.0)
    return tf.where(inside[..., None], mean, augmented)


def _local_rows(global_batch, local_count):
    """This replica's rows of a batch gathered with ``gather_replicas`` (all of it without tf.distribute)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return global_batch
    sizes = context.all_gather(tf.reshape(local_count, [1]), axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return tf.slice(global_batch, tf.concat([[offset], tf.zeros([global_batch.shape.rank - 1], tf.int32)], 0),
                    tf.concat([[local_count], tf.shape(global_batch)[1:]], 0))


class _Models:
    """A plain holder Keras' attribute tracking does not look into (the adapter tracks these weights)."""

    def __init__(self, **values):
        self.__dict__.update(values)


@keras.saving.register_keras_serializable(package="domadapt")
class SelfTraining(WeightedStrategy):
    """Self-training with consistency: FixMatch (Sohn et al. 2020) and AdaMatch (Berthelot et al., ICLR 2022).

    Why: on a shifted target, the classifier's confident predictions are mostly
    right. Training the model to give the same (hard) label to a strongly
    augmented copy of each confidently predicted target image spreads those
    labels to the rest of the target domain, and makes the model invariant to
    the colour, texture and geometry changes the augmentation covers. AdaMatch
    adapts FixMatch to domain shift: its threshold follows the model's confidence
    on source data, and target predictions are rescaled towards the source
    label distribution before pseudo-labelling, so a target domain on which the
    model is unsure still gets pseudo-labels and a class the model overpredicts
    on target does not take over.

    Each step, with p_t the predictions on the target batch as the step gives it
    (the weak view) and p_s those on the source batch:

        labels, mask = pseudo_labels(p_s, p_t, threshold, method)   (no gradient)
        self_training_loss = mu(progress) * weight
                             * mean_i mask_i * CE(labels_i, model(strong_augment(x_t)_i))

    where strong_augment is RandAugment + CutOut in TensorFlow ops (see
    :func:`strong_augment`), a second forward pass of the target batch through the
    backbone and head. mu is AdaMatch's warm-up (:func:`adamatch_warmup`) for
    ``"adamatch"`` and 1 for ``"fixmatch"``. AdaMatch's source loss on strong views
    and its random logit interpolation are left out: the source loss is the
    adapter's ``cls_loss``.

    FixMatch assumes the model's target predictions are already mostly right and
    spread over the classes. Under a domain shift they often are not: on the
    digits brightness shift of the tests, FixMatch pseudo-labelled every target
    image as one class (mask_rate 0.99, target accuracy 10% on 3 seeds against
    40% source-only) while AdaMatch reached 74%. Watch ``mask_rate``; prefer
    ``"adamatch"`` (the default) for domain adaptation.

    The strong augmentation runs inside the compiled train step (with
    ``jit_compile=True``, XLA-compiled on the accelerator). It is drawn from
    ``seed`` and a counter of draws saved with the adapter, so a run is
    reproducible and a resumed run continues the draws; under ``tf.distribute`` each replica augments the
    global batch and keeps its own rows, and the pseudo-label statistics are those
    of the global batch, so training does not depend on the number of replicas.

    Reports ``self_training_loss``, ``mask_rate`` (the fraction of target examples
    above the threshold) and ``threshold`` (the threshold applied; for AdaMatch
    the relative one).

    Args:
        method: ``"adamatch"`` (default) or ``"fixmatch"``.
        threshold: confidence threshold in (0, 1]; default the paper's: 0.9 for
            AdaMatch (relative to the mean source confidence), 0.95 for FixMatch.
        weight: loss weight (1 in both papers).
        schedule: default AdaMatch's warm-up for ``"adamatch"``, ``"constant"`` for
            ``"fixmatch"``; or ``"ganin"`` or a callable ``progress -> multiplier``.
        augmentation: optional Keras layer for the strong view, called as
            ``augmentation(images, training=True)``, instead of :func:`strong_augment`.
        seed: seed of the strong augmentation; ``None`` draws one (from NumPy's
            global generator, so ``keras.utils.set_random_seed`` fixes it).

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.strategies.self_training import SelfTraining
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=[SelfTraining("adamatch", seed=0)])
    adapter.compile(optimizer="adam")
    xs, ys = np.random.rand(64, 8, 8, 1), np.random.randint(0, 3, 64)
    history = adapter.fit(source=(xs, ys), target=np.random.rand(64, 8, 8, 1), epochs=1, verbose=0)
    print(sorted(history.history))  # [..., 'mask_rate', 'self_training_loss', 'threshold']
    ```
    """

    log_names = ("self_training_loss", "mask_rate", "threshold")

    def __init__(self, method="adamatch", threshold=None, weight=1.0, schedule=None, augmentation=None, seed=None,
                 **kwargs):
        if method not in _METHODS:
            raise ValueError(f"Argument `method` must be one of {_METHODS}; received method={method!r}.")
        if schedule is None:
            schedule = adamatch_warmup if method == "adamatch" else "constant"
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        self.method = method
        if threshold is None:
            threshold = _DEFAULT_THRESHOLDS[method]
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold <= 1.0:
            raise ValueError(f"Argument `threshold` must be a number in (0, 1]; received threshold={threshold!r}.")
        self.threshold = float(threshold)
        if augmentation is not None and not isinstance(augmentation, keras.layers.Layer):
            raise TypeError(
                "Argument `augmentation` must be a Keras layer mapping images to augmented images (or None for "
                f"the built-in strong augmentation); received {augmentation!r} of type {type(augmentation).__name__}."
            )
        self.augmentation = augmentation
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
            raise ValueError(f"Argument `seed` must be an integer in [0, 2**31) or None; received seed={seed!r}.")
        self.seed = int(seed)
        self._models = None

    def setup(self, adapter):
        self._models = _Models(feature_extractor=adapter.feature_extractor, head=adapter.head)
        # Counts the strong views drawn: saved with the adapter, so a resumed run continues the draws.
        self.draws = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False, name="draws",
                                     aggregation="only_first_replica")

    def _strong_view(self, images):
        if self.augmentation is not None:
            return ops.cast(self.augmentation(images, training=True), "float32")
        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(self.draws, tf.int32)])
        self.draws.assign_add(1)
        return strong_augment(images, seed)

    def loss(self, step):
        if self._models is None:
            raise RuntimeError("SelfTraining.loss needs the adapter's models: pass the strategy to da.DomainAdapter.")
        local_images = ops.cast(step.target_images, "float32")
        local_count = ops.shape(local_images)[0]
        # Pseudo-labels and the strong view from the global batch, then this replica's rows.
        source_probabilities = _distribute.gather_replicas(ops.stop_gradient(step.source_probabilities))
        target_probabilities = _distribute.gather_replicas(ops.stop_gradient(step.target_probabilities))
        labels, mask, threshold = pseudo_labels(source_probabilities, target_probabilities, self.threshold, self.method)
        global_images = tf.ensure_shape(_distribute.gather_replicas(local_images), [None, *local_images.shape[1:]])
        strong = _local_rows(self._strong_view(global_images), local_count)
        features = self._models.feature_extractor(strong, training=step.training)
        strong_logits = ops.cast(self._models.head(features, training=step.training), "float32")
        per_example = keras.losses.sparse_categorical_crossentropy(
            _local_rows(labels, local_count), strong_logits, from_logits=True
        )
        value = ops.mean(_local_rows(mask, local_count) * per_example)
        step.report("mask_rate", ops.mean(mask))
        step.report("threshold", threshold)
        return {"self_training_loss": self.current_weight(step) * value}

    def get_config(self):
        return {
            **super().get_config(),
            "method": self.method,
            "threshold": self.threshold,
            "augmentation": None if self.augmentation is None else keras.saving.serialize_keras_object(self.augmentation),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("augmentation"), dict):
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return super().from_config(config)
