"""Test-time adaptation (da.adapt_at_test_time, da.TestTimeAdapter): gains, the user's model untouched, streams, guard.

The target is the test's own fog: low contrast towards a patchy bright veil plus
sensor noise, written here in numpy (no transform the library ships). Margins were
measured on two models trained once per module (seeds 0 and 1, 2-core CPU):

| | seed 0 | seed 1 |
|---|---|---|
| source (clean digits 98.7% / 99.0%) | 9.2% | 10.8% |
| norm / tent / eata, 1 pass | 53.3 / 53.6 / 53.3% | 55.3 / 55.1 / 55.3% |
| infomax (the default), its 3 passes | 60.0% | 59.1% |
| eata / infomax, 20 passes | 53.5 / 64.1% | 55.3 / 60.6% |
| TestTimeAdapter(eata), batch size 1, one pass over all 797 images | 32.1% | 38.6% |
"""

import json
import warnings

import keras
import numpy as np
import pytest

import domadapt as da
from domadapt.cli import main as cli_main
from domadapt.test_time import EATA, InfoMax, Norm, Tent
from domadapt.validators.compare import collapse_reason

SEEDS = (0, 1)


def fog(images, seed):
    """Low contrast towards a bright, patchy veil, plus sensor noise (8x8 grey images in [0, 1])."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    field = tf.image.resize(rng.uniform(0, 1, (len(images), 3, 3, 1)), (8, 8), method="bilinear").numpy()
    return np.clip(0.3 * images + 0.55 + 0.25 * field + rng.normal(0, 0.08, images.shape), 0, 1).astype("float32")


def bn_cnn(seed, source_x, source_y):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(source_x, source_y, epochs=12, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1000], order[1000:]
    models = [bn_cnn(seed, images[train], data.target[train]) for seed in SEEDS]
    return {"models": models, "target_x": fog(images[test], seed=1), "target_y": data.target[test],
            "clean_x": images[test]}


def accuracy(model, images, labels):
    return float(np.mean(model.predict(images, batch_size=256, verbose=0).argmax(axis=1) == labels))


def snapshot(model):
    return [w.copy() for w in model.get_weights()]


def assert_unchanged(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert np.array_equal(a, b)  # bit-identical: kernels, gamma/beta, BN moving statistics


@pytest.mark.parametrize("method", ["norm", "tent", "eata", "infomax"])
def test_each_method_gains_on_the_fogged_target_and_leaves_the_model_unchanged(trained, method):
    gains = []
    for model in trained["models"]:
        before = snapshot(model)
        adapted = da.adapt_at_test_time(model, trained["target_x"], method=method)
        assert adapted is not model
        assert_unchanged(model, before)
        gains.append(accuracy(adapted, trained["target_x"], trained["target_y"])
                     - accuracy(model, trained["target_x"], trained["target_y"]))
    # Measured: +44.1 / +44.0 / +44.1 / +49.6 points (norm / tent / eata / infomax, mean over the two seeds).
    assert np.mean(gains) > 0.30, gains


def test_default_infomax_gains_a_measured_margin_over_norm(trained):
    """The marginal term, the 3x learning rate and 3 passes of the default add a measured margin over "norm"."""
    margins = []
    for model in trained["models"]:
        before = snapshot(model)
        norm = accuracy(da.adapt_at_test_time(model, trained["target_x"], method="norm"),
                        trained["target_x"], trained["target_y"])
        default = accuracy(da.adapt_at_test_time(model, trained["target_x"]), trained["target_x"], trained["target_y"])
        assert_unchanged(model, before)
        margins.append(default - norm)
    # Measured (seed 0 / 1): infomax 60.0% / 59.1% against norm 53.3% / 55.3% (+6.6 / +3.8 points); eata was
    # within 0.4 points of norm on both.
    assert min(margins) > 0.01 and np.mean(margins) > 0.025, margins


def test_tent_changes_only_the_normalisation_scale_and_shift_and_statistics(trained):
    model = trained["models"][0]
    adapted = da.adapt_at_test_time(model, trained["target_x"], method=Tent(learning_rate=1e-2))
    for source_layer, layer in zip(model.layers, adapted.layers):
        for source_weight, weight in zip(source_layer.weights, layer.weights):
            changed = not np.array_equal(source_weight.numpy(), weight.numpy())
            assert changed == isinstance(layer, keras.layers.BatchNormalization), (layer.name, weight.path)


def test_default_does_not_decay_over_a_20_pass_stream(trained):
    for model in trained["models"][:1]:
        norm = accuracy(da.adapt_at_test_time(model, trained["target_x"], method="norm"),
                        trained["target_x"], trained["target_y"])
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no collapse to catch
            adapted = da.adapt_at_test_time(model, trained["target_x"], epochs=20)
        probabilities = adapted.predict(trained["target_x"], verbose=0)
        assert collapse_reason(probabilities) is None
        # Measured: infomax (the default) after 20 passes 64.1% against norm 53.3% (eata 53.5%, TENT at 1e-3: 42.4%).
        assert np.mean(probabilities.argmax(axis=1) == trained["target_y"]) > norm - 0.03


def test_batch_size_one_online_stays_above_source_and_the_prior_protects_the_statistics(trained):
    model = trained["models"][0]
    images, labels = trained["target_x"][:400], trained["target_y"][:400]
    source = accuracy(model, images, labels)
    before = snapshot(model)

    def online(method):
        adapter = da.TestTimeAdapter(model, method=method)
        return float(np.mean(np.concatenate([adapter.predict(images[i : i + 1]) for i in range(len(images))])
                             .argmax(axis=1) == labels))

    default = online("infomax")
    pure_batch_statistics = online(Norm(statistics_prior=0))
    assert_unchanged(model, before)
    # Measured on these 400 images (seed 0 / 1): infomax 23.5% / 31.0% (its class-marginal term weighs a single
    # image at 1/17 against the running marginal), eata 23.5% / 29.0%, source 10.3% / 12.5%; without the prior
    # (each image normalised by its own statistics, Norm(statistics_prior=0)) 10.0% / 8.8%.
    assert default > source + 0.10
    assert default > pure_batch_statistics + 0.10


def test_guard_returns_to_a_healthy_state_and_warns(trained):
    model = trained["models"][0]
    with pytest.warns(RuntimeWarning, match="stopped a collapse"):
        adapted = da.adapt_at_test_time(model, trained["target_x"], method=Tent(learning_rate=5e-2), epochs=6)
    probabilities = adapted.predict(trained["target_x"], verbose=0)
    assert collapse_reason(probabilities) is None


def test_online_reset_and_episodic(trained):
    model = trained["models"][0]
    batch = trained["target_x"][:32]
    adapter = da.TestTimeAdapter(model, method="tent")
    first = adapter.predict(batch)
    second = adapter.predict(batch)
    assert not np.allclose(first, second)  # it adapted between the calls
    adapter.reset()
    np.testing.assert_allclose(adapter.predict(batch), first, atol=1e-5)
    episodic = da.TestTimeAdapter(model, method="tent", episodic=True)
    np.testing.assert_allclose(episodic.predict(batch), episodic.predict(batch), atol=1e-5)
    assert isinstance(adapter.model, keras.Model) and adapter.model is not model


def test_target_forms_dataset_and_pair(trained):
    import tensorflow as tf

    model = trained["models"][0]
    images = trained["target_x"][:300]
    from_array = da.adapt_at_test_time(model, images, method="norm")
    labels = trained["target_y"][:300]
    from_dataset = da.adapt_at_test_time(model, tf.data.Dataset.from_tensor_slices((images, labels)), method="norm")
    from_pair = da.adapt_at_test_time(model, (images, labels), method="norm")
    for a, b in zip(from_array.get_weights(), from_pair.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # An array is read in a seeded random order (class-sorted arrays would give one-class batches), a dataset in its
    # own: the batches differ, and with them the deeper layers' statistics, by batch-composition noise only
    # (measured: means equal to 1e-4, variances within 0.8%, the same accuracy).
    for a, b in zip(from_array.get_weights(), from_dataset.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-4)
    assert da.adapt_at_test_time(model, tf.data.Dataset.from_tensor_slices(images).batch(50), method="eata")
    # An endless dataset was adapted on for ever (and re-estimated on for ever after that).
    for method in ("norm", "eata"):
        with pytest.raises(ValueError, match=r"Argument `target` is an endless tf.data.Dataset"):
            da.adapt_at_test_time(model, tf.data.Dataset.from_tensor_slices(images).batch(50).repeat(), method=method)


def test_groupnorm_model_tent_and_errors(trained):
    keras.utils.set_random_seed(0)
    groupnorm = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3),
                                  keras.layers.GroupNormalization(groups=4), keras.layers.ReLU(),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    adapted = da.adapt_at_test_time(groupnorm, trained["target_x"][:128], method=Tent(learning_rate=1e-2))
    assert not np.array_equal(adapted.layers[1].gamma.numpy(), groupnorm.layers[1].gamma.numpy())
    # A frozen BN backbone (keras.applications fine-tuning style) adapts too: scale/shift and statistics.
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization()])
    backbone.trainable = False
    frozen = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    before = snapshot(frozen)
    adapted = da.adapt_at_test_time(frozen, trained["target_x"][:128], method=Tent(learning_rate=1e-2))
    assert_unchanged(frozen, before)
    source_bn, adapted_bn = backbone.layers[1], adapted.layers[0].layers[1]
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert not np.array_equal(getattr(source_bn, name).numpy(), getattr(adapted_bn, name).numpy()), name
    with pytest.raises(ValueError, match="no BatchNormalization.*'norm'"):
        da.adapt_at_test_time(groupnorm, trained["target_x"][:64], method="norm")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="no parameter to adapt"):
        da.TestTimeAdapter(plain, method="eata")
    model = trained["models"][0]
    with pytest.raises(ValueError, match="`method` must be one of .*received method='adabn'"):
        da.adapt_at_test_time(model, trained["target_x"], method="adabn")
    with pytest.raises(TypeError, match="`method`"):
        da.adapt_at_test_time(model, trained["target_x"], method=3)
    with pytest.raises(ValueError, match=r"`target` must hold images of shape \(8, 8, 1\).*\(5, 8, 8\)"):
        da.adapt_at_test_time(model, np.zeros((5, 8, 8)), method="norm")
    with pytest.raises(ValueError, match="`epochs`"):
        da.adapt_at_test_time(model, trained["target_x"], epochs=0)
    with pytest.raises(TypeError, match="`model`"):
        da.adapt_at_test_time("model.keras", trained["target_x"])
    with pytest.raises(ValueError, match="`learning_rate`"):
        EATA(learning_rate=-1)
    with pytest.raises(ValueError, match=r"`diversity` must be a finite number >= 0; received diversity=-1"):
        InfoMax(diversity=-1)
    for make, name in ((lambda value: Norm(statistics_prior=value), "statistics_prior"),
                       (lambda value: Tent(learning_rate=value), "learning_rate")):
        with pytest.raises(ValueError, match=f"`{name}` must be a finite"):
            make(float("inf"))  # accepted before, and every prediction came out NaN
    with pytest.raises(ValueError, match="`seed`"):
        da.adapt_at_test_time(model, trained["target_x"], seed="a")  # numpy's TypeError before
    with pytest.raises(ValueError, match="Argument `target`: image 0"):
        da.adapt_at_test_time(model, np.full((4, 8, 8, 1), np.nan, "float32"), method="norm")  # named `images`
    with pytest.raises(TypeError, match="`target` must hold numeric images"):
        da.adapt_at_test_time(model, np.full((4, 8, 8, 1), "a"), method="norm")
    import tensorflow as tf

    with pytest.raises(ValueError, match=r"`target` must hold images of shape \(8, 8, 1\).*\(4, 4, 1\)"):
        # "norm" re-estimated the statistics on 4x4 images of a fully convolutional model without a word
        da.adapt_at_test_time(model, tf.data.Dataset.from_tensor_slices(np.ones((6, 4, 4, 1), "float32")),
                              method="norm")
    with pytest.raises(TypeError, match="a dataset must yield numeric image tensors"):  # an AttributeError before
        da.adapt_at_test_time(model, tf.data.Dataset.from_tensor_slices({"x": np.ones((6, 8, 8, 1), "float32")}))
    assert repr(InfoMax(**InfoMax(diversity=1.0).get_config())) == repr(InfoMax(diversity=1.0))
    assert da.TestTimeAdapter(model).method.name == "infomax"
    with pytest.raises(ValueError, match=r"`batch` must have shape \(None, 8, 8, 1\)"):
        da.TestTimeAdapter(model).predict(np.zeros((2, 8, 8)))
    with pytest.raises(TypeError, match="`batch` must hold numeric images; received dtype string"):
        da.TestTimeAdapter(model).predict(np.full((2, 8, 8, 1), "a"))  # TF's UnimplementedError before


def test_command_line_on_folders(trained, tmp_path):
    """``domadapt adapt-at-test-time classifier.keras TARGET_DIR --out DIR --eval LABELED_DIR``, as a function."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = trained["models"][0](keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "classifier.keras")
    images = (trained["target_x"][:300] * 255).astype("uint8")
    for index, (image, label) in enumerate(zip(images, trained["target_y"][:300])):
        for root in (tmp_path / "target", tmp_path / "labeled" / str(label)):
            root.mkdir(parents=True, exist_ok=True)
            keras.utils.save_img(root / f"{index}.png", np.repeat(image, 3, axis=-1), scale=False)
    arguments = ["adapt-at-test-time", str(tmp_path / "classifier.keras"), str(tmp_path / "target"), "--out",
                 str(tmp_path / "out"), "--method", "norm", "--eval", str(tmp_path / "labeled")]
    assert cli_main(arguments) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["eval_accuracy_after"] > summary["eval_accuracy_before"] + 0.25
    reloaded = keras.models.load_model(tmp_path / "out" / "classifier.keras")
    assert reloaded.predict(images[:2, ..., :1], verbose=0).shape == (2, 10)
    assert cli_main(arguments) == 2  # files already in --out: refused without --overwrite


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("method", ["norm", "tent", "infomax"])
def test_online_adaptation_of_a_mixed_precision_batchnorm_model(mixed_float16, method):
    # The running statistics were autocast variables: read inside the BN call they came back in float16 and
    # met float32 batch statistics (TypeError in 'Mul'), for every online method.
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, activation="softmax")])
    x = rng.normal(2.0, 1.0, (64, 8)).astype("float32")
    adapter = da.TestTimeAdapter(model, method=method)
    outputs = adapter.predict(x)
    assert outputs.shape == (64, 3) and np.all(np.isfinite(outputs))
    # "norm" normalises this batch with (mostly) its own statistics: the BN layer's outputs are centred.
    running_mean = adapter._running[0][0].numpy()
    assert running_mean.dtype == np.float32 and not np.allclose(running_mean, 0.0)


