"""domadapt.ops: one definition per discrepancy, tied to numpy references, to the strategies' losses,
to the gap tools and to the validators."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import domadapt as da
from domadapt import ops


def numpy_mmd(source, target, kernel, estimator):
    """Double loop over all pairs, float64: the reference."""
    n, m = len(source), len(target)
    ss = sum(kernel(source[i], source[j]) for i in range(n) for j in range(n) if estimator == "biased" or i != j)
    tt = sum(kernel(target[i], target[j]) for i in range(m) for j in range(m) if estimator == "biased" or i != j)
    st = sum(kernel(source[i], target[j]) for i in range(n) for j in range(m))
    if estimator == "biased":
        return ss / n**2 + tt / m**2 - 2 * st / (n * m)
    return ss / (n * (n - 1)) + tt / (m * (m - 1)) - 2 * st / (n * m)


def numpy_bandwidths(pooled, bandwidth):
    """The documented definitions: median / mean of ||x_i - x_j||^2 over i < j; multi = 0.25x..4x mean."""
    upper = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)[np.triu_indices(len(pooled), k=1)]
    if bandwidth == "median":
        return [np.median(upper)]
    if bandwidth == "mean":
        return [upper.mean()]
    if bandwidth == "multi":
        return [upper.mean() * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    return list(np.atleast_1d(bandwidth))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(11, 4)), rng.normal(0.5, 1.3, size=(9, 4))


@pytest.mark.parametrize("bandwidth", ["median", "mean", "multi", 2.5, [0.5, 4.0]])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_rbf_mmd_matches_the_documented_definitions(batch, bandwidth, estimator):
    source, target = batch
    bandwidths = numpy_bandwidths(np.concatenate([source, target]), bandwidth)
    kernel = lambda a, b: np.mean([np.exp(-np.sum((a - b) ** 2) / w) for w in bandwidths])  # noqa: E731
    value = float(ops.mmd(source.astype("float32"), target.astype("float32"), "rbf", bandwidth, estimator))
    assert value == pytest.approx(numpy_mmd(source, target, kernel, estimator), rel=1e-4)


def test_linear_and_polynomial_kernels_and_the_linear_time_estimator(batch):
    source, target = batch
    linear = lambda a, b: a @ b  # noqa: E731
    polynomial = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    for name, kernel in (("linear", linear), ("polynomial", polynomial)):
        for estimator in ("biased", "unbiased"):
            value = float(ops.mmd(source, target, name, estimator=estimator))
            assert value == pytest.approx(numpy_mmd(source, target, kernel, estimator), rel=1e-4), (name, estimator)
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / 2.0)  # noqa: E731
    expected = np.mean([rbf(source[2 * i], source[2 * i + 1]) + rbf(target[2 * i], target[2 * i + 1])
                        - rbf(source[2 * i], target[2 * i + 1]) - rbf(source[2 * i + 1], target[2 * i])
                        for i in range(4)])
    assert float(ops.mmd(source, target, "rbf", 2.0, "linear")) == pytest.approx(expected, rel=1e-4)


def test_median_and_mean_bandwidths_on_odd_and_even_pair_counts():
    rng = np.random.default_rng(1)
    for count in (12, 7):  # 66 pairs (an even count: the mean of two middle values) and 21 (odd)
        x = rng.normal(size=(count, 3))
        upper = ((x[:, None] - x[None]) ** 2).sum(-1)[np.triu_indices(count, k=1)]
        assert float(ops.median_pairwise_squared_distance(x)) == pytest.approx(np.median(upper), rel=1e-5)
        assert float(ops.mean_pairwise_squared_distance(x)) == pytest.approx(upper.mean(), rel=1e-5)
    assert float(ops.median_pairwise_squared_distance([[0.0], [1.0], [3.0]])) == pytest.approx(4.0)


def test_a_large_common_offset_costs_no_precision():
    # Issue #13: features 0.1-scale around 1000 lost the kernel's precision in float32.
    rng = np.random.default_rng(0)
    source = rng.normal(0, 0.1, size=(200, 16))
    target = rng.normal(0.05, 0.1, size=(200, 16))
    for bandwidth in ("multi", "median"):
        at_zero = float(ops.mmd(source.astype("float32"), target.astype("float32"), bandwidth=bandwidth))
        shifted = float(ops.mmd((source + 1000).astype("float32"), (target + 1000).astype("float32"),
                                bandwidth=bandwidth))
        assert shifted == pytest.approx(at_zero, rel=1e-3)  # the uncentred expansion gave 0.016 for 0.077
    assert da.gap.mmd(source + 1000, target + 1000) == pytest.approx(da.gap.mmd(source, target), rel=1e-5)


def test_half_precision_in_float32_out_and_xla_equals_eager(batch):
    source, target = (tf.constant(x * 200, tf.float16) for x in batch)
    for function in (ops.mmd, ops.coral):
        value = function(source, target)
        assert value.dtype == "float32" and np.isfinite(float(value))
    compiled = tf.function(lambda s, t: ops.mmd(s, t, "rbf", "median", "unbiased"), jit_compile=True)
    a, b = (tf.constant(x, tf.float32) for x in batch)
    assert float(compiled(a, b)) == pytest.approx(float(ops.mmd(a, b, "rbf", "median", "unbiased")), rel=1e-5)


def test_the_mmd_gradient_is_finite_and_moves_target_towards_source(batch):
    source, target = (tf.constant(x, tf.float32) for x in batch)
    with tf.GradientTape() as tape:
        tape.watch(target)
        value = ops.mmd(source, target)
    gradient = tape.gradient(value, target)
    assert np.all(np.isfinite(gradient.numpy()))
    assert float(ops.mmd(source, target - 0.5 * gradient)) < float(value)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bandwidth": "median", "estimator": "unbiased"},
        {"bandwidth": "mean"},
        {"bandwidth": [1.0, 8.0], "estimator": "unbiased"},
        {"kernel": "linear", "estimator": "biased"},
        {"kernel": "polynomial", "estimator": "unbiased"},
        {"bandwidth": 3.0, "estimator": "linear"},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()) or "defaults",
)
def test_the_mmd_strategy_loss_equals_the_gap_mmd(options):
    rng = np.random.default_rng(2)
    source = rng.normal(size=(32, 6)).astype("float32")
    target = rng.normal(0.4, 1.2, size=(24, 6)).astype("float32")
    strategy = da.MMD(weight=1.0, schedule="constant", **options)
    gap_source, gap_target = source, target
    if options.get("estimator") == "linear":
        # da.gap.mmd draws the disjoint pairs at random (seed 0); the loss pairs a batch's rows in order.
        pairs = min(len(source), len(target)) // 2
        source = source[np.random.default_rng([0, len(source)]).permutation(len(source))[: 2 * pairs]]
        target = target[np.random.default_rng([0, len(target)]).permutation(len(target))[: 2 * pairs]]
    step = da.Step(source_features=tf.constant(source), target_features=tf.constant(target),
                   progress=tf.constant(1.0))
    loss = float(strategy.loss(step)["mmd_loss"])
    gap_options = {"kernel": "rbf", "bandwidth": "multi", "estimator": "biased", **options}
    assert loss == pytest.approx(da.gap.mmd(gap_source, gap_target, block_size=7, **gap_options), rel=1e-5, abs=1e-7)


def test_the_coral_strategy_loss_equals_the_gap_coral():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(40, 5)).astype("float32")
    target = (rng.normal(size=(30, 5)) * [1, 2, 3, 1, 0.5]).astype("float32")
    step = da.Step(source_features=tf.constant(source), target_features=tf.constant(target),
                   progress=tf.constant(1.0))
    loss = float(da.CORAL(weight=1.0, schedule="constant").loss(step)["coral_loss"])
    assert loss == pytest.approx(da.gap.coral(source, target), rel=1e-5)


def test_the_entropy_validator_and_entropy_minimization_share_one_function():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(25, 4)).astype("float32") * 3
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))

    class Fixed(keras.Model):
        def call(self, x):
            return keras.ops.take(keras.ops.convert_to_tensor(probabilities), keras.ops.cast(x[:, 0], "int32"), axis=0)

    validator = da.validators.Entropy()(Fixed(), target=np.arange(25, dtype="float32")[:, None])
    step = da.Step(target_logits=tf.constant(logits), progress=tf.constant(1.0))
    loss = float(da.EntropyMinimization(weight=1.0, schedule="constant", diversity=0.0).loss(step)["entropy_loss"])
    reference = float(np.mean(-np.sum(probabilities * np.log(probabilities), axis=1)))
    assert validator == pytest.approx(loss, rel=1e-6)
    assert loss == pytest.approx(reference, rel=1e-5)
    # The default adds the diversity term: minus the entropy of the batch's mean prediction.
    with_diversity = float(da.EntropyMinimization(weight=1.0, schedule="constant").loss(step)["entropy_loss"])
    marginal = probabilities.mean(axis=0)
    assert with_diversity == pytest.approx(reference + np.sum(marginal * np.log(marginal)), rel=1e-5)


def test_logistic_regression_fit_with_two_classes_is_the_binary_fit():
    from scipy import optimize

    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 3))
    y = (x @ [1.0, -2.0, 0.5] + 0.3 * rng.normal(size=120) > 0).astype(int)
    weights, bias = ops.fit_logistic_regression(x, y, num_classes=2, l2=0.1)
    score = x @ (weights[:, 1] - weights[:, 0]) + bias[1] - bias[0]

    def binary(p):  # binary logistic loss with the documented penalty (l2 / 4) ||w||^2
        z = x @ p[:3] + p[3]
        return np.mean(np.logaddexp(0, z) - y * z) + 0.1 / 4 * p[:3] @ p[:3]

    reference = optimize.minimize(binary, np.zeros(4), method="BFGS").x
    assert score == pytest.approx(x @ reference[:3] + reference[3], abs=1e-3)
    assert np.mean((score > 0) == y) > 0.9


def test_the_old_kernels_argument_and_old_configs_still_work():
    with pytest.warns(DeprecationWarning, match="kernels='rbf'"):
        old = da.MMD(weight=0.5, kernels="rbf")
    assert (old.kernel, old.bandwidth, old.weight) == ("rbf", "mean", 0.5)
    config = da.MMD(weight=0.5).get_config()
    for key in ("kernel", "bandwidth", "estimator"):
        config.pop(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = da.MMD.from_config({**config, "kernels": "linear"})
    assert (loaded.kernel, loaded.weight) == ("linear", 0.5)
    restored = da.MMD.from_config(da.MMD(bandwidth=[1.0, 2.0], estimator="unbiased").get_config())
    assert (restored.bandwidth, restored.estimator) == ([1.0, 2.0], "unbiased")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"kernel": "laplace"}, "`kernel` must be one of"),
        ({"bandwidth": "silverman"}, "`bandwidth` must be one of"),
        ({"bandwidth": [1.0, -2.0]}, "`bandwidth` must be one of"),
        ({"estimator": "mle"}, "`estimator` must be one of"),
    ],
)
def test_bad_kernel_options_are_clear_errors_everywhere(arguments, message):
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(10, 2)), rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match=message):
        da.MMD(**arguments)
    with pytest.raises(ValueError, match=message):
        da.gap.mmd(source, target, **arguments)
    with pytest.raises(ValueError, match=message):
        ops.mmd(source, target, **arguments)


def test_a_one_sample_domain_gives_a_finite_unbiased_mmd():
    # The last batch of an epoch can hold one image; its within-domain term has no pair and is 0.
    source, target = np.ones((1, 3), "float32"), np.zeros((4, 3), "float32")
    kernel = lambda a, b: np.exp(-np.sum((a - b) ** 2) / 2.0)  # noqa: E731
    expected = 0.0 + 1.0 - 2 * kernel(source[0], target[0])  # target pairs all at distance 0
    assert float(ops.mmd(source, target, "rbf", 2.0, "unbiased")) == pytest.approx(expected, rel=1e-5)
