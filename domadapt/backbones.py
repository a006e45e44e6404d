"""Headless backbones by name (keras.applications) or by path (a saved .keras model)."""

from __future__ import annotations

import os
import warnings

import keras

__all__ = ["APPLICATIONS", "load_backbone"]

# Lower-case names users type -> keras.applications constructors.
APPLICATIONS = {
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3Small",
    "mobilenetv3large": "MobileNetV3Large",
    "resnet50": "ResNet50",
    "resnet50v2": "ResNet50V2",
    "efficientnetb0": "EfficientNetB0",
    "efficientnetv2b0": "EfficientNetV2B0",
    "densenet121": "DenseNet121",
    "convnexttiny": "ConvNeXtTiny",
}


def load_backbone(name_or_path, weights="auto", input_shape=(96, 96, 3)):
    """A headless backbone from a keras.applications name or a saved ``.keras`` file.

    Args:
        name_or_path: e.g. ``"mobilenetv3small"`` (see ``APPLICATIONS``), or the path
            of a saved Keras model (a saved ``DomainAdapter`` gives its feature extractor).
        weights: ``"imagenet"`` (downloaded by Keras, or read from its cache
            ``~/.keras/models``), a local weights file, ``None``/``"none"`` (random
            initialisation), or ``"auto"``: ImageNet weights when they can be had,
            else random with a warning.
        input_shape: image shape for keras.applications models.

    Returns:
        A ``keras.Model`` from images to its last feature map (no classification top).

    Example:

    ```python
    from domadapt.backbones import load_backbone
    backbone = load_backbone("mobilenetv3small", weights=None, input_shape=(64, 64, 3))
    ```
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"Argument `name_or_path` must be a keras.applications name or the path of a saved model; "
            f"received {type(name_or_path).__name__}: {name_or_path!r}."
        )
    name_or_path = os.fspath(name_or_path)
    if os.path.exists(name_or_path):
        model = keras.saving.load_model(name_or_path)
        return getattr(model, "feature_extractor", model)
    key = name_or_path.lower().replace("_", "").replace("-", "")
    if key not in APPLICATIONS:
        raise ValueError(
            f"Unknown backbone {name_or_path!r}: not a file, and not one of {sorted(APPLICATIONS)}."
        )
    constructor = getattr(keras.applications, APPLICATIONS[key])
    if weights in (None, "none", "None"):
        return constructor(include_top=False, weights=None, input_shape=tuple(input_shape))
    if weights not in ("imagenet", "auto") and not os.path.exists(str(weights)):
        raise FileNotFoundError(f"Weights file {weights!r} not found.")
    try:
        return constructor(include_top=False, weights="imagenet" if weights == "auto" else weights,
                           input_shape=tuple(input_shape))
    except Exception as error:
        if weights not in ("imagenet", "auto"):
            raise
        message = (
            f"Could not load ImageNet weights for {APPLICATIONS[key]} ({type(error).__name__}: {error}). "
            "Without internet access, download the 'no top' weights file on another machine and pass its "
            "path as weights='/path/to/file.h5' (command line: --weights PATH), or put it in ~/.keras/models/."
        )
        if weights == "imagenet":
            raise RuntimeError(message) from None
        warnings.warn(message + " Using a randomly initialised backbone instead.", stacklevel=2)
        return constructor(include_top=False, weights=None, input_shape=tuple(input_shape))
