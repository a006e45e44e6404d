"""A contract test for strategies, in the spirit of Keras' ``run_layer_test``."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

__all__ = ["run_strategy_test"]


def _tiny_backbone(image_shape):
    return keras.Sequential(
        [
            keras.Input(image_shape),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv_top"),
        ],
        name="tiny_backbone",
    )


def run_strategy_test(strategy_factory, *, image_shape=(16, 16, 3), num_classes=3, steps=2, jit_compile=True, seed=0):
    """Check that a strategy keeps the contract every strategy keeps; raise ``AssertionError`` if not.

    Use it in the test of a new strategy: one call covers what every strategy must
    do, so the strategy's own test can focus on what it does.

    Checks, in order:

    1. config round trip: ``deserialize(serialize(strategy))`` has the same class and
       ``get_config()``;
    2. training: a tiny convolutional backbone (with batch norm) trains ``steps``
       steps of one epoch under ``jit_compile`` on uint8 images, with labeled source,
       unlabeled target and a few labeled target images; every name the strategy
       declares in ``log_names`` appears in the history with a finite value;
    3. save/load: the adapter saved as ``.keras`` and loaded again holds the same
       strategy classes and weights, and predicts the same probabilities.

    Args:
        strategy_factory: a callable with no arguments returning a new strategy (a
            class with usable defaults works).
        image_shape, num_classes: the tiny problem's images and classes.
        steps: optimizer steps trained.
        jit_compile: compile the training step with XLA.
        seed: seed of the data and weights.

    Returns:
        The ``keras.callbacks.History`` of the training run.

    Example:

    ```python
    import domadapt as da
    from domadapt.testing import run_strategy_test
    history = run_strategy_test(lambda: da.CORAL(weight=1.0))
    print(sorted(history.history))  # ['cls_loss', 'coral_loss', 'loss', 'target_cls_loss']
    ```
    """
    if not callable(strategy_factory):
        raise TypeError(f"Argument `strategy_factory` must be a callable returning a strategy; "
                        f"received {type(strategy_factory).__name__}.")
    from domadapt.adapter import DomainAdapter
    from domadapt.strategy import Strategy
    from domadapt.tasks import Segmentation, supported_tasks

    strategy = strategy_factory()
    name = type(strategy).__name__
    if not isinstance(strategy, Strategy):
        raise TypeError(f"Argument `strategy_factory` must return a domadapt Strategy; it returned {name}.")

    # 1. Config round trip.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(strategy))
    assert type(restored) is type(strategy), f"{name}: deserialised as {type(restored).__name__}."
    assert restored.get_config() == strategy.get_config(), (
        f"{name}: get_config() changes through serialisation:\n{strategy.get_config()}\n!=\n{restored.get_config()}"
    )

    # 2. A few training steps under XLA; declared log names reported.
    rng = np.random.default_rng(seed)
    count = 8 * steps

    def images(offset):
        return np.clip(rng.normal(128 + offset, 40, (count, *image_shape)), 0, 255).astype("uint8")

    # A strategy without classification (segmentation only) runs on masks, logits upsampled to the images.
    segmentation = "classification" not in supported_tasks(strategy)
    labels = (np.arange(count * image_shape[0] * image_shape[1]).reshape(count, *image_shape[:2]) % num_classes
              if segmentation else np.arange(count) % num_classes)
    source = (images(0), labels)
    target = images(40)
    target_labeled = (target[:num_classes], labels[:num_classes])
    keras.utils.set_random_seed(seed)
    adapter = DomainAdapter(_tiny_backbone(image_shape), num_classes=num_classes, strategies=[strategy],
                            preprocess=keras.layers.Rescaling(1 / 255),
                            task=Segmentation(upsample_logits=True) if segmentation else "classification")
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    history = adapter.fit(source=source, target=target, target_labeled=target_labeled, epochs=1, batch_size=8,
                          steps_per_epoch=steps, seed=seed, verbose=0)
    declared = list(type(strategy).log_names)
    missing = [n for n in declared if n not in history.history]
    assert not missing, f"{name}: declares {declared} in log_names but {missing} never reached the history."
    not_finite = [n for n in declared if not np.all(np.isfinite(history.history[n]))]
    assert not not_finite, f"{name}: {not_finite} are not finite after {steps} steps: {history.history}."
    assert np.isfinite(history.history["loss"][-1]), f"{name}: the total loss is {history.history['loss'][-1]}."

    # 3. Save and load with weights.
    probe = images(40)[:4]
    expected = adapter.predict(probe, verbose=0)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimizer-state notes, deprecated aliases
        path = Path(folder) / "adapter.keras"
        adapter.save(path)
        reloaded = keras.saving.load_model(path)
    assert [type(s) for s in reloaded.strategies] == [type(s) for s in adapter.strategies], (
        f"{name}: reloaded strategies are {[type(s).__name__ for s in reloaded.strategies]}."
    )
    # By layer and variable name: a sub-model created in setup() and one restored from
    # the config are tracked in a different order, under different path prefixes.
    def by_name(variables):
        return {"/".join(v.path.split("/")[-2:]): v.numpy() for v in variables}

    saved_weights = by_name(adapter.strategies[0].weights)
    loaded_weights = by_name(reloaded.strategies[0].weights)
    assert sorted(saved_weights) == sorted(loaded_weights), (
        f"{name}: weights {sorted(saved_weights)} saved but {sorted(loaded_weights)} after loading."
    )
    for path, value in saved_weights.items():
        np.testing.assert_array_equal(loaded_weights[path], value, err_msg=f"{name}: {path} differs after save/load.")
    np.testing.assert_allclose(reloaded.predict(probe, verbose=0), expected, rtol=1e-5, atol=1e-6,
                               err_msg=f"{name}: predictions differ after save/load.")
    return history
