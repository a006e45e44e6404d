"""Headless backbones by name (keras.applications) or by path (a saved .keras model).

Every backbone :func:`load_backbone` builds takes RGB pixels in ``[0, 255]`` (uint8
images as read from files): the family's ``preprocess_input`` is inside the model, as
an :class:`ImageNetPreprocessing` layer, or is the model's own rescaling layer
(MobileNetV3, EfficientNet, EfficientNetV2, ConvNeXt). Feeding raw pixels to a
ResNet50 built by ``keras.applications`` directly gives features of wrongly scaled
inputs; these do not.
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import ops

__all__ = ["APPLICATIONS", "PREPROCESSING", "ImageNetPreprocessing", "load_backbone"]

# Lower-case names users type -> keras.applications constructors.
APPLICATIONS = {
    "mobilenet": "MobileNet",
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3Small",
    "mobilenetv3large": "MobileNetV3Large",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "resnet50v2": "ResNet50V2",
    "resnet101v2": "ResNet101V2",
    "resnet152v2": "ResNet152V2",
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "xception": "Xception",
    "inceptionv3": "InceptionV3",
    "inceptionresnetv2": "InceptionResNetV2",
    "nasnetmobile": "NASNetMobile",
    "efficientnetb0": "EfficientNetB0",
    "efficientnetb1": "EfficientNetB1",
    "efficientnetb2": "EfficientNetB2",
    "efficientnetb3": "EfficientNetB3",
    "efficientnetv2b0": "EfficientNetV2B0",
    "efficientnetv2b1": "EfficientNetV2B1",
    "efficientnetv2s": "EfficientNetV2S",
    "densenet121": "DenseNet121",
    "densenet169": "DenseNet169",
    "densenet201": "DenseNet201",
    "convnexttiny": "ConvNeXtTiny",
    "convnextsmall": "ConvNeXtSmall",
}

# The input scaling each family was trained with (its `preprocess_input` mode), added as a
# layer; None: the model rescales its own input (include_preprocessing, on by default).
PREPROCESSING = {
    "MobileNet": "tf", "MobileNetV2": "tf", "MobileNetV3Small": None, "MobileNetV3Large": None,
    "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe",
    "ResNet50V2": "tf", "ResNet101V2": "tf", "ResNet152V2": "tf",
    "VGG16": "caffe", "VGG19": "caffe", "Xception": "tf", "InceptionV3": "tf", "InceptionResNetV2": "tf",
    "NASNetMobile": "tf",
    "EfficientNetB0": None, "EfficientNetB1": None, "EfficientNetB2": None, "EfficientNetB3": None,
    "EfficientNetV2B0": None, "EfficientNetV2B1": None, "EfficientNetV2S": None,
    "DenseNet121": "torch", "DenseNet169": "torch", "DenseNet201": "torch",
    "ConvNeXtTiny": None, "ConvNeXtSmall": None,
}

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="domadapt")
class ImageNetPreprocessing(keras.layers.Layer):
    """keras.applications' ``preprocess_input`` as a layer: RGB pixels in [0, 255] to a family's input scale.

    Inside the model, the scaling travels with it (saved, reloaded, exported) and
    nobody can forget it. Modes, as in ``keras.applications.imagenet_utils``:
    ``"tf"``: x / 127.5 - 1 (to [-1, 1]); ``"torch"``: (x / 255 - mean) / std with
    ImageNet's RGB mean and std; ``"caffe"``: RGB to BGR, then minus ImageNet's BGR
    mean (no scaling).

    Args:
        mode: ``"tf"``, ``"torch"`` or ``"caffe"``.

    Example:

    ```python
    import numpy as np
    from domadapt.backbones import ImageNetPreprocessing
    print(ImageNetPreprocessing("tf")(np.array([[0.0, 127.5, 255.0]])))  # [[-1. 0. 1.]]
    ```
    """

    MODES = ("tf", "torch", "caffe")

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Argument `mode` must be one of {self.MODES}; received mode={mode!r}.")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.convert_to_tensor(_IMAGENET_MEAN_RGB, x.dtype)) / ops.convert_to_tensor(
                _IMAGENET_STD_RGB, x.dtype)
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _with_preprocessing(constructor, mode, weights, input_shape):
    """The family's model with an ImageNetPreprocessing layer after its input, and the weights of ``weights``.

    keras.applications loads ``weights`` (ImageNet or a file) into the plain model it
    builds; the weights are then copied, layer by layer in order, into the same
    architecture built on the preprocessed input (one flat functional model, so that
    the gap profile still sees every layer).
    """
    plain = constructor(include_top=False, weights=weights, input_shape=tuple(input_shape))
    inputs = keras.Input(tuple(input_shape), name="images")
    preprocessed = ImageNetPreprocessing(mode, name=f"{mode}_preprocessing")(inputs)
    model = constructor(include_top=False, weights=None, input_tensor=preprocessed)
    if weights is not None:
        source = [layer for layer in plain.layers if layer.weights]
        destination = [layer for layer in model.layers if layer.weights]
        for from_layer, to_layer in zip(source, destination, strict=True):
            to_layer.set_weights(from_layer.get_weights())
    return model


def load_backbone(name_or_path, weights="auto", input_shape=(96, 96, 3)):
    """A headless backbone from a keras.applications name or a saved ``.keras`` file.

    keras.applications backbones take RGB pixels in ``[0, 255]``: the family's
    preprocessing is part of the model (see the module docstring and ``PREPROCESSING``).

    Args:
        name_or_path: e.g. ``"mobilenetv3small"`` (see ``APPLICATIONS``), or the path
            of a saved Keras model (a saved ``DomainAdapter`` gives its feature extractor).
        weights: ``"imagenet"`` (downloaded by Keras, or read from its cache
            ``~/.keras/models``), a local weights file (e.g. the "no top" ``.h5`` file
            Keras downloads, or a ``.weights.h5`` saved from the same headless
            architecture), ``None``/``"none"`` (random initialisation), or ``"auto"``:
            ImageNet weights when they can be had, else random with a warning.
        input_shape: image shape for keras.applications models.

    Returns:
        A ``keras.Model`` from images to its last feature map (no classification top).

    Example:

    ```python
    from domadapt.backbones import load_backbone
    backbone = load_backbone("resnet50", weights=None, input_shape=(64, 64, 3))
    print(backbone.layers[1].name)  # caffe_preprocessing
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
    family = APPLICATIONS[key]
    constructor = getattr(keras.applications, family)
    mode = PREPROCESSING[family]

    def build(chosen_weights):
        if mode is None:
            return constructor(include_top=False, weights=chosen_weights, input_shape=tuple(input_shape))
        return _with_preprocessing(constructor, mode, chosen_weights, input_shape)

    if weights in (None, "none", "None"):
        return build(None)
    if weights not in ("imagenet", "auto") and not os.path.exists(str(weights)):
        raise FileNotFoundError(f"Weights file {weights!r} not found.")
    try:
        return build("imagenet" if weights == "auto" else os.fspath(weights))
    except Exception as error:
        if weights not in ("imagenet", "auto"):
            raise ValueError(f"Could not load the weights file {weights!r} into a headless {family} with input "
                             f"shape {tuple(input_shape)}: {type(error).__name__}: {error}") from None
        message = (
            f"Could not load ImageNet weights for {family} ({type(error).__name__}: {error}). "
            "Without internet access, download the 'no top' weights file on another machine and pass its "
            "path as weights='/path/to/file.h5' (command line: --weights PATH), or put it in ~/.keras/models/."
        )
        if weights == "imagenet":
            raise RuntimeError(message) from None
        warnings.warn(message + " Using a randomly initialised backbone instead.", stacklevel=2)
        return build(None)
