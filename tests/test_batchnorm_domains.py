"""bn_mode="domain" (the default): per-domain batch-norm statistics, the target's in the exported classifier."""

import warnings

import keras
import numpy as np
import pytest
import domadapt as da
from domadapt.batchnorm import batchnorm_layers
from domadapt.datasets import batchnorm_digits_cnn as bn_cnn
from domadapt.datasets import foggy_digits


def accuracy(model, images, labels):
    return float(np.mean(model.predict(images, verbose=0).argmax(axis=1) == labels))


def statistics(model):
    return {layer.name: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
            for layer in batchnorm_layers(model)}


def trained(bn_mode, seed, source, target_images, epochs=8):
    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(bn_cnn(), num_classes=10, bn_mode=bn_mode)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
    adapter.fit(source=source, target=target_images, epochs=epochs, batch_size=64, verbose=0, seed=seed)
    return adapter


@pytest.fixture(scope="module")
def foggy_runs():
    source, (target_images, target_labels) = foggy_digits()
    return source, (target_images, target_labels), {
        (bn_mode, seed): trained(bn_mode, seed, source, target_images) for bn_mode in ("joint", "domain") for seed in (0, 1)
    }


def test_exported_classifier_beats_the_old_default_on_a_foggy_camera(foggy_runs):
    # Measured (source-only, 8 epochs, seeds 0-2): joint 9.1/10.5/10.5%, domain 55.1/64.5/56.6% on the target.
    _, (target_images, target_labels), runs = foggy_runs
    scores = {key: accuracy(adapter.classifier, target_images, target_labels) for key, adapter in runs.items()}
    joint = np.mean([scores["joint", seed] for seed in (0, 1)])
    domain = np.mean([scores["domain", seed] for seed in (0, 1)])
    assert domain >= 0.45, scores
    assert domain - joint >= 0.3, scores


