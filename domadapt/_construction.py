"""DomainAdapter's construction checks: the backbone's input and output, the head's logits."""

from __future__ import annotations

import numbers

import keras
import numpy as np

_POOLING = {
    3: keras.layers.GlobalAveragePooling1D,
    4: keras.layers.GlobalAveragePooling2D,
    5: keras.layers.GlobalAveragePooling3D,
}
BN_MODES = ("domain", "domain_affine", "joint", "separate")


class Untracked:
    """A plain holder Keras' tracker does not look into."""

    def __init__(self, **values):
        self.__dict__.update(values)


def image_shape_of(backbone, input_shape):
    """The image shape from ``input_shape`` or the backbone's own input."""
    if input_shape is not None:
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (tuple, list)) or not input_shape or any(
                d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1)
                for d in input_shape):
            raise ValueError(f"Argument `input_shape` must be a tuple of positive integers (or None for a free "
                             f"size), one image's shape such as (96, 96, 3); received input_shape={input_shape!r}.")
        return tuple(None if d is None else int(d) for d in input_shape)
    try:
        shape = backbone.input_shape
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        raise ValueError(
            "Argument `input_shape` is required: the backbone "
            f"{getattr(backbone, 'name', backbone)!r} has no defined input shape. Pass e.g. "
            "input_shape=(96, 96, 3), or build the backbone with keras.Input first."
        )
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ValueError(
                f"The backbone has {len(shape)} inputs; DomainAdapter needs a backbone with one image input."
            )
        shape = shape[0]
    return tuple(shape[1:])


def check_arguments(backbone, num_classes, head, preprocess, bn_mode):
    """Clear errors for DomainAdapter's constructor arguments."""
    if not isinstance(backbone, keras.layers.Layer):
        raise TypeError(
            f"Argument `backbone` must be a keras.Model or keras.layers.Layer; received {type(backbone).__name__}."
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2
    ):
        raise ValueError(f"Argument `num_classes` must be an integer >= 2; received num_classes={num_classes!r}.")
    if num_classes is None and head is None:
        raise ValueError("Pass `num_classes=` to build a classification head, or your own `head=` layer.")
    if bn_mode not in BN_MODES:
        raise ValueError(f"Argument `bn_mode` must be one of {BN_MODES}; received bn_mode={bn_mode!r}.")
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"Argument `preprocess` must be a Keras layer or a callable; received {preprocess!r}.")
    if head is not None and not callable(head):
        raise TypeError(f"Argument `head` must be a Keras layer or model; received {head!r}.")


def _ends_in_softmax(model):
    """The name of ``model``'s last layer when it applies a softmax (a Dense/Activation/Softmax layer), else None."""
    layer = model
    while isinstance(layer, keras.Model) and layer.layers:  # the last layer of a Sequential/functional model
        layer = layer.layers[-1]
    if isinstance(layer, keras.layers.Softmax) or getattr(layer, "activation", None) is keras.activations.softmax:
        return layer.name
    return None


def pooled_features(backbone, inputs, image_shape):
    """``(pooling layer or None, features)``: the backbone's output pooled to ``(batch, features)``."""
    classifier_layer = _ends_in_softmax(backbone)
    if classifier_layer is not None:
        raise ValueError(
            f"Argument `backbone` ends in a classifier (layer {classifier_layer!r} applies a softmax): its "
            "outputs are class probabilities, not features. Build it without its top, e.g. "
            "keras.applications.ResNet50(include_top=False, ...), or pass a model that ends before the classifier."
        )
    try:
        feature_map = backbone(inputs)
    except Exception as error:
        raise ValueError(f"The backbone could not be called on images of shape {image_shape}: {error}") from error
    if not isinstance(feature_map, keras.KerasTensor):
        raise ValueError(
            "The backbone must return one tensor (a feature map or a feature vector); it returns "
            f"{type(feature_map).__name__} of {len(feature_map)} outputs. Wrap it in a keras.Model "
            "that selects one output."
        )
    rank = len(feature_map.shape)
    if rank not in (2, *_POOLING):
        raise ValueError(
            f"The backbone's output of shape {feature_map.shape} cannot be pooled to a feature "
            "vector: expected (batch, features) or a channels-last feature map of rank 3 to 5."
        )
    pooling = _POOLING[rank](name="feature_pooling") if rank in _POOLING else None
    features = pooling(feature_map) if pooling is not None else feature_map
    if features.shape[-1] is None:
        raise ValueError(f"The backbone's feature width is undefined (output shape {feature_map.shape}).")
    return pooling, features


def checked_logits(head, features, num_classes):
    """The head's logits of ``features``, checked to be ``(batch, num_classes)`` logits."""
    softmax_layer = _ends_in_softmax(head)
    if softmax_layer is not None:
        raise ValueError(
            f"Argument `head` must output logits; its last layer {softmax_layer!r} applies a softmax, and "
            "DomainAdapter applies its own (a double softmax trains badly). Remove that activation."
        )
    logits = head(features)
    if not isinstance(logits, keras.KerasTensor) or len(logits.shape) != 2:
        raise ValueError(
            f"Argument `head` must map features of shape (batch, {features.shape[-1]}) to logits "
            f"of shape (batch, num_classes); it returns {getattr(logits, 'shape', logits)}."
        )
    if num_classes is not None and logits.shape[-1] != num_classes:
        raise ValueError(f"Argument `head` returns {logits.shape[-1]} logits but num_classes={num_classes}.")
    return logits


def unweighted_alignment(strategies):
    """Names of the strategies that align source and target as if their class mixes were equal.

    These are the alignment strategies (DANN, CDAN, MMD, CORAL: ``class_weights=``)
    built without ``class_weights``. Reading the strategies costs nothing; whether
    the class mixes actually differ needs a trained classifier
    (``da.gap.label_shift_check``), so ``fit`` cannot tell before its first step.
    """
    # Imported when called: this module loads before (and without) the strategies.
    from domadapt.strategies._class_weights import ClassWeightedAlignment
    from domadapt.strategy import flatten_strategies

    return [type(strategy).__name__ for strategy in flatten_strategies(strategies)
            if isinstance(strategy, ClassWeightedAlignment) and strategy.class_weights is None]
