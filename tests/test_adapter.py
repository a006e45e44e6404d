"""The DomainAdapter spine: the user snippet, data pairing, label isolation, saving, bad input."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import conv_backbone, mlp_backbone

import domadapt as da


def test_issue_snippet_with_mobilenet_runs_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=False
    )
    rng = np.random.default_rng(0)
    xs, ys = rng.random((48, 32, 32, 3), dtype="float32"), rng.integers(0, 10, 48)
    xt = rng.random((40, 32, 32, 3), dtype="float32")
    adapter = da.DomainAdapter(backbone, num_classes=10, strategies=[da.GradientReversal(hidden_units=(16,))])
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = adapter.fit(source=(xs, ys), target=xt, epochs=1, batch_size=16, validation_data=(xt[:8], ys[:8]), verbose=0)
    assert {"loss", "cls_loss", "domain_loss", "domain_acc", "grl_lambda", "val_loss"} <= set(history.history)
    loss = adapter.evaluate(xt[:16], ys[:16], verbose=0)
    probabilities = adapter.predict(xt[:16], verbose=0)
    assert np.isfinite(loss)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert isinstance(adapter.classifier, keras.Model)
    np.testing.assert_allclose(adapter.classifier.predict(xt[:16], verbose=0), probabilities, rtol=1e-5, atol=1e-6)


def test_source_only_learns_digits_above_chance(digits):
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(conv_backbone(), num_classes=10)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    adapter.fit(source=(digits["source_x"], digits["source_y"]), epochs=10, batch_size=64, verbose=0, seed=0)
    _, accuracy = adapter.evaluate(digits["source_test_x"], digits["source_test_y"], verbose=0)
    assert accuracy > 0.8  # chance is 0.1


def test_streams_of_different_sizes_pair_and_epoch_follows_source():
    source_x = np.arange(10, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    source_y = np.zeros(10, dtype="int64")
    target_x = 100 + np.arange(3, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    paired = da.data.pair((source_x, source_y), target_x, image_shape=(2,), num_classes=2, batch_size=5,
                          target_batch_size=2, shuffle=True, seed=3, shuffle_buffer=100)
    dataset, steps = paired.dataset, paired.steps_per_epoch
    assert steps == 2  # one pass over the source
    batches = list(dataset.take(steps * 3))
    assert all(b["source"][0].shape == (5, 2) and b["target"].shape == (2, 2) for b in batches)
    for epoch in range(3):  # every source image exactly once per epoch
        seen = np.concatenate([b["source"][0][:, 0] for b in batches[epoch * steps:(epoch + 1) * steps]])
        assert sorted(seen.tolist()) == list(range(10))
    target_seen = np.concatenate([b["target"][:, 0] for b in batches]) - 100
    assert set(target_seen.tolist()) == {0, 1, 2}  # the short target stream repeats on its own
    assert np.bincount(target_seen.astype(int)).tolist() == [4, 4, 4]


def test_pairing_resumed_at_an_epoch_continues_the_uninterrupted_streams():
    source_x = np.arange(12, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    source_y = np.zeros(12, dtype="int64")
    target_x = 100 + np.arange(5, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    options = dict(image_shape=(2,), num_classes=2, batch_size=4, target_batch_size=3, seed=7)
    full = list(da.data.pair((source_x, source_y), target_x, **options).dataset.take(9))
    resumed = list(da.data.pair((source_x, source_y), target_x, start_epoch=2, **options).dataset.take(3))
    assert [int(e["step"]) for e in resumed] == [6, 7, 8]  # 3 steps per epoch
    for expected, got in zip(full[6:], resumed):
        np.testing.assert_array_equal(got["source"][0], expected["source"][0])
        np.testing.assert_array_equal(got["target"], expected["target"])


def test_batched_and_unbatched_datasets_are_accepted_alike(moons):
    source_x, source_y, target_x, _ = moons
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[da.MMD()])
    adapter.compile(optimizer="adam")
    batched = tf.data.Dataset.from_tensor_slices((source_x, source_y)).batch(50)  # like image_dataset_from_directory
    unbatched_target = tf.data.Dataset.from_tensor_slices(target_x)
    history = adapter.fit(source=batched, target=unbatched_target, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    paired = da.data.pair(batched, tf.data.Dataset.from_tensor_slices(target_x).batch(7), image_shape=(2,),
                          num_classes=2, shuffle=False)
    assert paired.steps_per_epoch == 10 and paired.batch_size == 50  # the dataset's own batching defines the epoch
    element = next(iter(paired.dataset))
    assert element["source"][0].shape == (50, 2) and element["target"].shape == (50, 2)


def test_a_batched_dataset_with_a_partial_last_batch_counts_its_true_size():
    # 1000 images in batches of 64: 15 full batches and one of 40, not 1024 images; with batch_size=100 an epoch is
    # 10 steps (the estimate 1024 made it 11). The last batch is read alone (random access), also behind a shuffle
    # and a map; a dataset ending in .batch() (parallel, after cache() or shard()) counts what it batches; a pipeline
    # where reading the last batch alone is not cheap (padded_batch, batches shuffled) keeps the estimate.
    images, labels = np.zeros((1000, 2), "float32"), np.arange(1000) % 2
    plain = tf.data.Dataset.from_tensor_slices((images, labels))
    for dataset in (plain.batch(64), plain.shuffle(1000).map(lambda x, y: (x, y), num_parallel_calls=2).batch(64)):
        paired = da.data.pair(dataset, dataset.map(lambda x, y: x), image_shape=(2,), num_classes=2, batch_size=100)
        assert (paired.source_size, paired.target_size, paired.steps_per_epoch) == (1000, 1000, 10)
        assert da.data.pair(dataset, image_shape=(2,), num_classes=2).steps_per_epoch == 16  # its own batches
    for dataset in (plain.batch(64, num_parallel_calls=2).prefetch(2), plain.cache().batch(64),
                    plain.batch(64).map(lambda x, y: (x, y))):
        paired = da.data.pair(dataset, image_shape=(2,), num_classes=2, batch_size=100)
        assert (paired.source_size, paired.steps_per_epoch) == (1000, 10)
    assert da.data.pair(plain.batch(64, drop_remainder=True), image_shape=(2,), num_classes=2).source_size == 960
    assert da.data.pair(plain.shard(2, 0).batch(64), image_shape=(2,), num_classes=2).source_size == 500
    assert da.data.pair(plain.padded_batch(64), image_shape=(2,), num_classes=2).source_size == 1024  # documented limit


def test_target_labels_never_reach_training(moons):
    source_x, source_y, target_x, target_y = moons

    def train(target_labels):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[da.GradientReversal(hidden_units=(8,))])
        adapter.compile(optimizer=keras.optimizers.SGD(0.05))
        target = tf.data.Dataset.from_tensor_slices((target_x, target_labels))
        adapter.fit(source=(source_x, source_y), target=target, epochs=2, batch_size=50, verbose=0, seed=1, shuffle=False)
        return adapter, [w.numpy() for w in adapter.weights]

    adapter, weights_true = train(target_y)
    _, weights_scrambled = train(np.random.default_rng(5).integers(0, 100, len(target_y)))
    for a, b in zip(weights_true, weights_scrambled):
        np.testing.assert_array_equal(a, b)
    paired = da.data.pair((source_x, source_y), tf.data.Dataset.from_tensor_slices((target_x, target_y)),
                          image_shape=adapter.image_shape, num_classes=2, batch_size=8, shuffle=False)
    assert isinstance(paired.dataset.element_spec["target"], tf.TensorSpec)  # images only


def test_classifier_saves_and_reloads_without_domadapt(tmp_path, moons):
    source_x, source_y, target_x, _ = moons
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[da.GradientReversal(hidden_units=(8,))])
    adapter.compile(optimizer="adam")
    adapter.fit(source=(source_x, source_y), target=target_x, epochs=1, verbose=0)
    path = tmp_path / "classifier.keras"
    adapter.classifier.save(path)
    np.save(tmp_path / "x.npy", target_x[:20])
    expected = adapter.classifier.predict(target_x[:20], verbose=0)
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.saving.load_model({str(path)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
        "assert not any(name.startswith('domadapt') for name in sys.modules), 'domadapt was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)


def test_adapter_saves_and_reloads_with_strategies(tmp_path, moons):
    source_x, source_y, target_x, _ = moons
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(
        mlp_backbone(), num_classes=2,
        strategies=da.GradientReversal(hidden_units=(8,), schedule="constant", weight=0.3) + da.MMD(kernels="rbf"),
    )
    adapter.compile(optimizer="adam")
    adapter.fit(source=(source_x, source_y), target=target_x, epochs=1, verbose=0)
    path = tmp_path / "adapter.keras"
    adapter.save(path)
    reloaded = keras.saving.load_model(path)
    assert [type(s).__name__ for s in reloaded.strategies] == ["GradientReversal", "MMD"]
    assert reloaded.strategies[0].weight == 0.3
    assert reloaded.strategies[1].get_config() == adapter.strategies[1].get_config()
    for a, b in zip(adapter.strategies[0].discriminator.weights, reloaded.strategies[0].discriminator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(reloaded.predict(target_x, verbose=0), adapter.predict(target_x, verbose=0), atol=1e-6)
    reloaded.fit(source=(source_x, source_y), target=target_x, epochs=1, verbose=0)  # training continues


class FeatureNormPenalty(da.Strategy):
    """A strategy written outside domadapt: penalise the squared norm of target features."""

    log_names = ("norm_loss",)

    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def loss(self, step):
        return {"norm_loss": self.weight * keras.ops.mean(keras.ops.square(step.target_features))}

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def test_strategy_defined_in_a_test_file_plugs_in(moons):
    source_x, source_y, target_x, _ = moons

    def target_feature_norm(strategies):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=strategies)
        adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = adapter.fit(source=(source_x, source_y), target=target_x, epochs=5, verbose=0, seed=0)
        features = adapter.feature_extractor.predict(target_x, verbose=0)
        return float(np.mean(features**2)), history

    plain, _ = target_feature_norm([])
    penalised, history = target_feature_norm([FeatureNormPenalty(weight=5.0)])
    assert "norm_loss" in history.history
    assert history.history["norm_loss"][-1] < history.history["norm_loss"][0]
    assert penalised < 0.5 * plain


class ProgressProbe(da.Strategy):
    """Reports the schedules' progress and remembers the FitContext it was given."""

    log_names = ("progress",)
    uses_target = False

    def on_fit_start(self, context):
        self.context = context

    def loss(self, step):
        step.report("progress", step.progress)
        return {}