def test_a_second_reestimation_on_the_target_changes_nothing(foggy_runs):
    _, (target_images, target_labels), runs = foggy_runs
    for seed in (0, 1):
        classifier = runs["domain", seed].classifier
        before_accuracy, before = accuracy(classifier, target_images, target_labels), statistics(classifier)
        copy = keras.models.clone_model(classifier)
        copy.set_weights(classifier.get_weights())
        assert da.reestimate_batchnorm_statistics(copy, target_images) == len(target_images)
        assert abs(accuracy(copy, target_images, target_labels) - before_accuracy) <= 0.01
        for name, (mean, variance) in statistics(copy).items():  # the model's statistics are the final weights'
            np.testing.assert_allclose(mean, before[name][0], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(variance, before[name][1], rtol=1e-4, atol=1e-4)


def test_source_classifier_carries_the_source_statistics_and_save_load_keeps_both(foggy_runs, tmp_path):
    (source_images, source_labels), (target_images, target_labels), runs = foggy_runs
    adapter = runs["domain", 0]
    source_classifier = adapter.source_classifier
    copy = keras.models.clone_model(adapter.classifier)
    copy.set_weights(adapter.classifier.get_weights())
    da.reestimate_batchnorm_statistics(copy, source_images)
    expected = statistics(copy)
    for name, (mean, variance) in statistics(source_classifier).items():
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(variance, expected[name][1], rtol=1e-4, atol=1e-4)
    # Each domain is best scored with its own statistics.
    assert accuracy(source_classifier, source_images, source_labels) > accuracy(adapter.classifier, source_images,
                                                                                 source_labels) + 0.2
    assert accuracy(adapter.classifier, target_images, target_labels) > accuracy(source_classifier, target_images,
                                                                                 target_labels) + 0.2
    assert da.validators.SourceAccuracy()(adapter, (source_images, source_labels)) == pytest.approx(
        accuracy(source_classifier, source_images, source_labels))
    adapter.save(tmp_path / "adapter.keras")
    restored = keras.saving.load_model(tmp_path / "adapter.keras")
    for model in ("classifier", "source_classifier"):
        np.testing.assert_allclose(getattr(restored, model).predict(target_images[:64], verbose=0),
                                   getattr(adapter, model).predict(target_images[:64], verbose=0), atol=1e-5)


@pytest.mark.parametrize("jit_compile,policy", [(False, "float32"), (True, "mixed_float16")])
def test_in_training_the_model_statistics_track_the_target_and_the_source_keeps_its_own(jit_compile, policy):
    rng = np.random.default_rng(0)
    source = (rng.normal(size=(64, 3)).astype("float32"), rng.integers(0, 2, 64))
    target = rng.normal(size=(64, 3)).astype("float32") + 5.0
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((self.model._batchnorm.layers[0].moving_mean.numpy().copy(),
                         self.model.source_batchnorm_statistics[0].numpy().copy()))

    keras.mixed_precision.set_global_policy(policy)
    try:
        backbone = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.0),
                                     keras.layers.Dense(4)])
        adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD()])
        adapter.compile(optimizer="sgd", jit_compile=jit_compile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 64 target images: the few-images warning
            adapter.fit(source=source, target=target, epochs=1, batch_size=32, verbose=0, callbacks=[Record()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (model_mean, source_mean), _ = seen  # momentum 0: each is the last batch's mean of its own domain
    assert np.all(np.abs(model_mean - 5.0) < 0.6) and np.all(np.abs(source_mean) < 0.6)
    # After fit: re-estimated on all images of each domain.
    np.testing.assert_allclose(backbone.layers[0].moving_mean.numpy(), target.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(adapter.source_batchnorm_statistics[0].numpy(), source[0].mean(axis=0), atol=1e-3)


def test_nested_keras_applications_batchnorm_gets_the_target_statistics():
    backbone = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None,
                                                   include_preprocessing=False, minimalistic=True)
    rng = np.random.default_rng(0)
    source = (rng.uniform(size=(64, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 64))
    target = rng.uniform(size=(64, 32, 32, 3)).astype("float32") * 0.3 + 0.6
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=[da.FineTune("all", verbose=False)])
    adapter.compile(optimizer="adam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.fit(source=source, target=target, epochs=1, batch_size=32, verbose=0)
    first = backbone.get_layer("conv_bn")  # the first BN layer the images reach (frozen by FineTune)
    inputs = keras.Model(backbone.inputs, backbone.get_layer("conv").output).predict(target, verbose=0)
    np.testing.assert_allclose(first.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-3)
    assert not first.trainable  # the flags FineTune set are kept


def test_few_target_images_warn_once_and_bad_arguments_are_clear_errors():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="re-estimated on 40 images; below 128"):
        assert da.reestimate_batchnorm_statistics(model, np.ones((40, 4)), batch_size=16) == 40
    assert da.reestimate_batchnorm_statistics(model, np.ones((1000, 4)), max_images=300) == 300
    with pytest.raises(ValueError, match="`max_images` must be None or a positive integer; received max_images=0"):
        da.reestimate_batchnorm_statistics(model, np.ones((8, 4)), max_images=0)
    with pytest.raises(ValueError, match="`bn_mode` must be one of"):
        da.DomainAdapter(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), num_classes=2, bn_mode="target")
    with pytest.raises(ValueError, match="no BatchNormalization"):
        da.reestimate_batchnorm_statistics(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), np.ones((4, 4)))


def _affine_adapter(strategies, frozen_first=False, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn_a"),
                                 keras.layers.ReLU(), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn_b")])
    if frozen_first:
        backbone.get_layer("bn_a").trainable = False
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=strategies, bn_mode="domain_affine")
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(seed)
    source_images = rng.normal(size=(256, 3)).astype("float32")
    source = (source_images, (source_images[:, 0] > 0).astype("int64"))
    target = (rng.normal(size=(256, 3)) * 3.0 + 2.0).astype("float32")
    adapter.fit(source=source, target=target, epochs=2, batch_size=64, verbose=0, seed=seed)
    return adapter, source, target


def test_domain_affine_trains_the_source_scale_and_shift_on_source_batches_only():
    adapter, _, _ = _affine_adapter([])
    for layer, affine in zip(batchnorm_layers(adapter.classifier), adapter.source_batchnorm_affine):
        # Source-only: no loss reaches the target's scale and shift; the source's learned from the labels.
        np.testing.assert_array_equal(layer.gamma.numpy(), np.ones(8, "float32"))
        np.testing.assert_array_equal(layer.beta.numpy(), np.zeros(8, "float32"))
        assert np.abs(affine["gamma"].numpy() - 1.0).max() > 1e-3 and np.abs(affine["beta"].numpy()).max() > 1e-3
    adapted, _, _ = _affine_adapter([da.MMD()])
    moved = [np.abs(layer.gamma.numpy() - 1.0).max() for layer in batchnorm_layers(adapted.classifier)]
    assert max(moved) > 1e-3, moved  # an alignment loss trains the target's


def test_domain_affine_source_classifier_carries_the_source_parameters_and_survives_save_load(tmp_path):
    adapter, (source_images, _), target = _affine_adapter([da.MMD()])
    expected = keras.models.clone_model(adapter.classifier)
    expected.set_weights(adapter.classifier.get_weights())
    statistics = iter(adapter.source_batchnorm_statistics)
    copies = {layer.name: layer for layer in batchnorm_layers(expected)}
    for original, affine in zip(adapter._batchnorm.layers, adapter.source_batchnorm_affine):
        layer = copies[original.name]
        layer.gamma.assign(affine["gamma"])
        layer.beta.assign(affine["beta"])
        layer.moving_mean.assign(next(statistics))
        layer.moving_variance.assign(next(statistics))
    np.testing.assert_allclose(adapter.source_classifier.predict(source_images, verbose=0),
                               expected.predict(source_images, verbose=0), atol=1e-5)
    assert not np.allclose(adapter.classifier.predict(source_images, verbose=0),
                           expected.predict(source_images, verbose=0), atol=1e-3)
    adapter.save(tmp_path / "adapter.keras")
    restored = keras.saving.load_model(tmp_path / "adapter.keras")
    assert restored.bn_mode == "domain_affine"
    for model in ("classifier", "source_classifier"):
        np.testing.assert_allclose(getattr(restored, model).predict(target, verbose=0),
                                   getattr(adapter, model).predict(target, verbose=0), atol=1e-5)


def test_domain_affine_frozen_layer_shares_its_scale_and_shift():
    adapter, _, _ = _affine_adapter([da.MMD()], frozen_first=True)
    (frozen, frozen_affine), (trained, trained_affine) = sorted(
        zip(adapter._batchnorm.layers, adapter.source_batchnorm_affine), key=lambda pair: pair[0].name)  # bn_a, bn_b
    assert not frozen.trainable and trained.trainable
    np.testing.assert_array_equal(frozen_affine["gamma"].numpy(), frozen.gamma.numpy())
    np.testing.assert_array_equal(frozen_affine["beta"].numpy(), frozen.beta.numpy())
    assert not np.allclose(trained_affine["gamma"].numpy(), trained.gamma.numpy())


def test_domain_affine_under_xla_and_mixed_precision_trains_both_domains_parameters():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                                     keras.layers.ReLU()])
        adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD()], bn_mode="domain_affine")
        adapter.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
        rng = np.random.default_rng(0)
        source_images = rng.normal(size=(256, 3)).astype("float32")
        history = adapter.fit(source=(source_images, (source_images[:, 0] > 0).astype("int64")),
                              target=(rng.normal(size=(256, 3)) * 3.0 + 2.0).astype("float32"), epochs=2,
                              batch_size=64, verbose=0, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    (layer,), (affine,) = adapter._batchnorm.layers, adapter.source_batchnorm_affine
    assert affine["gamma"].dtype == "float32"
    assert np.abs(affine["beta"].numpy() - layer.beta.numpy()).max() > 1e-3  # each domain trained its own
    assert np.abs(layer.beta.numpy()).max() > 1e-4


def test_domain_affine_layer_given_weights_after_construction_then_frozen_shares_them_everywhere():
    """Weights loaded after the adapter is built (then the layer frozen): training's source pass uses the layer's
    own scale/shift, and so must source_classifier and the validators' source scoring (they used stale copies)."""
    from domadapt.validators.base import outputs

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
                                 keras.layers.ReLU()])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD()], bn_mode="domain_affine")
    layer = backbone.get_layer("bn")
    layer.gamma.assign(np.full(8, 3.0, "float32"))
    layer.beta.assign(np.full(8, -1.0, "float32"))
    layer.trainable = False
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    source_images = rng.normal(size=(256, 3)).astype("float32")
    source_labels = (source_images[:, 0] > 0).astype("int64")
    adapter.fit(source=(source_images, source_labels), target=(rng.normal(size=(256, 3)) * 3 + 2).astype("float32"),
                epochs=2, batch_size=64, verbose=0)
    (affine,) = adapter.source_batchnorm_affine
    np.testing.assert_array_equal(affine["gamma"].numpy(), np.full(8, 3.0, "float32"))
    np.testing.assert_array_equal(affine["beta"].numpy(), np.full(8, -1.0, "float32"))
    # As trained: the layer's own scale/shift with the source statistics.
    as_trained = keras.models.clone_model(adapter.classifier)
    as_trained.set_weights(adapter.classifier.get_weights())
    (copy,) = batchnorm_layers(as_trained)
    copy.moving_mean.assign(adapter.source_batchnorm_statistics[0])
    copy.moving_variance.assign(adapter.source_batchnorm_statistics[1])
    expected = as_trained.predict(source_images, verbose=0)
    np.testing.assert_allclose(adapter.source_classifier.predict(source_images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(outputs(adapter, source_images, domain="source")[0], expected, atol=1e-5)


def test_domain_affine_an_error_during_the_final_reestimation_keeps_the_targets_scale_and_shift(monkeypatch):
    import domadapt.adapter as adapter_module

    adapter, source, target = _affine_adapter([da.MMD()])
    (layer, _), (affine, _) = adapter._batchnorm.layers, adapter.source_batchnorm_affine
    assert not np.allclose(layer.gamma.numpy(), affine["gamma"].numpy())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the source statistics are re-estimated

    monkeypatch.setattr(adapter_module, "reestimate", interrupted)
    before = layer.gamma.numpy().copy()
    with pytest.raises(KeyboardInterrupt):
        adapter.fit(source=source, target=target, epochs=1, batch_size=64, verbose=0)
    after = layer.gamma.numpy()
    assert not np.allclose(after, affine["gamma"].numpy())  # not left holding the source's
    assert np.abs(after - before).max() < 0.1  # one more epoch of training, not a swap


def test_domain_affine_source_copies_follow_their_layers_learning_rate_and_constraint():
    backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
                                 keras.layers.BatchNormalization(name="bn", gamma_constraint="non_neg"),
                                 keras.layers.ReLU()])
    adapter = da.DomainAdapter(backbone, num_classes=2, bn_mode="domain_affine", strategies=[
        da.FineTune(trainable="all", batchnorm="train", backbone_lr=0.1, verbose=False), da.MMD()])
    (affine,) = adapter.source_batchnorm_affine
    assert isinstance(affine["gamma"].constraint, keras.constraints.NonNeg)
    adapter.compile(optimizer="adam")
    images = np.random.default_rng(0).random((128, 3)).astype("float32")
    adapter.fit(source=(images, (images[:, 0] > 0.5).astype("int64")), target=images + 1, epochs=1, verbose=0)
    groups = adapter._parameter_groups
    assert groups.multiplier(backbone.get_layer("bn").gamma) == pytest.approx(0.1)
    assert groups.multiplier(affine["gamma"]) == pytest.approx(0.1)


