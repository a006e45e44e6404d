"""Source error of a regression or segmentation model."""

import numpy as np

from domadapt.validators.base import Validator, outputs, task_of


def labeled_any(value, argument):
    """``(images, labels)`` as arrays, labels kept in their shape (regression targets, masks)."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"Argument `{argument}` must be (images, labels) for this validator.")
    images, labels = np.asarray(value[0]), np.asarray(value[1])
    if len(images) != len(labels):
        raise ValueError(f"Argument `{argument}`: {len(images)} images but {len(labels)} labels.")
    return images, labels


def per_example_losses(model, outputs_, labels):
    """One loss per example: cross-entropy (classification), squared error averaged over the outputs
    (regression), or per-pixel cross-entropy averaged over the labeled pixels (segmentation)."""
    task = task_of(model)
    if task == "regression":
        errors = np.square(outputs_.reshape(len(outputs_), -1) - labels.reshape(len(labels), -1).astype(np.float64))
        return errors.mean(axis=1)
    if task == "segmentation":
        labels = labels.reshape(outputs_.shape[:-1]).astype(np.int64)
        ignore_index = model.task.ignore_index
        valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
        chosen = np.take_along_axis(outputs_, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
        per_pixel = -np.log(np.clip(chosen, 1e-12, 1.0)) * valid
        return per_pixel.reshape(len(labels), -1).sum(axis=1) / np.maximum(valid.reshape(len(labels), -1).sum(axis=1), 1)
    labels = labels.reshape(-1).astype(np.int64)
    return -np.log(np.clip(outputs_[np.arange(len(labels)), labels], 1e-12, 1.0))


class SourceError(Validator):
    """Error on held-out labeled source data, for regression and segmentation. Lower is better.

    Regression: the mean squared error. Segmentation: 1 - mean IoU (ignored pixels
    left out; :func:`domadapt.tasks.mean_iou`). The counterpart of ``source_accuracy``
    for classification: it ignores the target, so it cannot see negative transfer,
    but a rise flags an adaptation that broke the model on its own data.
    """

    name = "source_error"
    requires = ("labeled_source",)
    higher_is_better = False
    tasks = ("regression", "segmentation")

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        images, labels = labeled_any(source, "source")
        predictions, _ = outputs(model, images, domain="source")
        if task_of(model) == "regression":
            return float(np.mean(per_example_losses(model, predictions, labels)))
        from domadapt.tasks import mean_iou
        return 1.0 - mean_iou(labels, predictions, predictions.shape[-1], model.task.ignore_index)
