"""MCC, BNM and SelfTraining (FixMatch / AdaMatch): formulas against numpy, gradients, XLA, tf.distribute, gains."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import domadapt as da
from domadapt.strategies.class_confusion import MCC, class_confusion
from domadapt.strategies.nuclear_norm import BNM, batch_nuclear_norm
from domadapt.strategies.self_training import SelfTraining, adamatch_warmup, pseudo_labels, strong_augment
from domadapt.strategy import Step


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mcc_reference(logits, temperature, weights=None):
    """Jin et al. 2020, eq. 1-6, with loops; ``weights`` fixes the (gradient-stopped) example weights."""
    p = softmax(np.asarray(logits, np.float64) / temperature)
    batch, classes = p.shape
    if weights is None:
        entropy = -np.sum(p * np.log(p), axis=1)
        weights = batch * (1 + np.exp(-entropy)) / np.sum(1 + np.exp(-entropy))
    confusion = np.zeros((classes, classes))
    for j in range(classes):
        for k in range(classes):
            confusion[j, k] = sum(p[i, j] * weights[i] * p[i, k] for i in range(batch))
    normalised = confusion / confusion.sum(axis=1, keepdims=True)
    return sum(normalised[j, k] for j in range(classes) for k in range(classes) if j != k) / classes, weights


# ----------------------------------------------------------------------------- MCC


@pytest.mark.parametrize("batch, classes, temperature", [(16, 4, 2.5), (5, 7, 1.0), (32, 10, 0.5)])
def test_mcc_matches_the_paper_formula(batch, classes, temperature):
    logits = np.random.default_rng(batch).normal(scale=3.0, size=(batch, classes)).astype("float32")
    expected, _ = mcc_reference(logits, temperature)
    assert float(class_confusion(logits, temperature)) == pytest.approx(expected, rel=1e-5)
    # Through the strategy: the weight multiplies, the target logits are read.
    step = Step(target_logits=tf.constant(logits), progress=tf.constant(0.3))
    value = MCC(weight=0.5, temperature=temperature).loss(step)["mcc_loss"]
    assert float(value) == pytest.approx(0.5 * expected, rel=1e-5)


def test_mcc_is_zero_without_confusion_and_largest_for_uniform_predictions():
    separated = np.eye(4, dtype="float32")[[0, 1, 2, 3, 0, 1]] * 200.0  # one class per example, no sharing
    assert float(class_confusion(separated)) == pytest.approx(0.0, abs=1e-6)
    uniform = np.zeros((8, 4), "float32")
    assert float(class_confusion(uniform)) == pytest.approx(3 / 4, rel=1e-6)  # (K - 1) / K


def test_mcc_gradient_matches_finite_differences_with_stopped_example_weights():
    logits = np.random.default_rng(0).normal(scale=2.0, size=(6, 3))
    _, weights = mcc_reference(logits, 2.5)
    variable = tf.Variable(logits.astype("float32"))
    with tf.GradientTape() as tape:
        value = class_confusion(variable, 2.5)
    gradient = tape.gradient(value, variable).numpy()
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = 1e-5
        numeric[index] = (mcc_reference(logits + step, 2.5, weights)[0] - mcc_reference(logits - step, 2.5, weights)[0]) / 2e-5
    np.testing.assert_allclose(gradient, numeric, atol=2e-5)
    assert np.abs(numeric).max() > 1e-3


# ----------------------------------------------------------------------------- BNM


def test_bnm_matches_numpy_singular_values():
    logits = np.random.default_rng(1).normal(scale=2.0, size=(12, 5)).astype("float32")
    probabilities = softmax(logits.astype(np.float64))
    expected = np.linalg.svd(probabilities, compute_uv=False).sum() / 12
    assert float(batch_nuclear_norm(probabilities.astype("float32"))) == pytest.approx(expected, rel=1e-5)
    step = Step(target_logits=tf.constant(logits), progress=tf.constant(0.0))
    assert float(BNM(weight=2.0).loss(step)["bnm_loss"]) == pytest.approx(-2.0 * expected, rel=1e-5)
    # Confident and diverse (one-hot, all classes) beats confident and collapsed (one class).
    diverse, collapsed = np.eye(4, dtype="float32"), np.eye(4, dtype="float32")[[0, 0, 0, 0]]
    assert float(batch_nuclear_norm(diverse)) == pytest.approx(1.0)
    assert float(batch_nuclear_norm(collapsed)) == pytest.approx(0.5)  # sqrt(4) / 4


def test_bnm_gradient_matches_finite_differences():
    matrix = np.random.default_rng(2).uniform(size=(5, 3))

    def nuclear(m):
        return np.linalg.svd(m, compute_uv=False).sum() / m.shape[0]

    variable = tf.Variable(matrix.astype("float32"))
    with tf.GradientTape() as tape:
        value = batch_nuclear_norm(variable)
    gradient = tape.gradient(value, variable).numpy()
    numeric = np.zeros_like(matrix)
    for index in np.ndindex(matrix.shape):
        step = np.zeros_like(matrix)
        step[index] = 1e-6
        numeric[index] = (nuclear(matrix + step) - nuclear(matrix - step)) / 2e-6
    np.testing.assert_allclose(gradient, numeric, atol=1e-5)


# ----------------------------------------------------------------------------- AdaMatch / FixMatch


SOURCE_PROBABILITIES = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]], "float32")
TARGET_PROBABILITIES = np.array([[0.5, 0.5], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]], "float32")


def test_adamatch_relative_threshold_and_distribution_alignment_on_a_hand_made_batch():
    labels, mask, threshold = pseudo_labels(SOURCE_PROBABILITIES, TARGET_PROBABILITIES, 0.9, "adamatch")
    # Relative threshold: 0.9 x mean source confidence (0.9 + 0.8 + 0.6 + 0.7) / 4 = 0.675.
    assert float(threshold) == pytest.approx(0.675)
    # Alignment: ratio = mean source (0.75, 0.25) / mean target (0.4, 0.6) = (1.875, 5/12); rows renormalised:
    # (0.5, 0.5) -> (0.818, 0.182), (0.6, 0.4) -> (0.871, 0.129), (0.2, 0.8) -> (0.529, 0.471),
    # (0.3, 0.7) -> (0.659, 0.341): all class 0, the first two above 0.675.
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])
    # Without alignment (FixMatch), the same batch at a threshold of 0.75 keeps only the 0.8 row, as class 1.
    labels, mask, threshold = pseudo_labels(SOURCE_PROBABILITIES, TARGET_PROBABILITIES, 0.75, "fixmatch")
    assert float(threshold) == pytest.approx(0.75)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(mask, [0, 0, 1, 0])


def test_adamatch_warmup_follows_the_paper():
    progress = np.array([0.0, 0.125, 0.25, 0.5, 0.75, 1.0], "float32")
    expected = 0.5 - np.cos(np.minimum(np.pi, 2 * np.pi * progress)) / 2
    np.testing.assert_allclose(adamatch_warmup(progress), expected, atol=1e-6)
    np.testing.assert_allclose(expected, [0, 0.5 - np.sqrt(0.5) / 2, 0.5, 1, 1, 1], atol=1e-6)


def test_self_training_loss_is_the_masked_cross_entropy_of_the_strong_view():
    """With an identity augmentation the strong view is the weak one: loss = mean(mask * -log max p)."""
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh")])
    strategy = SelfTraining("fixmatch", threshold=0.4, weight=2.0, augmentation=keras.layers.Identity())
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=[strategy])
    target = np.random.default_rng(0).normal(scale=3.0, size=(32, 4)).astype("float32")
    logits = adapter.head(adapter.feature_extractor(target)).numpy()
    step = Step(source_logits=tf.constant(logits[:8]), target_images=tf.constant(target), target_logits=tf.constant(logits),
                progress=tf.constant(0.0), training=False)
    value = float(strategy.loss(step)["self_training_loss"])
    p = softmax(logits.astype(np.float64))
    mask = p.max(axis=1) >= 0.4
    assert 0 < mask.mean() < 1  # the threshold splits this batch
    assert value == pytest.approx(2.0 * np.mean(mask * -np.log(p.max(axis=1))), rel=1e-4)
    assert float(step._reports["mask_rate"]) == pytest.approx(mask.mean())


# ----------------------------------------------------------------------------- strong augmentation


@pytest.mark.parametrize("shape", [(16, 12, 10, 1), (8, 9, 9, 3), (32, 5)])
def test_strong_augmentation_is_seeded_and_independent_of_the_value_range(shape):
    images = np.random.default_rng(0).uniform(size=shape).astype("float32")
    seed = tf.constant([3, 7])
    augmented = strong_augment(images, seed).numpy()
    assert augmented.shape == shape and np.isfinite(augmented).all()
    np.testing.assert_array_equal(augmented, strong_augment(images, seed).numpy())
    np.testing.assert_allclose(augmented, tf.function(strong_augment)(images, seed).numpy(), atol=1e-5)
    assert np.abs(augmented - strong_augment(images, tf.constant([3, 8])).numpy()).mean() > 0.05
    assert np.abs(augmented - images).mean() > 0.05
    if len(shape) == 4:
        # Images in 0-255 or standardised get the same augmentation, in their own units.
        for scale, offset in ((255.0, 0.0), (2.0, -1.0)):
            rescaled = strong_augment(images * scale + offset, seed).numpy()
            close = np.isclose(rescaled, augmented * scale + offset, atol=1e-3 * scale)
            assert close.mean() > 0.995, close.mean()  # posterize may round a boundary value the other way


# ----------------------------------------------------------------------------- contract


STRATEGIES = {
    "mcc": lambda: MCC(weight=0.5, temperature=2.0),
    "bnm": lambda: BNM(weight=2.0, schedule="ganin"),
    "adamatch": lambda: SelfTraining("adamatch", seed=3),
    "fixmatch": lambda: SelfTraining("fixmatch", threshold=0.8, weight=0.5, seed=4, augmentation=keras.layers.RandomFlip()),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_config_round_trips(name):
    strategy = STRATEGIES[name]()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(strategy))
    assert type(restored) is type(strategy)
    assert restored.get_config() == strategy.get_config()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="`temperature` must be a positive number"):
        MCC(temperature=0)
    with pytest.raises(ValueError, match="`weight` must be a non-negative number"):
        BNM(weight=-1.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        SelfTraining("mixmatch")
    with pytest.raises(ValueError, match="`threshold` must be a number in"):
        SelfTraining(threshold=1.5)
    with pytest.raises(TypeError, match="`augmentation` must be a Keras layer"):
        SelfTraining(augmentation=lambda images: images)
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        SelfTraining(seed=-1)


def test_losses_and_gradients_under_xla_equal_the_plain_ones():
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="tanh")])
    # A deterministic strong view: XLA draws other random numbers than TensorFlow's kernels.
    self_training = SelfTraining(threshold=0.3, augmentation=keras.layers.Identity(), seed=0)
    adapter = da.DomainAdapter(backbone, num_classes=4, strategies=[self_training])
    rng = np.random.default_rng(0)
    target_images = tf.constant(rng.uniform(size=(16, 6, 6, 1)).astype("float32"))
    source_logits = tf.constant(rng.normal(size=(16, 4)).astype("float32"))

    def loss_and_gradient(strategy):
        with tf.GradientTape() as tape:
            logits = 10.0 * adapter.head(adapter.feature_extractor(target_images))  # away from uniform
            step = Step(source_logits=source_logits, target_images=target_images, target_logits=logits,
                        progress=tf.constant(0.7), training=False)
            value = sum(strategy.loss(step).values())
        return value, tape.gradient(value, adapter.trainable_variables)

    for strategy in (MCC(), BNM(), self_training):
        value, gradients = loss_and_gradient(strategy)
        compiled_value, compiled_gradients = tf.function(loss_and_gradient, jit_compile=True)(strategy)
        assert float(compiled_value) == pytest.approx(float(value), rel=1e-5), type(strategy).__name__
        assert any(np.abs(g).max() > 1e-4 for g in gradients)
        for gradient, compiled in zip(gradients, compiled_gradients):
            np.testing.assert_allclose(compiled, gradient, rtol=1e-4, atol=1e-6)


def test_combined_recipe_trains_in_one_xla_compiled_step(digits_shift):
    """MCC + BNM + SelfTraining (built-in strong augmentation) + DANN, added with +, under jit_compile=True."""
    source_x, source_y, target_x, _ = digits_shift
    keras.utils.set_random_seed(0)
    strategies = MCC() + BNM() + SelfTraining(threshold=0.5, seed=0) + da.DANN(hidden_units=(16,))
    adapter = da.DomainAdapter(small_conv(), num_classes=10, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    history = adapter.fit(source=(source_x[:128], source_y[:128]), target=target_x[:128], epochs=3, batch_size=32,
                          verbose=0, seed=0).history
    for name in ("loss", "mcc_loss", "bnm_loss", "self_training_loss", "mask_rate", "threshold", "domain_loss"):
        assert np.all(np.isfinite(history[name])), name
    assert history["mask_rate"][-1] > 0 and history["self_training_loss"][-1] > 0
    assert int(adapter.strategies[2].draws.numpy()) == 3 * 4  # one strong view per step


_DISTRIBUTED_SCRIPT = r"""
import json, os
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, domadapt as da
from domadapt.strategies.class_confusion import MCC
from domadapt.strategies.nuclear_norm import BNM
from domadapt.strategies.self_training import SelfTraining

