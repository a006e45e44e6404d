"""The base class of validators, and what every validator needs: a model's probabilities
and features on some images."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import tensorflow as tf

from domadapt import ops
from domadapt.data import check_finite_images, check_images, without_labels


class Validator:
    """A named score of a trained model that uses no target labels.

    ``higher_is_better`` gives its direction; :meth:`ranking_score` flips lower-is-
    better validators so that for every validator a larger ranking score is better.
    Subclass it for your own score; ``da.validate``, ``da.compare`` and
    ``da.callbacks.ValidatorCheckpoint`` accept the instance.

    Example:

    ```python
    import numpy as np
    from domadapt.validators.base import Validator, images_of, outputs

    class MeanConfidence(Validator):
        name = "mean_confidence"

        def __call__(self, model, source=None, target=None, *, feature_extractor=None):
            probabilities, _ = outputs(model, images_of(target, "target", model))
            return float(np.mean(probabilities.max(axis=1)))
    ```
    """

    name = "validator"
    # The data it reads: "labeled_source" ((images, labels)), "source" (images), "target"; checked by
    # da.callbacks.ValidatorCheckpoint when it is built, before any epoch is trained. () for unknown.
    requires = ()
    higher_is_better = True
    reference = ""
    # The model tasks (DomainAdapter(task=...)) the score is defined for; da.validate checks it.
    tasks = ("classification",)

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        raise NotImplementedError

    def check_task(self, model):
        """A ValueError when ``model``'s task (a DomainAdapter's ``task``; else classification) is not in ``tasks``."""
        task = task_of(model)
        if task not in self.tasks:
            raise ValueError(
                f"Validator {self.name!r} does not apply to task={task!r} (it supports {', '.join(self.tasks)}). "
                f"Choose validators that do, e.g. validators={list(TASK_VALIDATORS.get(task, ()))}."
            )

    def ranking_score(self, value):
        return value if self.higher_is_better else -value

    def __repr__(self):
        return f"{self.name} ({'higher' if self.higher_is_better else 'lower'} is better)"


# Validators that apply to each task; da.validate uses them when called with its default for another task.
TASK_VALIDATORS = {
    "regression": ("source_error", "dev", "mmd"),
    "segmentation": ("source_error", "entropy", "information_maximization", "dev", "mmd"),
}


def task_of(model):
    """The task name of a DomainAdapter (``"classification"`` for anything else)."""
    return getattr(getattr(model, "task", None), "name", "classification")


def _image_rank(model):
    """The rank of one image the model takes (``None`` if it does not say, or takes several inputs)."""
    shape = getattr(model, "image_shape", None)
    if shape is None:
        try:
            shape = model.input_shape
        except (AttributeError, TypeError, ValueError):
            return None
        if not isinstance(shape, tuple) or not shape or not all(d is None or isinstance(d, int) for d in shape):
            return None  # several inputs (a list or dict of shapes)
        shape = shape[1:]
    return len(shape)


def check_max_samples(value):
    """``max_samples`` of a sampling validator: an integer >= 2 (a density, a classifier or a kernel needs two)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"Argument `max_samples` must be an integer >= 2; received max_samples={value!r}.")
    return int(value)


def images_of(value, argument, model=None):
    """Images from an array, an (images, labels) tuple or a dataset of images; labels are never read.

    A dataset may be batched (as ``image_dataset_from_directory`` gives) or yield one
    image per element (``from_tensor_slices(images)``, as ``fit`` accepts): ``model``'s
    input rank tells which; where it is unknown (no model, a subclassed model not
    built on an input shape, elements of unknown rank), elements count as batches."""
    if value is None:
        raise ValueError(f"Argument `{argument}` is required by this validator.")
    if isinstance(value, tf.data.Dataset):
        if isinstance(value.element_spec, tuple):
            value = value.map(lambda *element: element[0])
        if not isinstance(value.element_spec, tf.TensorSpec):
            raise TypeError(f"Argument `{argument}`: expected a dataset of images or (images, labels); received "
                            f"elements {value.element_spec}.")
        rank, image_rank = value.element_spec.shape.rank, _image_rank(model)
        if rank is None or image_rank is None:
            pass  # nothing to tell them apart by: batches, as image_dataset_from_directory gives
        elif rank == image_rank:
            value = value.batch(256)
        elif rank != image_rank + 1:
            raise ValueError(f"Argument `{argument}`: dataset elements have shape {value.element_spec.shape}; the model "
                             f"takes images of rank {image_rank}, one per element or batched.")
        batches = list(value.as_numpy_iterator())
        images = np.concatenate(batches) if batches else np.zeros((0,))
    else:
        images = np.asarray(without_labels(value, _image_rank(model)))
    if images.ndim == 0 or len(images) < 2:
        raise ValueError(f"Argument `{argument}`: needs at least 2 images; received {len(images) if images.ndim else 0}.")
    image_shape = getattr(model, "image_shape", None)
    if isinstance(image_shape, tuple):
        check_images(images, argument, image_shape)  # shape and finiteness, as fit checks them
    else:
        check_finite_images(images, argument)
    return images