def test_each_fit_call_runs_its_own_schedule_and_initial_epoch_continues_it(moons):
    source_x, source_y, _, _ = moons

    def progress(probe, adapter, **fit_kwargs):
        history = adapter.fit(source=(source_x[:128], source_y[:128]), batch_size=32, verbose=0, **fit_kwargs)
        return history.history["progress"]

    probe = ProgressProbe()
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[probe])
    adapter.compile(optimizer="sgd")
    # 4 steps per epoch, 8 planned: epoch means of p = (0+1+2+3)/8/4 and (4+5+6+7)/8/4.
    first = progress(probe, adapter, epochs=2)
    np.testing.assert_allclose(first, [0.1875, 0.6875], rtol=1e-6)
    second = progress(probe, adapter, epochs=2)  # a second fit starts its schedule at 0 again
    np.testing.assert_allclose(second, first, rtol=1e-6)
    assert int(adapter.optimizer.iterations.numpy()) == 16
    # Resuming with initial_epoch continues the run: epochs 3 and 4 of a 4-epoch schedule.
    resumed = progress(probe, adapter, epochs=4, initial_epoch=2)
    np.testing.assert_allclose(resumed, [(8 + 9 + 10 + 11) / 16 / 4, (12 + 13 + 14 + 15) / 16 / 4], rtol=1e-6)
    context = probe.context
    assert (context.epochs, context.initial_epoch, context.steps_per_epoch, context.batch_size) == (4, 2, 4, 32)
    assert (context.source_size, context.target_size, context.target_images) == (128, None, None)
    assert context.adapter.num_classes == 2 and context.adapter.backbone is adapter.backbone