def test_float16_probabilities_are_read_as_probabilities_not_logits():
    # A float16 softmax misses a row sum of 1 by up to ~2e-3; one such row made the whole batch "logits", and a
    # second softmax made confident predictions near-uniform (entropy 2.03 of log 10 = 2.30).
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (2048, 10)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits.astype("float16")))  # computed in float16
    assert np.abs(probabilities.astype("float32").sum(1) - 1).max() > 1e-3  # the case: float16 rounding
    read = keras.ops.convert_to_numpy(da.TestTimeAdapter._probabilities(probabilities))
    np.testing.assert_allclose(read, keras.ops.convert_to_numpy(keras.ops.softmax(logits)), atol=2e-3)
    np.testing.assert_allclose(read.sum(1), 1.0, atol=1e-5)
    # Logits are still logits, in either dtype.
    for dtype in ("float32", "float16"):
        read_logits = keras.ops.convert_to_numpy(da.TestTimeAdapter._probabilities(logits.astype(dtype)))
        np.testing.assert_allclose(read_logits.sum(1), 1.0, atol=1e-4)


def test_a_non_finite_batch_is_refused_before_it_enters_the_running_statistics():
    # One NaN image made every later clean batch's outputs NaN under method "norm" (no guard there).
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, activation="softmax")])
    adapter = da.TestTimeAdapter(model, method="norm")
    clean = rng.normal(size=(32, 4)).astype("float32")
    poisoned = clean.copy()
    poisoned[3, 0] = np.nan
    with pytest.raises(ValueError, match="`batch` holds non-finite"):
        adapter.predict(poisoned)
    assert np.all(np.isfinite(adapter.predict(clean)))
    with pytest.raises(ValueError, match="`target`: image 3 .*NaN or inf"):
        da.adapt_at_test_time(model, poisoned, method="norm")