# All three in one recipe: one pair of runs checks every batch statistic.
MAKE = {"mcc+bnm+adamatch": lambda: MCC(weight=3.0) + BNM(weight=3.0) + SelfTraining("adamatch", threshold=0.5, seed=0, schedule="constant")}

def build(strategies):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3, activation="tanh"),
                                 keras.layers.Conv2D(8, 3, activation="tanh")])
    adapter = da.DomainAdapter(backbone, num_classes=3, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    return adapter

rng = np.random.default_rng(0)
source_x = rng.uniform(size=(128, 6, 6, 1)).astype("float32")
source_y = (source_x[:, :3].mean(axis=(1, 2, 3)) * 6).astype("int64") % 3
target_x = (0.5 * source_x + 0.3).astype("float32")
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {}
for name, make in MAKE.items():
    single = build(make())
    with mirrored.scope():
        replicated = build(make())
    fit = dict(source=(source_x, source_y), target=target_x, epochs=2, batch_size=32, seed=0, verbose=0)
    history = single.fit(**fit).history
    replicated_history = replicated.fit(**fit).history
    start = build(make()).trainable_variables
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(single.trainable_variables, start))
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(single.trainable_variables, replicated.trainable_variables))
    logs = {key: [history[key][-1], replicated_history[key][-1]] for key in history}
    result[name] = {"relative_gap": gap / moved, "moved": moved, "logs": logs,
                    "replicas": mirrored.num_replicas_in_sync}