def test_capabilities_are_declared_and_legacy_hooks_still_run(moons):
    source_x, source_y, target_x, _ = moons
    seen = {}

    class Shift(da.Strategy):  # 0.1-style hooks: no step argument, on_fit_start(adapter, fit_info)
        uses_target = False

        def transform_source(self, images, labels):
            return images + 100.0, labels

        def on_fit_start(self, adapter, fit_info):
            seen["steps_per_epoch"] = fit_info["steps_per_epoch"]

    assert Shift.transforms_source and not Shift.transforms_target and not Shift.augments_in_step
    assert not da.Strategy.transforms_source and not da.CORAL.transforms_source
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[Shift()])
    adapter.compile(optimizer="sgd")
    with pytest.warns(DeprecationWarning, match="on_fit_start"):
        adapter.fit(source=(source_x[:64], source_y[:64]), epochs=1, batch_size=32, verbose=0)
    assert seen == {"steps_per_epoch": 2}


def test_a_missing_requirement_is_reported_before_any_step(moons):
    source_x, source_y, _, _ = moons

    class NeedsLabeledTarget(da.Strategy):
        uses_target = False
        needs_target_labeled = True

    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[NeedsLabeledTarget()])
    adapter.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"`target_labeled` is required: strategies \['NeedsLabeledTarget'\]"):
        adapter.fit(source=(source_x, source_y), epochs=3, verbose=0)
    assert int(adapter.optimizer.iterations.numpy()) == 0