def test_reestimation_on_a_class_sorted_array_gets_the_whole_arrays_statistics():
    """Folder readers return images class by class: read in order, batches held one class (variance ~1 instead of
    ~5 here) and max_images kept the first class only (mean ~0 instead of ~2)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.normal(0, 1, (512, 2)), rng.normal(4, 1, (512, 2))]).astype("float32")
    (layer,) = batchnorm_layers(model)
    da.reestimate_batchnorm_statistics(model, images)
    np.testing.assert_allclose(layer.moving_mean.numpy(), images.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(), images.var(axis=0), rtol=0.05)
    da.reestimate_batchnorm_statistics(model, images, max_images=128)
    assert np.all(np.abs(layer.moving_mean.numpy() - 2.0) < 0.6) and np.all(layer.moving_variance.numpy() > 3.5)


def test_reestimation_refuses_non_finite_images_and_leaves_the_statistics_as_they_were():
    # One NaN image set every moving statistic to NaN (and every later output), silently; an error in a later
    # batch of a dataset left the first batches' statistics in place.
    import tensorflow as tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    layer = model.layers[-1]
    layer.moving_mean.assign(np.full(4, 0.5, "float32"))
    before = layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()
    images = np.random.default_rng(0).normal(3.0, 1.0, (256, 4)).astype("float32")
    poisoned = images.copy()
    poisoned[200, 1] = np.nan
    with pytest.raises(ValueError, match="`images` holds non-finite"):
        da.reestimate_batchnorm_statistics(model, poisoned)
    with pytest.raises(ValueError, match="non-finite"):
        da.adapt_batchnorm(model, tf.data.Dataset.from_tensor_slices(poisoned).batch(64))
    for variable, value in zip((layer.moving_mean, layer.moving_variance), before):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert da.reestimate_batchnorm_statistics(model, images) == 256
    assert np.all(np.isfinite(layer.moving_mean.numpy())) and not np.allclose(layer.moving_mean.numpy(), 0.5)


def test_a_list_of_two_images_is_two_images_not_an_images_labels_pair():
    # [image_a, image_b] was read as (images, labels): image_a's rows became "images" (a raw Keras shape error);
    # the rule of da.DomainAdapter.fit (labels: one per image) now decides everywhere.
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Conv2D(2, 1), keras.layers.BatchNormalization()])
    rng = np.random.default_rng(0)
    two_images = [rng.normal(size=(3, 3, 1)).astype("float32") for _ in range(2)]
    with pytest.warns(UserWarning):  # few images: the statistics are noisy, and it says so
        assert da.reestimate_batchnorm_statistics(model, two_images) == 2
    images, labels = rng.normal(size=(8, 3, 3, 1)).astype("float32"), np.arange(8) % 2
    with pytest.warns(UserWarning):
        assert da.reestimate_batchnorm_statistics(model, (images, labels)) == 8


def test_reestimation_checks_the_images_against_the_model_before_any_statistic_changes():
    # A wrong image shape ended in a raw Keras error, a dataset of dicts in an AttributeError, strings in a
    # TensorFlow cast error.
    import tensorflow as tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    images = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"Argument `images`: expected images of shape \(num_images, 4\)"):
        da.reestimate_batchnorm_statistics(model, images[:, :3])
    with pytest.raises(TypeError, match="expected numeric images"):
        da.reestimate_batchnorm_statistics(model, images.astype(str))
    with pytest.raises(TypeError, match="expected a dataset of images"):
        da.reestimate_batchnorm_statistics(model, tf.data.Dataset.from_tensor_slices({"image": images}))
    with pytest.raises(ValueError, match="dataset elements have shape"):
        da.adapt_batchnorm(model, tf.data.Dataset.from_tensor_slices(images[:, :, None, None]).batch(8))
    # An endless dataset (repeat()) was read for ever; with a bound it is read up to it.
    endless = tf.data.Dataset.from_tensor_slices(images).batch(8).repeat()
    with pytest.raises(ValueError, match=r"Argument `images` is an endless tf.data.Dataset.*images.take\(n\)"):
        da.reestimate_batchnorm_statistics(model, endless)
    assert da.reestimate_batchnorm_statistics(model, endless, max_images=200) == 200


class _SeenAtEpochEnd(keras.callbacks.Callback):
    """What a user's callback sees: the statistics and the classifier's target accuracy at each epoch's end."""

    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels, self.seen, self.after_train_end = images, labels, [], None

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((statistics(self.model.classifier), accuracy(self.model.classifier, self.images, self.labels)))
        logs["target_accuracy"] = self.seen[-1][1]  # for the callbacks after it, and History

    def on_train_end(self, logs=None):
        self.after_train_end = statistics(self.model.classifier)