print("RESULT " + json.dumps(result))
"""


def test_tf_distribute_on_two_replicas_trains_exactly_as_one_device():
    """Batch statistics (confusion matrix, nuclear norm, alignment, threshold) and the strong view use the global batch."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _DISTRIBUTED_SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    for name, result in results.items():
        assert result["replicas"] == 2, name
        assert result["moved"] > 0.05, (name, result)
        assert result["relative_gap"] < 1e-4, (name, result)
        for key, (single, replicated) in result["logs"].items():
            assert single == pytest.approx(replicated, rel=1e-4, abs=1e-6), (name, key)
    assert results["mcc+bnm+adamatch"]["logs"]["mask_rate"][0] > 0.05  # pseudo-labels did train


# ----------------------------------------------------------------------------- adaptation gains


@pytest.fixture(scope="module")
def digits_shift():
    """scikit-learn's 8x8 digits; the target is rendered brighter and with less contrast (0.5 x + 0.4)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], data.target[order]
    return images[:900], labels[:900], (images[900:] * 0.5 + 0.4).astype("float32"), labels[900:]


def small_conv():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.Conv2D(32, 3, activation="relu")])


SEEDS = (0, 1, 2)


def mean_target_accuracy(make_strategies, data):
    source_x, source_y, target_x, target_y = data
    scores = []
    for seed in SEEDS:
        keras.utils.set_random_seed(seed)
        adapter = da.DomainAdapter(small_conv(), num_classes=10, strategies=make_strategies())
        adapter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
        # The methods themselves: the guard's drift rule (training-step statistics) backs BNM off on seed 1 here
        # after a transient 93% in one class (32.6% guarded, 72.2% unguarded): a false positive of the guard,
        # which is tested in test_health.py, not a property of the method.
        adapter.fit(source=(source_x, source_y), target=target_x, epochs=30, batch_size=64, verbose=0, seed=seed,
                    collapse_guard=False)
        scores.append(adapter.evaluate(target_x, target_y, verbose=0)[1])
    return float(np.mean(scores)), scores


@pytest.fixture(scope="module")
def digits_source_only(digits_shift):
    return mean_target_accuracy(lambda: [], digits_shift)


# Measured target accuracy, mean of seeds 0-2 (and of seeds 3-5), 30 epochs:
# source-only 0.396 (0.368); MCC 0.544 (0.491); BNM 0.682 (0.613); SelfTraining (AdaMatch) 0.737 (0.591).
# Margins: about half the smaller measured gain.
@pytest.mark.parametrize(
    "make, margin",
    [(lambda: [MCC()], 0.06), (lambda: [BNM()], 0.12), (lambda: [SelfTraining(seed=0)], 0.11)],
    ids=["mcc", "bnm", "adamatch"],
)
def test_each_method_lifts_target_accuracy_over_source_only(digits_shift, digits_source_only, make, margin):
    plain, plain_scores = digits_source_only
    adapted, adapted_scores = mean_target_accuracy(make, digits_shift)
    assert adapted > plain + margin, (plain_scores, adapted_scores)