def test_undeclared_log_name_is_a_clear_error(moons):
    class Sloppy(da.Strategy):
        def loss(self, step):
            return {"surprise": keras.ops.mean(step.target_features)}

    source_x, source_y, target_x, _ = moons
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[Sloppy()])
    adapter.compile(optimizer="adam")
    with pytest.raises(ValueError, match="not declared in its log_names"):
        adapter.fit(source=(source_x, source_y), target=target_x, epochs=1, verbose=0)


def test_recipe_list_and_plus_are_equivalent_and_order_free(moons):
    a, b = da.MMD(), da.CORAL()
    assert list(da.Recipe(a, b)) == [a, b] == list(a + b) == list(da.Recipe([a], da.Recipe(b)))
    source_x, source_y, target_x, _ = moons

    def weights(strategies):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=strategies)
        adapter.compile(optimizer=keras.optimizers.SGD(0.05))
        adapter.fit(source=(source_x, source_y), target=target_x, epochs=2, verbose=0, seed=0)
        return adapter.classifier.get_weights()

    for x, y in zip(weights(da.MMD() + da.CORAL(weight=3.0)), weights([da.CORAL(weight=3.0), da.MMD()])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_few_labeled_target_images_add_a_loss_term(moons):
    source_x, source_y, target_x, target_y = moons
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2)
    adapter.compile(optimizer="adam")
    history = adapter.fit(source=(source_x, source_y), target_labeled=(target_x[:10], target_y[:10]), epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(
        history.history["cls_loss"][0] + history.history["target_cls_loss"][0], rel=1e-4
    )


def test_preprocess_layer_is_inside_the_exported_classifier():
    adapter = da.DomainAdapter(conv_backbone(), num_classes=3, preprocess=keras.layers.Rescaling(1 / 255))
    images = np.full((2, 8, 8, 1), 255, dtype="uint8")
    direct = adapter.head(adapter.pooling(adapter.backbone(np.ones((2, 8, 8, 1), "float32"))))
    np.testing.assert_allclose(
        adapter.classifier.predict(images, verbose=0), keras.ops.softmax(direct).numpy(), rtol=1e-5
    )


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def compiled_adapter():
    adapter = da.DomainAdapter(conv_backbone(), num_classes=3, strategies=[da.CORAL()])
    adapter.compile(optimizer="adam")
    return adapter


GOOD_X = np.zeros((6, 8, 8, 1), "float32")
GOOD_Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(source=(GOOD_X, GOOD_Y), target=np.zeros((6, 8, 8, 3), "float32")), ValueError, r"`target`.*\(num_images, 8, 8, 1\).*\(6, 8, 8, 3\)"),
        (dict(source=(np.zeros((6, 9, 9, 1)), GOOD_Y), target=GOOD_X), ValueError, r"`source\[0\] \(images\)`"),
        (dict(source=(GOOD_X, np.array([0, 1, 2, 3, 0, 1])), target=GOOD_X), ValueError, r"labels must be in \[0, 2\].*num_classes=3"),
        (dict(source=(GOOD_X, -GOOD_Y), target=GOOD_X), ValueError, r"labels must be in"),
        (dict(source=(GOOD_X, GOOD_Y), target=np.zeros((0, 8, 8, 1))), ValueError, r"`target`.*no images"),
        (dict(source=(GOOD_X, GOOD_Y), target=tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1)))), ValueError, r"`target`.*empty"),
        (dict(source=(GOOD_X, GOOD_Y)), ValueError, r"`target` is required.*CORAL"),
        (dict(source=(GOOD_X, GOOD_Y[:4]), target=GOOD_X), ValueError, r"6 images but 4 labels"),
        (dict(source=(GOOD_X, np.eye(3)[GOOD_Y]), target=GOOD_X), ValueError, r"not one-hot"),
        (dict(source=(np.full((6, 8, 8, 1), np.nan), GOOD_Y), target=GOOD_X), ValueError, r"NaN"),
        (dict(source=GOOD_X, target=GOOD_X), TypeError, r"Did you mean adapter.fit\(source=\(x, y\)"),
        (dict(source=(GOOD_X, GOOD_Y), target=np.array(["a"] * 6)), TypeError, r"numeric"),
        (dict(source=(GOOD_X, GOOD_Y), target=GOOD_X, batch_size=0), ValueError, r"`batch_size` must be a positive integer"),
        (dict(source=(GOOD_X, GOOD_Y), target=GOOD_X, epochs=2.5), ValueError, r"`epochs`"),
        (dict(source=(GOOD_X, GOOD_Y), target=GOOD_X, seed="abc"), ValueError, r"`seed` must be None or a non-negative"),
        (dict(source=(np.full((6, 8, 8, 1), 200.0), GOOD_Y), target=np.full((6, 8, 8, 1), 100.0),
              validation_data=(np.full((6, 8, 8, 1), 0.5), GOOD_Y)), ValueError,
         r"`validation_data` and `source` are scaled differently"),
        (dict(source=(GOOD_X, GOOD_Y), target=GOOD_X, initial_epoch=-3), ValueError, r"`initial_epoch` must be a non-neg"),
        (dict(source=tf.data.Dataset.from_tensor_slices(GOOD_X), target=GOOD_X), ValueError, r"expected a dataset of \(images, labels\)"),
        # Two image arrays are not (images, labels): the second was silently dropped.
        (dict(source=(GOOD_X, GOOD_Y), target=[GOOD_X[:4], GOOD_X]), TypeError, r"`target`: could not be read.*np.concatenate"),
        (dict(source=(GOOD_X, GOOD_Y), target=(x for x in GOOD_X)), TypeError, r"received generator.*from_generator"),
        (dict(source=tf.data.Dataset.from_tensor_slices((GOOD_X, GOOD_Y, np.ones(6))), target=GOOD_X), ValueError,
         r"`source`: a dataset of \(images, labels, sample_weights\)"),
    ],
)
def test_bad_fit_input_is_reported_before_training(compiled_adapter, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        compiled_adapter.fit(**{"epochs": 1, "verbose": 0, **kwargs})


def test_out_of_range_label_deep_in_a_dataset_becomes_a_value_error(compiled_adapter):
    labels = np.array([0, 1, 2, 0, 1, 7])  # the bad label is not in the first element
    source = tf.data.Dataset.from_tensor_slices((GOOD_X, labels))
    with pytest.raises(ValueError, match=r"`source` has a label >= num_classes=3"):
        compiled_adapter.fit(source=source, target=GOOD_X, epochs=2, batch_size=2, verbose=0, shuffle=False)


def test_a_fractional_float_label_deep_in_a_dataset_becomes_a_value_error(compiled_adapter):
    # Only the first element was checked for whole numbers: 0.5 was cast to class 0 and trained on.
    labels = np.array([0, 1, 2, 0, 1, 0.5], "float32")
    source = tf.data.Dataset.from_tensor_slices((GOOD_X, labels))
    with pytest.raises(ValueError, match=r"`source` has a label that is not a whole class index"):
        compiled_adapter.fit(source=source, target=GOOD_X, epochs=1, batch_size=2, verbose=0, shuffle=False)


def test_a_dataset_of_unknown_image_size_with_a_later_image_of_another_size_is_a_value_error(compiled_adapter):
    """Declared (None, None, 1), as from_generator often is: only the first element was checked, and the 10x10 image
    stopped training with a raw batching error."""
    def images():
        for index in range(12):
            yield np.zeros((8, 8, 1) if index < 6 else (10, 10, 1), "float32")

    target = tf.data.Dataset.from_generator(images, output_signature=tf.TensorSpec((None, None, 1), tf.float32))
    with pytest.raises(ValueError, match=r"`target` has an image of another shape than its first image \(8, 8, 1\).*"
                                         r"shape 10 10 1"):
        compiled_adapter.fit(source=(GOOD_X, GOOD_Y), target=target, epochs=3, batch_size=2, verbose=0)


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: da.DomainAdapter("resnet", num_classes=3), r"`backbone` must be a keras.Model"),
        (lambda: da.DomainAdapter(conv_backbone(), num_classes=1), r"`num_classes` must be an integer >= 2"),
        (lambda: da.DomainAdapter(conv_backbone()), r"num_classes="),
        (lambda: da.DomainAdapter(conv_backbone(), num_classes=3, bn_mode="mixed"), r"`bn_mode`"),
        (lambda: da.DomainAdapter(conv_backbone(), num_classes=3, strategies=["dann"]), r"item 0 is 'dann'"),
        (
            lambda: da.DomainAdapter(
                keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((1, 1, 8, 8, 1))]), num_classes=3
            ),
            r"cannot be pooled to a feature vector",
        ),
        (lambda: da.DomainAdapter(keras.Sequential([keras.layers.Dense(3)]), num_classes=3), r"`input_shape` is required"),
        (lambda: da.DomainAdapter(conv_backbone(), num_classes=3, head=keras.layers.Dense(3, activation="softmax")), r"logits"),
        (lambda: da.DomainAdapter(conv_backbone(), num_classes=4, head=keras.layers.Dense(3)), r"returns 3 logits but num_classes=4"),
    ],
)
def test_bad_construction_is_a_clear_error(build, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        build()


def test_user_arrays_are_not_mutated(compiled_adapter):
    source_x = np.random.default_rng(0).random((6, 8, 8, 1)).astype("float32")
    before = source_x.copy()
    compiled_adapter.fit(source=(source_x, GOOD_Y), target=source_x, epochs=1, verbose=0)
    np.testing.assert_array_equal(source_x, before)


def test_inputs_the_review_fixes_must_keep_accepting():
    """Regressions caught in review: flat features with (N, 1) or one-hot labels as (images, labels); tensors as
    source images with batch-norm re-estimation; a backbone of any size with images of several sizes."""
    keras.utils.set_random_seed(0)
    flat = da.DomainAdapter(keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                                              keras.layers.BatchNormalization()]), num_classes=3)
    flat.compile(optimizer="adam")
    x, y = np.random.rand(12, 6).astype("float32"), np.arange(12) % 3
    for target in ((x, y[:, None]), (x, np.eye(3)[y])):
        flat.fit(source=(x, y), target=target, epochs=1, verbose=0)
    flat.fit(source=(tf.constant(x), tf.constant(y)), target=tf.constant(x), epochs=1, verbose=0)
    flat.fit(source=(x.tolist(), y.tolist()), target=x, epochs=1, verbose=0)
    assert flat.classifier.predict(x, verbose=0).shape == (12, 3)

    any_size = da.DomainAdapter(keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3)]),
                                num_classes=2)
    any_size.compile(optimizer="adam")

    def images():
        for index in range(6):
            yield np.zeros((8, 8, 1) if index < 3 else (10, 10, 1), "float32"), index % 2

    source = tf.data.Dataset.from_generator(images, output_signature=(
        tf.TensorSpec((None, None, 1), tf.float32), tf.TensorSpec((), tf.int64)))
    history = any_size.fit(source=source, epochs=1, batch_size=1, steps_per_epoch=6, verbose=0)
    assert len(history.history["loss"]) == 1
    weighted = tf.data.Dataset.from_tensor_slices((GOOD_X, GOOD_Y, np.ones(6))).batch(3)
    adapter = da.DomainAdapter(conv_backbone(), num_classes=3)
    adapter.compile(optimizer="adam")
    adapter.evaluate(weighted, verbose=0)  # sample weights stay accepted where Keras takes them


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(seed="a"), "`seed`"),  # int() of numpy before
    (dict(seed=-1), "`seed`"),  # accepted before
    (dict(shuffle_buffer=0), "`shuffle_buffer`"),  # tf.data's InvalidArgumentError on a dataset before
    (dict(start_epoch=1.7), "`start_epoch`"),  # truncated to 1 before
    (dict(num_classes="2"), "`num_classes`"),  # numpy's UFuncTypeError before
    (dict(num_classes=0), "`num_classes`"),  # "labels must be in [0, -1]" before
    (dict(image_shape=None), "`image_shape`"),  # 'NoneType' object is not iterable before
])
def test_pair_checks_its_arguments_as_fit_does(kwargs, pattern):
    arguments = {**dict(image_shape=(4, 4, 1), num_classes=2, batch_size=5), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        da.data.pair((np.zeros((6, 4, 4, 1)), np.array([0, 1] * 3)), np.zeros((3, 4, 4, 1)), **arguments)