def test_a_model_without_a_static_output_shape_is_a_clear_type_error():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.dense(inputs)

    with pytest.raises(TypeError, match="Argument `model` must be a built functional or Sequential"):
        da.TestTimeAdapter(Subclassed(), method="tent")


def test_adapt_at_test_time_judges_the_copy_it_returns_even_on_a_target_shorter_than_a_guard_window():
    # 240 images < GUARD_IMAGES: the stream's guard never ran, and Tent at a learning rate of 1 returned a
    # model predicting one class for 99.6% of the target, without a warning.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, activation="softmax")])
    images = np.random.default_rng(0).normal(size=(240, 4)).astype("float32")
    assert collapse_reason(model.predict(images, verbose=0)) is None
    with pytest.warns(RuntimeWarning, match="collapsed by its end"):
        adapted = da.adapt_at_test_time(model, images, method=Tent(learning_rate=1.0), epochs=1, batch_size=16)
    predictions = adapted.predict(images, verbose=0)
    assert collapse_reason(predictions) is None
    assert np.bincount(predictions.argmax(axis=1), minlength=3).max() < 0.9 * len(images)


def test_command_line_adapts_a_saved_domain_adapter_through_its_classifier(tmp_path):
    # A saved da.DomainAdapter loaded, then failed with a raw AttributeError (no output_shape); from the
    # `domadapt` command its classes were not even registered.
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                                 keras.layers.BatchNormalization(), keras.layers.ReLU()])
    adapter = da.DomainAdapter(backbone, num_classes=2, preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    adapter.fit(source=(rng.integers(0, 256, (32, 8, 8, 3)).astype("uint8"), rng.integers(0, 2, 32)), epochs=1,
                verbose=0)
    adapter.save(tmp_path / "adapter.keras")
    target = (rng.integers(0, 256, (200, 8, 8, 3)) // 2 + 100).astype("uint8")  # darker, low contrast
    np.save(tmp_path / "target.npy", target)
    arguments = ["adapt-at-test-time", str(tmp_path / "adapter.keras"), str(tmp_path / "target.npy"), "--out",
                 str(tmp_path / "out"), "--method", "norm"]
    assert cli_main(arguments) == 0
    adapted = keras.models.load_model(tmp_path / "out" / "classifier.keras")
    expected = da.adapt_at_test_time(adapter.classifier, target, method="norm")
    np.testing.assert_allclose(adapted.predict(target[:8], verbose=0), expected.predict(target[:8], verbose=0),
                               atol=1e-5)
