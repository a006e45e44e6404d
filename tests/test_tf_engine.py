"""MimicAugment(engine="tf"): every preset and style transfer in-graph, against the albumentations engine."""

import albumentations as A
import keras
import numpy as np
import pytest
import tensorflow as tf

import domadapt as da
from domadapt.strategies import _tf_presets, mimic_augment
from domadapt.strategies._tf_presets import TF_METHODS, TF_PRESETS
from domadapt.strategies.mimic_augment import PRESETS

METHODS = sorted(TF_METHODS)


@pytest.fixture(scope="module")
def photos(photos):
    """The shared photos (conftest) four times over: 32 images, enough for stable batch statistics."""
    return np.concatenate([photos] * 4)


@pytest.fixture(scope="module")
def target(photos):
    """Dark, blue-tinted target scenes: references for the style transfers."""
    return (photos[:8][::-1].astype("float32") * [0.35, 0.45, 0.9]).astype("uint8")


def make(name, engine, target, seed=0, **kwargs):
    if name in TF_METHODS:
        return da.MimicAugment.from_target(target, method=name, severity=0.8, seed=seed, engine=engine, **kwargs)
    return da.MimicAugment(name, severity=0.8, seed=seed, engine=engine, **kwargs)


def statistics(images, original):
    """Brightness, contrast, edge energy and mean change from the original, on a [0, 1] scale."""
    images, original = images.astype("float32") / 255, original.astype("float32") / 255
    edges = np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()
    return {"mean": images.mean(), "std": images.std(), "edges": edges, "change": np.abs(images - original).mean()}


def test_every_preset_and_method_has_an_in_graph_version():
    assert sorted(TF_PRESETS) == sorted(PRESETS)
    assert sorted(TF_METHODS) == sorted(mimic_augment.METHODS)


# Margins, measured over seeds 0-3 on these 32 images at severity 0.8 (largest engine
# difference for the same seed): mean 0.029 (fda: which references are drawn), std
# 0.014 (pda), edges 12.5 % (night: its noise), change 34 % (sun_flare, motion_blur:
# few large objects per image). An engine that did nothing fails the change check.
@pytest.mark.parametrize("name", sorted(TF_PRESETS) + METHODS)
def test_in_graph_statistics_agree_with_albumentations(name, photos, target):
    reference = statistics(make(name, "albumentations", target).augment(photos), photos)
    ours_images = make(name, "tf", target).augment(photos)
    assert ours_images.dtype == np.uint8 and ours_images.shape == photos.shape
    ours = statistics(ours_images, photos)
    assert abs(ours["mean"] - reference["mean"]) < 0.045, (ours, reference)
    assert abs(ours["std"] - reference["std"]) < 0.03, (ours, reference)
    assert abs(ours["edges"] - reference["edges"]) < 0.25 * reference["edges"] + 0.002, (ours, reference)
    assert abs(ours["change"] - reference["change"]) < 0.5 * reference["change"], (ours, reference)
    # Same seed, same pixels; another seed, others.
    np.testing.assert_array_equal(make(name, "tf", target).augment(photos), ours_images)
    assert not np.array_equal(make(name, "tf", target, seed=1).augment(photos), ours_images)
    # Float images stay float in [0, 1]; grey images stay grey.
    floats = make(name, "tf", target).augment(photos[:4].astype("float32") / 255)
    assert floats.dtype == np.float32 and 0.0 <= floats.min() and floats.max() <= 1.0
    assert make(name, "tf", target).augment(photos[:4, ..., :1]).shape == (4, 48, 48, 1)