def labeled(value, argument, model=None):
    """``(images, labels)`` as arrays, checked: at least 2 images, one integer label per image, labels in
    ``[0, num_classes)`` when ``model`` tells the number of classes."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"Argument `{argument}` must be (images, labels) for this validator.")
    images = np.asarray(value[0])
    labels = np.asarray(value[1]).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"Argument `{argument}`: {len(images)} images but {len(labels)} labels.")
    if len(images) < 2:
        raise ValueError(f"Argument `{argument}`: needs at least 2 labeled images; received {len(images)}.")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"Argument `{argument}`: labels must be integer class indices; received dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and model is not None:
        try:  # a plain Keras classifier: its output width
            num_classes = int(getattr(model, "classifier", model).output_shape[-1])
        except (AttributeError, TypeError, ValueError, IndexError):
            num_classes = None
    if labels.min() < 0 or (isinstance(num_classes, int) and labels.max() >= num_classes):
        expected = f"[0, {num_classes})" if isinstance(num_classes, int) else "non-negative"
        raise ValueError(f"Argument `{argument}`: labels must be class indices in {expected}; received labels from "
                         f"{labels.min()} to {labels.max()}.")
    return images, labels


# The outputs of one da.validate call, shared by its validators (see shared_outputs).
_SHARED_OUTPUTS = contextvars.ContextVar("domadapt_shared_outputs", default=None)


@contextlib.contextmanager
def shared_outputs():
    """Within the block, :func:`outputs` predicts each (model, images, feature extractor, domain) once.

    The validators of one ``da.validate`` call score the same held-out images: without
    it the seven defaults ran the backbone 20 times over them. Entries hold the images
    they were computed on (so an id is not reused while the block lasts) and their arrays
    are read-only. Nested blocks share the outer one's entries.
    """
    if _SHARED_OUTPUTS.get() is not None:
        yield
        return
    token = _SHARED_OUTPUTS.set({})
    try:
        yield
    finally:
        _SHARED_OUTPUTS.reset(token)


def outputs(model, images, feature_extractor=None, batch_size=256, *, domain="target"):
    """``(probabilities, features)``: a DomainAdapter gives both; a plain classifier gives
    probabilities, and features from ``feature_extractor`` (else the probabilities).

    ``domain="source"`` scores the images with the source's batch-norm statistics
    when ``model`` is a DomainAdapter that keeps them (``bn_mode="domain"``); its
    classifier carries the target's. A DomainAdapter gives both in one backbone pass;
    inside :func:`shared_outputs` a repeated call returns the first one's (read-only) arrays."""
    if domain not in ("source", "target"):
        raise ValueError(f"Argument `domain` must be 'source' or 'target'; received domain={domain!r}.")
    shared = _SHARED_OUTPUTS.get()
    key = (id(model), id(images), id(feature_extractor), domain, batch_size)
    if shared is not None and key in shared:
        held, result = shared[key]
        if held[0] is model and held[1] is images and held[2] is feature_extractor:
            return result
    result = _predict_outputs(model, images, feature_extractor, batch_size, domain)
    if shared is not None:
        for array in result:
            array.flags.writeable = False
        shared[key] = ((model, images, feature_extractor), result)
    return result


def _predict_outputs(model, images, feature_extractor, batch_size, domain):
    classifier = getattr(model, "classifier", model)
    extractor = getattr(model, "feature_extractor", feature_extractor)
    # A DomainAdapter's images -> (probabilities, pooled features) model: one backbone pass for both.
    scorer = getattr(getattr(model, "_functional", None), "scorer", None)
    statistics = getattr(model, "_source_statistics", None) if domain == "source" else None
    with statistics() if statistics is not None else contextlib.nullcontext():
        if scorer is not None:
            probabilities, features = scorer.predict(images, batch_size=batch_size, verbose=0)
        else:
            probabilities = classifier.predict(images, batch_size=batch_size, verbose=0)
            if extractor is None:
                probabilities = np.asarray(probabilities, dtype=np.float64)
                return probabilities, probabilities
            features = extractor.predict(images, batch_size=batch_size, verbose=0)
    features = np.asarray(features, dtype=np.float64)
    return np.asarray(probabilities, dtype=np.float64), features.reshape(len(features), -1)


def entropies(probabilities):
    """Per-row Shannon entropy in nats: :func:`domadapt.ops.entropy`, as numpy float64."""
    return np.asarray(ops.entropy(probabilities), dtype=np.float64)
