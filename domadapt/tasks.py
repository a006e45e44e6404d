"""What a DomainAdapter learns: classification, regression or semantic segmentation.

A task decides what the head receives (pooled features, or the unpooled feature
map for segmentation), what its outputs mean, which labels are valid, the default
loss, the metrics and which strategies apply. ``DomainAdapter(task=...)`` takes a
name or one of the objects below (for options):

* :class:`Classification` (default): integer class labels ``(N,)``, softmax outputs.
* :class:`Regression`: float labels of any shape matching the head's output, no
  activation, default loss mean squared error.
* :class:`Segmentation`: the backbone's feature map ``(N, h, w, D)`` goes unpooled
  into the head, which outputs per-pixel logits ``(N, H, W, C)``; labels are masks
  ``(N, H, W)`` where ``ignore_index`` pixels count nowhere (loss, metrics);
  ``evaluate`` always reports ``mean_iou`` (``keras.metrics.MeanIoU``).

In every task the strategies see *pooled* features (``Step.source_features``,
global-average pooled for segmentation), so feature-alignment strategies (DANN,
MMD, CORAL) work unchanged; ``Step.source_logits`` holds the head's outputs (per
pixel for segmentation). ``MimicAugment`` moves each mask with its image when its
transform moves pixels (flips, crops, rotations) and leaves it untouched otherwise
(presets, style transfer). A strategy declares the tasks it supports in its class
attribute ``tasks`` (default: classification only); an unsupported pairing is a
``ValueError`` when the adapter is built.

Example:

```python
import keras, domadapt as da
backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, padding="same", activation="relu")])
adapter = da.DomainAdapter(backbone, num_classes=3, task=da.tasks.Segmentation(ignore_index=255))
```
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import _training, data

__all__ = ["TASKS", "Classification", "Regression", "Segmentation", "Task", "get", "supported_tasks"]

TASKS = ("classification", "regression", "segmentation")


def supported_tasks(strategy) -> tuple:
    """The tasks ``strategy`` declares in its class attribute ``tasks`` (default: classification only)."""
    return tuple(getattr(type(strategy), "tasks", ("classification",)))


def check_strategies(strategies, task) -> None:
    """A ValueError naming the first strategy that does not support ``task`` (before any setup or training)."""
    for strategy in strategies:
        supported = supported_tasks(strategy)
        if task.name not in supported:
            raise ValueError(
                f"Strategy {type(strategy).__name__} does not support task={task.name!r}: it supports "
                f"{', '.join(supported)}. For {task.name}, use strategies whose `tasks` include it "
                f"({_examples(task.name)})."
            )
        if task.name != "classification" and getattr(strategy, "class_weights", None) is not None:
            raise ValueError(
                f"Strategy {type(strategy).__name__}: `class_weights` weigh source examples by class and apply to "
                f"classification only; received class_weights={strategy.class_weights!r} with task={task.name!r}. "
                "Remove class_weights."
            )


def _examples(name):
    return {"regression": "da.DANN, da.MMD, da.CORAL, da.MimicAugment",
            "segmentation": "da.DANN, da.MMD, da.CORAL, da.EntropyMinimization, da.OutputAdversarial, "
                            "da.MimicAugment"}.get(name, "")


class Task:
    """The base of the three tasks; see the module docstring. Not subclassed by users (yet)."""

    name = "task"

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="domadapt")
class Classification(Task):
    """Integer class labels ``(N,)``; the head outputs logits ``(N, num_classes)``; softmax outputs.

    DomainAdapter's behaviour before tasks existed (labels are checked by :func:`domadapt.data.pair`).
    """

    name = "classification"

    def default_head(self, num_classes):
        return None if num_classes is None else keras.layers.Dense(num_classes, name="classifier_head")

    def loss(self, compiled_loss, labels, logits):
        return _training.classification_loss(compiled_loss, labels, logits)

    def activate(self, logits):
        return ops.softmax(logits, axis=-1)

    def resolve_metrics(self, metrics, num_classes):
        return [_training.resolve_metric(m) for m in metrics]

    def update_metrics(self, metrics, labels, probabilities):
        for metric in metrics:
            metric.update_state(ops.cast(labels, "int32"), probabilities)


@keras.saving.register_keras_serializable(package="domadapt")
class Regression(Task):
    """Float labels shaped like the head's output per example; no output activation.

    The default head is ``Dense(1)``; pass ``head=`` for other outputs. The default
    loss is mean squared error (``compile(loss="mae" | "huber" | keras.losses.Huber(...)
    | callable)``: anything Keras accepts, applied to ``(labels, predictions)``).
    """

    name = "regression"

    # --- the head ---------------------------------------------------------------
    def default_head(self, num_classes):
        if num_classes is not None:
            raise ValueError(
                f"Argument `num_classes` is for classification and segmentation; received num_classes={num_classes!r} "
                "with task='regression'. Leave it out (the default head is Dense(1)) or pass head= for other outputs."
            )
        return keras.layers.Dense(1, name="regression_head")

    # --- labels and loss ----------------------------------------------------------
    def check_labels(self, labels, argument, num_images, output_shape):
        """Labels as float32 of shape ``(num_images,) + output_shape``; ``(N,)`` for ``(N, 1)`` outputs is accepted."""
        labels = np.asarray(labels)
        if labels.ndim == 0 or labels.shape[0] != num_images:
            raise ValueError(
                f"Argument `{argument}`: {num_images} images but labels of shape {labels.shape}; expected one "
                f"target per image, shape ({num_images}, {', '.join(map(str, output_shape))})."
            )
        if tuple(labels.shape[1:]) != tuple(output_shape):
            if all(d is not None for d in output_shape) and int(np.prod(labels.shape[1:])) == int(
                    np.prod(output_shape, dtype=np.int64)):
                labels = labels.reshape((num_images, *output_shape))
            else:
                raise ValueError(
                    f"Argument `{argument}`: the head predicts {tuple(output_shape)} per image but the labels are "
                    f"{tuple(labels.shape[1:])} per image. Pass labels of shape (num_images, "
                    f"{', '.join(map(str, output_shape))}) or a head with matching outputs."
                )
        # Checked in float32, what training reads: 1e39 is finite in float64 and inf after the cast.
        with np.errstate(over="ignore"):
            labels = labels.astype(np.float32)
        if not np.all(np.isfinite(labels)):
            raise ValueError(f"Argument `{argument}`: regression targets contain NaN or inf values (or values beyond "
                             "float32's range, about 3.4e38).")
        return labels

    def checked_label_tensor(self, labels, argument, output_shape):
        labels = tf.cast(tf.reshape(labels, [-1] if not output_shape else output_shape), tf.float32)
        finite = tf.reduce_all(tf.math.is_finite(labels))
        with tf.control_dependencies([tf.debugging.Assert(
                finite, [f"{data._PIPELINE_ERROR_MARKER} `{argument}` has a NaN or inf regression target"])]):
            return tf.identity(labels)

    def loss(self, compiled_loss, labels, outputs):
        """Mean loss: squared error when ``compiled_loss`` is None, else ``compiled_loss(labels, predictions)``."""
        labels = ops.cast(labels, "float32")
        outputs = ops.cast(outputs, "float32")
        if compiled_loss is None:
            return ops.mean(ops.square(outputs - labels))
        function = compiled_loss.call if isinstance(compiled_loss, keras.losses.Loss) else compiled_loss
        return ops.mean(ops.cast(function(labels, outputs), "float32"))

    def activate(self, logits):
        return logits

    def resolve_metrics(self, metrics, num_classes):
        resolved = []
        for metric in metrics:
            if metric in ("accuracy", "acc"):
                raise ValueError(
                    "Argument `metrics`: 'accuracy' compares class indices and does not apply to task='regression'; "
                    "use e.g. metrics=['mae'] or keras.metrics.RootMeanSquaredError()."
                )
            resolved.append(_training.resolve_metric(metric))
        return resolved

    def update_metrics(self, metrics, labels, outputs):
        for metric in metrics:
            metric.update_state(ops.cast(labels, "float32"), outputs)


@keras.saving.register_keras_serializable(package="domadapt")
class Segmentation(Task):
    """Per-pixel classification: masks ``(N, H, W)`` of class indices, ``ignore_index`` pixels left out.

    The backbone's feature map goes unpooled into the head (default: a 1x1
    ``Conv2D(num_classes)``), which must output logits ``(N, h, w, num_classes)``.
    Masks must have the logits' spatial size, unless ``upsample_logits=True``: the
    logits are then resized bilinearly to the image size inside the model (so the
    exported ``adapter.classifier`` predicts ``(N, H, W, C)`` at image resolution).
    Loss: per-pixel sparse cross-entropy from logits, averaged over the pixels
    that are not ``ignore_index``. ``evaluate`` reports ``mean_iou``
    (``keras.metrics.MeanIoU``, ignored pixels left out) besides the compiled metrics,
    which are all weighted per pixel with ignored pixels at weight 0.

    Args:
        ignore_index: the mask value of unlabeled pixels (255, as in Cityscapes), or
            ``None``: every pixel is labeled.
        upsample_logits: resize the head's logits bilinearly to the image size.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, strides=2, padding="same")])
    task = da.tasks.Segmentation(ignore_index=255, upsample_logits=True)  # 8x8 logits -> 16x16
    adapter = da.DomainAdapter(backbone, num_classes=3, task=task, strategies=[da.EntropyMinimization(0.01)])
    ```
    """

    name = "segmentation"

    def __init__(self, ignore_index=255, upsample_logits=False):
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
                                         or ignore_index < 0):
            raise ValueError(
                f"Argument `ignore_index` must be a non-negative integer or None; received ignore_index={ignore_index!r}."
            )
        if not isinstance(upsample_logits, bool):
            raise ValueError(f"Argument `upsample_logits` must be True or False; received {upsample_logits!r}.")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.upsample_logits = upsample_logits

    def get_config(self):
        return {"ignore_index": self.ignore_index, "upsample_logits": self.upsample_logits}

    # --- the head ---------------------------------------------------------------
    def default_head(self, num_classes):
        if num_classes is None:
            return None  # DomainAdapter's own check asks for num_classes or head
        return keras.layers.Conv2D(int(num_classes), 1, name="segmentation_head")

    def build(self, backbone, inputs, head, num_classes, image_shape):
        """``(pooling, pooled features, feature map, logits, resizing layer or None)`` of the functional graph."""
        feature_map = backbone(inputs)
        if not isinstance(feature_map, keras.KerasTensor) or len(feature_map.shape) != 4:
            raise ValueError(
                "task='segmentation' needs a backbone that outputs a feature map (batch, height, width, channels); "
                f"it outputs {getattr(feature_map, 'shape', type(feature_map).__name__)}. Build it without "
                "global pooling (e.g. keras.applications.ResNet50(include_top=False, pooling=None))."
            )
        pooling = keras.layers.GlobalAveragePooling2D(name="feature_pooling")
        features = pooling(feature_map)
        logits = head(feature_map)
        if not isinstance(logits, keras.KerasTensor) or len(logits.shape) != 4:
            raise ValueError(
                f"Argument `head` must map the feature map {tuple(feature_map.shape)} to per-pixel logits of shape "
                f"(batch, height, width, num_classes); it returns {getattr(logits, 'shape', logits)}. Use "
                "convolutions (e.g. keras.layers.Conv2D(num_classes, 1)), not Dense on pooled features."
            )
        if num_classes is not None and logits.shape[-1] != num_classes:
            raise ValueError(f"Argument `head` returns {logits.shape[-1]} logits per pixel but num_classes={num_classes}.")
        if logits.shape[-1] is None or logits.shape[-1] < 2:
            raise ValueError(f"Argument `head` must output at least 2 logits per pixel; it outputs {logits.shape[-1]}.")
        resizing = None
        if self.upsample_logits:
            height, width = image_shape[0], image_shape[1]
            if height is None or width is None:
                raise ValueError(
                    f"upsample_logits=True resizes the logits to the image size, which must be fixed; the images are "
                    f"{image_shape}. Pass input_shape=(H, W, C), or upsample inside your head."
                )
            resizing = keras.layers.Resizing(height, width, interpolation="bilinear", name="logit_upsampling")
            logits = resizing(logits)
        return pooling, features, feature_map, logits, resizing

    # --- labels and loss ----------------------------------------------------------
    def check_labels(self, labels, argument, num_images, output_shape):
        """Masks as int32 ``(num_images, H, W)``; ``(N, H, W, 1)`` is accepted. ``output_shape`` is ``(H, W, C)``."""
        labels = np.asarray(labels)
        if labels.ndim == 4 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        height, width, num_classes = output_shape
        if labels.ndim != 3 or labels.shape[0] != num_images:
            raise ValueError(
                f"Argument `{argument}`: expected masks of shape ({num_images}, height, width) (one class index per "
                f"pixel, not one-hot); received shape {labels.shape}."
            )
        if not _shape_matches(labels.shape[1:], (height, width)):
            hint = ("pass upsample_logits=True in da.tasks.Segmentation(...) or a head that upsamples"
                    if not self.upsample_logits else "resize the masks to the image size")
            raise ValueError(
                f"Argument `{argument}`: masks are {labels.shape[1]}x{labels.shape[2]} but the logits are "
                f"{height}x{width} per image; {hint}."
            )
        if np.issubdtype(labels.dtype, np.floating) and (
                not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels))):
            raise ValueError(f"Argument `{argument}`: masks must hold whole class indices; received non-integer values.")
        valid = labels if self.ignore_index is None else labels[labels != self.ignore_index]
        if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
            ignored = "" if self.ignore_index is None else f" or ignore_index={self.ignore_index}"
            raise ValueError(
                f"Argument `{argument}`: mask values must be in [0, {num_classes - 1}]{ignored}; received values "
                f"from {valid.min()} to {valid.max()}."
            )
        return labels.astype(np.int32)

    def checked_label_tensor(self, labels, argument, output_shape):
        labels = tf.cast(labels, tf.int32)
        if labels.shape.rank == 3 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        valid = tf.logical_and(labels >= 0, labels < output_shape[-1])
        if self.ignore_index is not None:
            valid = tf.logical_or(valid, labels == self.ignore_index)
        with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(valid), [
                f"{data._PIPELINE_ERROR_MARKER} `{argument}` has a mask value outside [0, num_classes) and not "
                "ignore_index"])]):
            return tf.identity(labels)

    def valid_pixels(self, labels):
        """``(labels with ignored pixels set to 0, float32 weights: 0 at ignored pixels, else 1)``."""
        labels = ops.cast(labels, "int32")
        if self.ignore_index is None:
            return labels, ops.ones(ops.shape(labels), "float32")
        valid = ops.not_equal(labels, self.ignore_index)
        return ops.where(valid, labels, 0), ops.cast(valid, "float32")

    def loss(self, compiled_loss, labels, logits):
        """Mean per-pixel loss over labeled pixels (ignored pixels neither add to it nor count)."""
        labels, weights = self.valid_pixels(labels)
        if compiled_loss is None:
            per_pixel = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        else:
            function = compiled_loss.call if isinstance(compiled_loss, keras.losses.Loss) else compiled_loss
            per_pixel = function(labels, ops.softmax(logits, axis=-1))
        per_pixel = ops.cast(per_pixel, "float32")
        return ops.sum(per_pixel * weights) / ops.maximum(ops.sum(weights), 1.0)

    def activate(self, logits):
        return ops.softmax(logits, axis=-1)

    def resolve_metrics(self, metrics, num_classes):
        resolved = [_training.resolve_metric(m) for m in metrics]
        if not any(isinstance(m, keras.metrics.MeanIoU) for m in resolved):
            resolved.insert(0, keras.metrics.MeanIoU(num_classes, name="mean_iou", dtype="float32", sparse_y_pred=False))
        return resolved

    def update_metrics(self, metrics, labels, probabilities):
        labels, weights = self.valid_pixels(labels)
        for metric in metrics:
            metric.update_state(labels, probabilities, sample_weight=weights)


def _shape_matches(actual, expected):
    return all(e is None or int(a) == int(e) for a, e in zip(actual, expected))


def get(task) -> Task:
    """A Task from a name (``"classification"``, ``"regression"``, ``"segmentation"``), a Task or its config."""
    if isinstance(task, Task):
        return task
    if isinstance(task, dict):
        task = keras.saving.deserialize_keras_object(task)
        if isinstance(task, Task):
            return task
    named = {"classification": Classification, "regression": Regression, "segmentation": Segmentation}
    if isinstance(task, str) and task in named:
        return named[task]()
    raise ValueError(
        f"Argument `task` must be one of {TASKS} or a da.tasks.Task such as da.tasks.Segmentation(ignore_index=255); "
        f"received task={task!r}."
    )


# ---------------------------------------------------------------------- data
def _labeled_stream(task, value, argument, image_shape, output_shape):
    """A checked ``data._Stream`` of ``(images, labels)`` with the task's labels (regression targets, masks)."""
    if isinstance(value, tf.data.Dataset):
        data._split_element_spec(value.element_spec, True, argument)  # a dataset of (images, labels)
        images_only = data._make_stream(value.map(lambda *element: element[0]), argument=argument, labeled=False,
                                        image_shape=image_shape, num_classes=2)
        batched = images_only.user_batch_size is not None
        dataset = value.map(lambda *element: (element[0], element[1]))
        first_images, first_labels = (np.asarray(t) for t in next(iter(dataset.take(1))))
        if not batched:
            first_images, first_labels = first_images[None], first_labels[None]
        task.check_labels(first_labels, f"{argument} (labels of the first element)", len(first_images), output_shape)
        if batched:
            dataset = dataset.unbatch()
        dataset = dataset.map(lambda images, labels: (images, task.checked_label_tensor(labels, argument, output_shape)))
        return dataclasses.replace(images_only, labeled=True, dataset=dataset)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(
            f"Argument `{argument}`: expected a tuple (images, labels) of arrays or a tf.data.Dataset of "
            f"(images, labels); received {data.describe(value)}."
        )
    images = data.to_numpy(value[0], f"{argument}[0] (images)")
    labels = data.to_numpy(value[1], f"{argument}[1] (labels)")
    data.check_images(images, f"{argument}[0] (images)", image_shape)
    labels = task.check_labels(labels, f"{argument}[1] (labels)", images.shape[0], output_shape)
    return data._Stream(argument, True, images.shape[0], images=images, labels=labels)


def pair(task, source, target=None, target_labeled=None, *, image_shape, output_shape, batch_size=None,
         target_batch_size=None, steps_per_epoch=None, shuffle=True, seed=None, shuffle_buffer=10_000, start_epoch=0,
         pair_target=True) -> data.PairedData:
    """:func:`domadapt.data.pair` for regression and segmentation labels (same streams, same arguments).

    ``output_shape`` is the head's output per image (regression) or ``(H, W, num_classes)``
    of the logits (segmentation): the labels are checked against it.
    """
    image_shape = tuple(image_shape)
    source_stream = _labeled_stream(task, source, "source", image_shape, output_shape)
    target_stream = None if target is None else data._make_stream(target, argument="target", labeled=False,
                                                                   image_shape=image_shape, num_classes=2)
    labeled_stream = None if target_labeled is None else _labeled_stream(task, target_labeled, "target_labeled",
                                                                         image_shape, output_shape)
    return data._paired_streams(source_stream, target_stream, labeled_stream, image_shape=image_shape,
                                batch_size=batch_size, target_batch_size=target_batch_size,
                                steps_per_epoch=steps_per_epoch, shuffle=shuffle, seed=seed,
                                shuffle_buffer=shuffle_buffer, start_epoch=start_epoch, pair_target=pair_target)


def evaluation_dataset(task, value, *, argument, image_shape, output_shape, batch_size):
    """A finite batched dataset of ``(images, labels)`` with the task's labels checked."""
    stream = _labeled_stream(task, value, argument, tuple(image_shape), output_shape)
    if stream.images is not None:
        dataset = tf.data.Dataset.from_tensor_slices((stream.images, stream.labels))
    else:
        dataset = stream.dataset
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def mean_iou(labels, predictions, num_classes, ignore_index=255) -> float:
    """Mean intersection over union of class-index masks, as ``keras.metrics.MeanIoU`` computes it (numpy).

    IoU_c = TP_c / (TP_c + FP_c + FN_c) over pixels whose label is not ``ignore_index``;
    the mean is over classes present in the labels or the predictions (0.0 when every
    pixel is ignored, as Keras reports it). Higher is better.

    Args:
        labels: masks of shape ``(N, H, W)``.
        predictions: predicted class indices ``(N, H, W)`` or probabilities ``(N, H, W, C)``.
        num_classes: number of classes C.
        ignore_index: mask value left out (``None``: none).

    Example:

    ```python
    import numpy as np
    from domadapt.tasks import mean_iou
    print(mean_iou(np.array([[[0, 1], [1, 255]]]), np.array([[[0, 1], [0, 0]]]), num_classes=2))  # 0.5
    ```
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"Argument `num_classes` must be a positive integer; received num_classes={num_classes!r}.")
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if predictions.size == labels.size * num_classes and num_classes > 1:  # probabilities or logits (N, H, W, C)
        predictions = predictions.reshape(-1, num_classes).argmax(axis=-1)
    elif predictions.size != labels.size:
        raise ValueError(f"Arguments `labels` and `predictions` must describe the same pixels: labels of shape "
                         f"{labels.shape}, predictions of shape {predictions.shape} (expected {labels.shape} or "
                         f"{(*labels.shape, num_classes)}).")
    labels, predictions = labels.reshape(-1), predictions.reshape(-1).astype(np.int64)
    keep = np.ones_like(labels, dtype=bool) if ignore_index is None else labels != ignore_index
    for name, values in (("labels", labels[keep]), ("predictions", predictions[keep])):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"Argument `{name}` must hold class indices in [0, {num_classes})"
                             f"{'' if name == 'predictions' or ignore_index is None else f' or {ignore_index}'}; "
                             f"received values from {values.min()} to {values.max()}.")
    confusion = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(confusion, (labels[keep], predictions[keep]), 1.0)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    present = union > 0
    return float(np.mean(true_positives[present] / union[present])) if present.any() else 0.0
