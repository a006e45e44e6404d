"""Reliability: non-finite losses, mixed precision, distribution, interruption, fuzzed bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp_backbone

import domadapt as da


def linear_backbone():
    # No relu: oneDNN's relu maps NaN to 0, which would hide a NaN input.
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(16)])


def test_a_nan_image_deep_in_a_dataset_stops_training_naming_the_term_and_step(moons):
    source_x, source_y, target_x, _ = moons
    images = source_x[:256].copy()
    images[200] = np.nan  # batch 7 of 8 (batch size 32, no shuffle)
    source = tf.data.Dataset.from_tensor_slices((images, source_y[:256])).batch(32)
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(linear_backbone(), num_classes=2, strategies=[da.MMD()])
    adapter.compile(optimizer=keras.optimizers.SGD(0.01))
    with pytest.raises(da.callbacks.NonFiniteLossError, match=r"'cls_loss' = nan.*epoch 1, batch 7, optimizer step 7"):
        adapter.fit(source=source, target=target_x, epochs=2, verbose=0, shuffle=False)
    assert all(np.isfinite(w).all() for w in adapter.get_weights())
    # Unchanged by the bad step: SGD without momentum and the step's gradients dropped.
    before = [w.copy() for w in adapter.get_weights()]
    adapter.compile(optimizer=keras.optimizers.SGD(0.0))
    assert all(np.array_equal(a, b) for a, b in zip(before, adapter.get_weights()))


def test_nonfinite_guard_can_be_turned_off(moons):
    source_x, source_y, target_x, _ = moons
    images = source_x[:64].copy()
    images[40] = np.inf
    source = tf.data.Dataset.from_tensor_slices((images, source_y[:64])).batch(32)
    adapter = da.DomainAdapter(linear_backbone(), num_classes=2)
    adapter.compile(optimizer=keras.optimizers.SGD(0.01))
    history = adapter.fit(source=source, epochs=1, verbose=0, shuffle=False, stop_on_nonfinite=False)
    assert not np.isfinite(history.history["loss"][0])