def test_user_callbacks_see_the_statistics_fit_exports_and_training_keeps_its_own():
    source, (target_images, target_labels) = foggy_digits()
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(bn_cnn(), num_classes=10, strategies=[da.MMD()])
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
    seen = _SeenAtEpochEnd(target_images, target_labels)
    stopper = keras.callbacks.EarlyStopping(monitor="target_accuracy", mode="max", patience=50)  # reads seen's log
    moving = []  # the moving statistics, read from a hook that is not wrapped
    on_begin = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: moving.append(statistics(adapter)))
    history = adapter.fit(source=source, target=target_images, epochs=3, batch_size=64, verbose=0, seed=0,
                          collapse_guard=False, callbacks=[seen, stopper, on_begin])
    exported = statistics(adapter.classifier)
    # The last epoch's weights are the final ones: the callback saw exactly what fit exports.
    for name, (mean, variance) in exported.items():
        np.testing.assert_allclose(seen.seen[-1][0][name][0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(seen.after_train_end[name][1], variance, rtol=1e-5, atol=1e-6)
    assert seen.seen[-1][1] == accuracy(adapter.classifier, target_images, target_labels)
    # Training kept its moving averages: the epoch-end statistics were put back before the next epoch
    # (they differ from the re-estimated ones the callback saw), and EarlyStopping ran its epochs.
    first = next(iter(exported))
    assert not np.allclose(moving[1][first][0], seen.seen[0][0][first][0], atol=1e-3)
    assert stopper.stopped_epoch == 0 and len(moving) == 3
    assert history.history["target_accuracy"] == [accuracy_seen for _, accuracy_seen in seen.seen]
    assert stopper.best == max(history.history["target_accuracy"])


def test_callbacks_keep_their_order_and_nesting_and_are_grouped_only_when_fit_exports_target_statistics(monkeypatch):
    from domadapt._training import _ExportedStatistics

    source, (target_images, target_labels) = foggy_digits()
    source = (source[0][:256], source[1][:256])

    def fitted(strategies, callbacks, bn_mode="domain", target=target_images[:256]):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(bn_cnn(), num_classes=10, strategies=strategies, bn_mode=bn_mode)
        adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
        adapter.fit(source=source, target=target, epochs=2, batch_size=64, verbose=0, seed=0,
                    collapse_guard=False, callbacks=callbacks)
        return adapter

    # ValidatorCheckpoint logs val_information_maximization; the EarlyStopping after it monitors that log.
    checkpoint = da.callbacks.ValidatorCheckpoint(target=target_images[:128])
    stopper = keras.callbacks.EarlyStopping(monitor="val_information_maximization", mode="max", patience=5)
    order = []
    first = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: order.append("first"))
    last = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: order.append("last"),
                                          on_epoch_end=lambda epoch, logs: order.append(epoch))
    fitted([da.MMD()], [[first, checkpoint], [stopper, last]])
    assert stopper.best is not None and stopper.best == max(checkpoint.history)
    assert order == ["first", "last", 0, 1]

    # Source-only training with a target: fit exports target statistics, so a callback sees them.
    seen = _SeenAtEpochEnd(target_images, target_labels)
    adapter = fitted([], [seen])
    for name, (mean, _) in statistics(adapter.classifier).items():
        np.testing.assert_allclose(seen.after_train_end[name][0], mean, rtol=1e-5, atol=1e-6)

    # Nothing is grouped where fit exports no target statistics, or where no callback acts at an epoch's end.
    from domadapt import _training
    grouped = []
    original = _training._with_exported_statistics

    def spy(adapter, callbacks, exported_target):
        result = original(adapter, callbacks, exported_target)
        grouped.append([type(c).__name__ for c in result if isinstance(c, _ExportedStatistics)])
        return result

    monkeypatch.setattr(_training, "_with_exported_statistics", spy)
    fitted([da.MMD()], [keras.callbacks.TerminateOnNaN()])
    fitted([da.MMD()], [_SeenAtEpochEnd(target_images, target_labels)], bn_mode="joint")
    fitted([da.MMD()], [_SeenAtEpochEnd(target_images, target_labels)])
    assert grouped == [[], [], ["_ExportedStatistics"]]