@pytest.mark.parametrize("name", sorted(TF_PRESETS) + METHODS)
def test_xla_compiles_and_is_reproducible(name, photos, target):
    images = tf.constant(photos[:8].astype("float32") / 255)
    references = _tf_presets.references_like(target, 48, 48, 3) if name in TF_METHODS else None

    @tf.function(jit_compile=True)
    def augment(batch, seed_pair):
        return _tf_presets.apply(batch, name, 0.8, 1.0, seed_pair, references)

    first = augment(images, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(first, augment(images, tf.constant([3, 4])).numpy())
    assert not np.array_equal(first, augment(images, tf.constant([3, 5])).numpy())
    assert 0.0 <= first.min() and first.max() <= 1.0
    # XLA draws another random stream than eager TensorFlow: the same statistics, not the same pixels.
    eager = _tf_presets.apply(images, name, 0.8, 1.0, tf.constant([3, 4]), references).numpy()
    assert abs(first.mean() - eager.mean()) < 0.045


class _Probe(da.Strategy):
    """Records the mean of the source images the train step sees."""

    uses_target = False

    def setup(self, adapter):
        self.seen_mean = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen_mean")

    def loss(self, step):
        self.seen_mean.assign(tf.reduce_mean(tf.cast(step.source_images, tf.float32)))
        return {}


def test_adapter_with_tf_engine_styles_source_images_inside_the_compiled_step(photos):
    """from_target(method="histogram", engine="tf"): references come from the target stream
    at fit, and the XLA-compiled step trains on source images with the target's darkness."""
    keras.utils.set_random_seed(0)
    target_images = (photos * 0.3).astype("uint8")
    styler = da.MimicAugment.from_target(method="histogram", severity=1.0, num_references=4, seed=0, engine="tf")
    probe = _Probe()
    backbone = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[styler, probe])
    adapter.compile(optimizer="adam", jit_compile=True)
    history = adapter.fit(source=(photos, np.arange(len(photos)) % 2), target=target_images, epochs=1, batch_size=16,
                          verbose=0)
    assert styler.augments_in_step and not styler.transforms_source
    assert np.isfinite(history.history["loss"]).all()
    # The references in the graph are target images.
    stored = styler._reference_variable.numpy()
    assert np.allclose(stored.mean(), target_images.mean() / 255, atol=0.03)
    # Plain source images average 0.38; the last batch the step saw: histogram-matched
    # with blend 0.8-1.0 toward targets averaging 0.11.
    assert float(probe.seen_mean.numpy()) < 0.2 * 255, float(probe.seen_mean.numpy())


def test_auto_engine_picks_tf_only_with_a_gpu_and_serialises_the_choice(monkeypatch):
    strategy = da.MimicAugment("fog", seed=0)
    assert strategy.engine == "auto" and strategy.active_engine == "albumentations"  # this machine: no GPU
    assert strategy.transforms_source and not strategy.augments_in_step
    monkeypatch.setattr(mimic_augment, "_gpu_available", lambda: True)
    assert da.MimicAugment("fog").active_engine == "tf"
    assert da.MimicAugment.from_target(method="fda").active_engine == "tf"
    assert da.MimicAugment(A.ToGray(p=1.0)).active_engine == "albumentations"  # no in-graph version
    assert da.MimicAugment(A.HorizontalFlip(p=1.0)).active_engine == "albumentations"  # moves pixels and masks
    clone = da.MimicAugment.from_config(da.MimicAugment("snow", seed=2, engine="auto").get_config())
    assert clone.engine == "auto" and clone.active_engine == "tf"
    restored = da.MimicAugment.from_config(da.MimicAugment.from_target(method="pda", engine="tf").get_config())
    assert (restored.engine, restored.reference_method) == ("tf", "pda")


def test_auto_engine_adapters_have_the_same_variables_with_and_without_a_gpu(monkeypatch):
    """A saved adapter must load on a machine with or without a GPU: the variables
    engine="tf" needs exist whichever engine "auto" resolves to."""

    def variable_shapes():
        backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3)])
        strategy = da.MimicAugment.from_target(method="histogram", num_references=3, seed=0)
        adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[strategy])
        return strategy.active_engine, sorted(tuple(v.shape) for v in adapter.variables)

    engine_cpu, shapes_cpu = variable_shapes()
    monkeypatch.setattr(mimic_augment, "_gpu_available", lambda: True)
    engine_gpu, shapes_gpu = variable_shapes()
    assert (engine_cpu, engine_gpu) == ("albumentations", "tf")
    assert shapes_cpu == shapes_gpu and (3, 16, 16, 3) in shapes_cpu


def test_bad_engine_is_a_clear_error_at_construction():
    with pytest.raises(ValueError, match=r"Argument `engine` must be one of .*received engine='opencv'"):
        da.MimicAugment("rain", engine="opencv")
    with pytest.raises(ValueError, match="not for custom albumentations transforms"):
        da.MimicAugment(A.ToGray(p=1.0), engine="tf")
    # The in-graph engine changes pixel values only; a transform that moves pixels (and masks) has no
    # in-graph version: an error with engine="tf" (with "auto", the albumentations engine: the test above).
    with pytest.raises(ValueError, match="not for custom albumentations transforms"):
        da.MimicAugment(A.HorizontalFlip(p=1.0), engine="tf")
