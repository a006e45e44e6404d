"""Gap metrics against independent references, statistical behaviour, properties, report and CLI."""

import json

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import domadapt as da
from domadapt.cli import main as cli_main
from domadapt.gap.statistics import frechet_from_moments


def rbf_kernel(a, b, bandwidth):
    return np.exp(-np.sum((a - b) ** 2) / bandwidth)


def loop_mmd(source, target, kernel, unbiased):
    """Direct double loop over all pairs: the reference."""
    n, m = len(source), len(target)
    ss = sum(kernel(source[i], source[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    tt = sum(kernel(target[i], target[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    st_ = sum(kernel(source[i], target[j]) for i in range(n) for j in range(m))
    if unbiased:
        return ss / (n * (n - 1)) + tt / (m * (m - 1)) - 2 * st_ / (n * m)
    return ss / n**2 + tt / m**2 - 2 * st_ / (n * m)


@pytest.fixture(scope="module")
def small_samples():
    rng = np.random.default_rng(0)
    return rng.normal(size=(23, 5)), rng.normal(0.4, 1.2, size=(17, 5))


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("block_size", [4096, 6])
def test_rbf_mmd_matches_a_double_loop(small_samples, estimator, block_size):
    source, target = small_samples
    expected = loop_mmd(source, target, lambda a, b: rbf_kernel(a, b, 3.0), estimator == "unbiased")
    value = da.gap.mmd(source, target, bandwidth=3.0, estimator=estimator, block_size=block_size)
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_multi_bandwidth_and_polynomial_and_linear_kernels_match_a_double_loop(small_samples):
    source, target = small_samples
    multi = lambda a, b: np.mean([rbf_kernel(a, b, w) for w in (1.0, 4.0)])  # noqa: E731
    assert da.gap.mmd(source, target, bandwidth=[1.0, 4.0]) == pytest.approx(loop_mmd(source, target, multi, True), rel=1e-4)
    poly = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    assert da.gap.mmd(source, target, kernel="polynomial", block_size=5) == pytest.approx(
        loop_mmd(source, target, poly, True), rel=1e-4
    )
    linear = lambda a, b: a @ b  # noqa: E731
    assert da.gap.mmd(source, target, kernel="linear", estimator="biased") == pytest.approx(
        np.sum((source.mean(0) - target.mean(0)) ** 2), rel=1e-4
    )
    assert da.gap.mmd(source, target, kernel="linear") == pytest.approx(loop_mmd(source, target, linear, True), rel=1e-4)


def test_linear_time_mmd_matches_its_formula(small_samples):
    source, target = small_samples
    pairs = min(len(source), len(target)) // 2
    # The pairs are drawn at random: each domain's order from the seed and its own size.
    source = source[np.random.default_rng([3, len(source)]).permutation(len(source))[: 2 * pairs]]
    target = target[np.random.default_rng([3, len(target)]).permutation(len(target))[: 2 * pairs]]
    k = lambda a, b: rbf_kernel(a, b, 2.0)  # noqa: E731
    expected = np.mean([
        k(source[2 * i], source[2 * i + 1]) + k(target[2 * i], target[2 * i + 1])
        - k(source[2 * i], target[2 * i + 1]) - k(source[2 * i + 1], target[2 * i])
        for i in range(pairs)
    ])
    value = da.gap.mmd(*small_samples, bandwidth=2.0, estimator="linear", seed=3)
    assert value == pytest.approx(expected, rel=1e-4)


def test_linear_time_mmd_is_not_biased_by_row_order():
    """Rows sorted by class, and a larger source: pairing in row order compared the target with the source's first
    class only (0.30 here before the pairs were drawn at random)."""
    rng = np.random.default_rng(0)
    classes = np.repeat([0.0, 3.0], 2000)
    source = rng.normal(classes[:, None], 1.0, size=(4000, 4))  # sorted: all of class 0 first
    target = rng.normal(rng.permutation(classes)[:400, None], 1.0, size=(400, 4))  # the same mixture
    linear = [da.gap.mmd(source, target, bandwidth=8.0, estimator="linear", seed=seed) for seed in range(5)]
    shifted = da.gap.mmd(source, target + 2.0, bandwidth=8.0, estimator="linear")
    assert np.abs(np.mean(linear)) < 0.03 < shifted, (linear, shifted)


def test_median_bandwidth_mmd_is_symmetric_on_large_sets():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(900, 3)), rng.normal(0.2, 1.0, size=(700, 3))  # > MEDIAN_SAMPLES pooled
    assert da.gap.mmd(source, target) == pytest.approx(da.gap.mmd(target, source), rel=1e-6)
    linear = dict(estimator="linear", bandwidth=2.0)
    assert da.gap.mmd(source, target, **linear) == pytest.approx(da.gap.mmd(target, source, **linear), rel=1e-6)


def test_kid_with_a_large_offset_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(50, 4)) + 1000.0, rng.normal(0.5, 1.0, size=(50, 4)) + 1000.0
    kernel = lambda a, b: (a @ b.T / 4 + 1.0) ** 3  # noqa: E731
    ss, tt = kernel(source, source), kernel(target, target)
    expected = (ss.sum() - np.trace(ss)) / (50 * 49) + (tt.sum() - np.trace(tt)) / (50 * 49) - 2 * kernel(
        source, target).mean()
    # One subset of all 50 rows: the unbiased MMD^2 of the whole sets (float32 kernels lost every digit here).
    assert da.gap.kid(source, target, subsets=1, subset_size=50) == pytest.approx(expected, rel=1e-6)


def test_kid_is_symmetric_in_its_arguments():
    # One generator drew the source subset, then the target's: swapping the arguments paired other subsets
    # (0.30513 against 0.30394).
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(0.3, 1.0, size=(400, 8))
    assert da.gap.kid(a, b, subsets=5, subset_size=100) == pytest.approx(da.gap.kid(b, a, subsets=5, subset_size=100), rel=1e-12)


def test_permutation_test_counts_the_mirrored_split_of_equal_domains():
    # n = m = 3: 20 splits, the observed one and its mirror give the same statistic, so p >= 2/20 = 0.10 exactly
    # by enumeration. The float32 kernel was symmetric only to ~6e-8: the mirror scored a hair lower and was not
    # counted (p = 0.055 with 2000 permutations).
    rng = np.random.default_rng(0)
    source = rng.normal(size=(3, 7))
    result = da.gap.mmd_test(source, source + 3.0, permutations=2000, seed=0)
    assert 0.085 < result.p_value < 0.115  # 2 / 20, within the sampling error of 2000 permutations (sd 0.007)


def test_bad_options_of_the_gap_functions_name_the_argument():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    assert np.isfinite(da.gap.mmd(source, target, seed=None))  # None: fresh randomness, as numpy takes it
    with pytest.raises(ValueError, match="`seed` must be None or a non-negative integer; received seed='x'"):
        da.gap.mmd(source, target, seed="x")
    with pytest.raises(ValueError, match="`seed`"):
        da.gap.mmd_test(source, target, seed=-1)
    with pytest.raises(ValueError, match="`subset_size` must be at least 2"):
        da.gap.kid(source, target, subset_size=1)
    with pytest.raises(ValueError, match="`max_samples` must be at least 4"):
        da.gap.proxy_a_distance(source, target, max_samples=1)
    with pytest.raises(ValueError, match="overflowed float32"):
        da.gap.mmd(source * 1e30, target * 1e30)


def test_frechet_matches_the_closed_form_for_known_gaussians():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_from_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-10)
    # Non-commuting covariances: the scipy.sqrtm form agrees where it is well conditioned.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    reference = np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_from_moments(np.zeros(4), cov_a, np.zeros(4), cov_b) == pytest.approx(reference, rel=1e-8)
    # From samples of those Gaussians (moments estimated block-wise).
    samples_a = rng.multivariate_normal(mean_a, np.diag(var_a), size=40000)
    samples_b = rng.multivariate_normal(mean_b, np.diag(var_b), size=40000)
    assert da.gap.frechet(samples_a, samples_b) == pytest.approx(expected, rel=0.03)


def test_frechet_is_sound_for_near_singular_covariances():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))  # fewer samples than dimensions
    value = da.gap.frechet(source, target)
    assert np.isfinite(value) and value >= 0
    assert da.gap.frechet(source, source) == pytest.approx(0.0, abs=1e-6)


def test_coral_matches_its_formula(small_samples):
    source, target = small_samples
    expected = np.sum((np.cov(source, rowvar=False) - np.cov(target, rowvar=False)) ** 2) / (4 * 5**2)
    assert da.gap.coral(source, target) == pytest.approx(expected, rel=1e-10)


def test_permutation_test_holds_its_level_and_detects_a_small_shift():
    rng = np.random.default_rng(0)
    rejections = [
        da.gap.mmd_test(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), permutations=100, seed=i).p_value < 0.05
        for i in range(80)
    ]
    assert np.mean(rejections) <= 0.12  # alpha = 0.05, with room for 80 draws
    detected = [
        da.gap.mmd_test(rng.normal(size=(150, 3)), rng.normal(0.5, 1, size=(150, 3)), permutations=100, seed=i).p_value < 0.05
        for i in range(10)
    ]
    assert np.mean(detected) >= 0.9
    statistic, p_value = da.gap.mmd_test(rng.normal(size=(60, 3)), rng.normal(size=(60, 3)), permutations=50)
    assert 0 < p_value <= 1


def test_proxy_a_distance_and_auc_span_their_range():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
    apart = rng.normal(size=(400, 6)), rng.normal(4, 1, size=(400, 6))
    assert da.gap.proxy_a_distance(*same) < 0.4
    assert da.gap.proxy_a_distance(*apart) > 1.9
    assert abs(da.gap.domain_classifier_auc(*same) - 0.5) < 0.1
    assert da.gap.domain_classifier_auc(*apart) > 0.99


finite_features = arrays(
    np.float64, st.tuples(st.integers(3, 12), st.just(3)),
    elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False),
)


@settings(max_examples=25, deadline=None)
@given(finite_features, finite_features)
def test_distances_are_non_negative_and_symmetric(source, target):
    for metric in (lambda s, t: da.gap.mmd(s, t, estimator="biased"), da.gap.coral, da.gap.frechet):
        forward, backward = metric(source, target), metric(target, source)
        assert forward >= -1e-6
        assert forward == pytest.approx(backward, rel=1e-4, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(finite_features)
def test_identical_samples_have_zero_gap(features):
    assert da.gap.mmd(features, features, estimator="biased") == pytest.approx(0.0, abs=1e-5)
    assert da.gap.coral(features, features) == pytest.approx(0.0, abs=1e-9)
    scale = 1 + np.trace(np.cov(features, rowvar=False))
    assert da.gap.frechet(features, features) == pytest.approx(0.0, abs=1e-6 * scale)


@pytest.mark.parametrize("metric", [da.gap.mmd, da.gap.coral, da.gap.frechet, da.gap.kid, da.gap.proxy_a_distance])
@pytest.mark.parametrize(
    "source, target, pattern",
    [
        (np.zeros((10, 4)), np.zeros((10, 5)), "same width"),
        (np.full((10, 4), np.nan), np.zeros((10, 4)), "NaN"),
        (np.zeros((1, 4)), np.zeros((10, 4)), "at least"),
        (np.zeros((10, 4, 4)), np.zeros((10, 4, 4)), r"\(num_samples, num_features\)"),
        (np.zeros((10, 0)), np.zeros((10, 0)), "at least one feature"),
    ],
)
def test_bad_features_are_clear_errors(metric, source, target, pattern):
    with pytest.raises(ValueError, match=pattern):
        metric(source, target)


def small_backbone():
    return keras.Sequential(
        [keras.Input((12, 12, 3)), keras.layers.Conv2D(8, 3, activation="relu", name="first"),
         keras.layers.Conv2D(8, 3, activation="relu", name="second"), keras.layers.Conv2D(16, 3, name="third")]
    )


def test_measure_profiles_every_layer_and_writes_json_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.random((60, 12, 12, 3)).astype("float32")
    shifted = source * 0.5 + 0.4
    report = da.gap.measure(small_backbone(), source, shifted, metrics=("mmd", "frechet"), verbose=0)
    assert [row["layer"] for row in report.rows] == ["pixels", "first", "second", "third"]
    same = da.gap.measure(small_backbone(), source[:30], source[30:], metrics=("mmd",), verbose=0)
    assert report.rows[0]["mmd"] > 10 * abs(same.rows[0]["mmd"])  # the shift is seen from the pixels on
    assert "pixels" in str(report)
    path = report.to_json(tmp_path / "gap.json")
    assert json.loads(path.read_text())["rows"][1]["layer"] == "first"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        report.to_json(tmp_path / "gap.json")
    import matplotlib

    backend = matplotlib.get_backend()
    picture = report.plot(tmp_path / "gap.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend  # matplotlib.use("Agg") switched a notebook's backend
    # Without a suffix matplotlib added .png after the overwrite check: an existing profile.png was replaced.
    (tmp_path / "profile.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="profile.png exists"):
        report.plot(tmp_path / "profile")
    assert (tmp_path / "profile.png").read_bytes() == b"mine"
    assert report.plot(tmp_path / "profile", overwrite=True) == tmp_path / "profile.png"
    with pytest.raises(ValueError, match="the plot is a PNG"):
        report.plot(tmp_path / "profile.svg")
    with pytest.raises(ValueError, match="is a folder"):
        report.to_json(tmp_path, overwrite=True)  # IsADirectoryError before


def test_gap_of_images_scaled_255x_apart_is_refused_as_training_refuses_them():
    # uint8 source pixels and [0, 1] target pixels: fit refuses them, but features/measure measured the scale, a
    # huge gap of nothing, without a word. Same message as fit's (da.data.scale_mismatch), arrays and datasets alike.
    rng = np.random.default_rng(0)
    photos = (rng.random((20, 12, 12, 3)) * 255).astype("uint8")
    scaled = rng.random((20, 12, 12, 3)).astype("float32")
    message = r"Arguments `target_images` and `source_images` are scaled differently: .* multiply `target_images` by 255"
    with pytest.raises(ValueError, match=message):
        da.gap.features(small_backbone(), photos, scaled, verbose=0)
    with pytest.raises(ValueError, match=message):
        da.gap.features(small_backbone(), tf.data.Dataset.from_tensor_slices(photos).batch(8),
                        tf.data.Dataset.from_tensor_slices(scaled), verbose=0)
    with pytest.raises(ValueError, match=message):
        da.gap.measure(small_backbone(), photos, scaled, metrics=("mmd",), verbose=0)
    source, target = da.gap.features(small_backbone(), photos, scaled * 255, verbose=0)  # scaled alike: measured
    assert source.shape == target.shape == (20, 16)


def test_features_pools_feature_maps():
    source, target = da.gap.features(small_backbone(), np.zeros((5, 12, 12, 3)), np.ones((7, 12, 12, 3)), verbose=0)
    assert source.shape == (5, 16) and target.shape == (7, 16)
    with pytest.raises(ValueError, match=r"target_images.*\(N,\) \+ \(12, 12, 3\)"):
        da.gap.features(small_backbone(), np.zeros((5, 12, 12, 3)), np.zeros((5, 10, 10, 3)), verbose=0)
    # batch_size=0 was range()'s "arg 3 must not be zero"; an empty dataset numpy's "need at least one array".
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer; received batch_size=0"):
        da.gap.features(small_backbone(), np.zeros((5, 12, 12, 3)), np.ones((7, 12, 12, 3)), batch_size=0, verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 12, 12, 3), "float32")).batch(4)
    with pytest.raises(ValueError, match="`target_images`: the dataset gave no images"):
        da.gap.features(small_backbone(), np.zeros((5, 12, 12, 3)), empty, verbose=0)


def test_cli_gap_reads_arrays_and_folders(tmp_path, capsys):
    rng = np.random.default_rng(0)
    source = (rng.random((40, 12, 12, 3)) * 255).astype("uint8")
    np.save(tmp_path / "source.npy", source)
    np.savez(tmp_path / "target.npz", images=(source * 0.5 + 100).astype("uint8"))
    backbone_path = tmp_path / "backbone.keras"
    small_backbone().save(backbone_path)
    code = cli_main(["gap", str(tmp_path / "source.npy"), str(tmp_path / "target.npz"), "--backbone", str(backbone_path),
                     "--metrics", "mmd", "coral", "--json", str(tmp_path / "out.json")])
    assert code == 0
    table = json.loads((tmp_path / "out.json").read_text())
    assert [row["layer"] for row in table["rows"]][:2] == ["pixels", "first"] and table["rows"][0]["mmd"] > 0
    assert "Domain gap per layer" in capsys.readouterr().out
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    for i in range(4):
        keras.utils.save_img(folder / f"{i}.png", source[i], scale=False)
    assert cli_main(["gap", str(tmp_path / "images"), str(tmp_path / "images"), "--backbone", "pixels",
                     "--image-size", "12", "--metrics", "mmd"]) == 0
    assert cli_main(["gap", str(tmp_path / "missing"), str(tmp_path / "images"), "--backbone", "pixels"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("bandwidth", ["median", "mean", "multi"])
def test_block_wise_mmd_equals_the_ops_kernel_on_small_data(small_samples, bandwidth):
    from domadapt import ops

    source, target = small_samples
    expected = float(ops.mmd(source.astype("float32"), target.astype("float32"), "rbf", bandwidth, "unbiased"))
    for block_size in (4096, 5):
        assert da.gap.mmd(source, target, bandwidth=bandwidth, block_size=block_size) == pytest.approx(expected, rel=1e-5)
    statistic, _ = da.gap.mmd_test(source, target, bandwidth=bandwidth, permutations=10)
    assert statistic == pytest.approx(expected, rel=1e-5)


def test_cli_gap_pixels_sees_a_spatial_change_and_reports_the_images_tested(tmp_path):
    """Mirrored brightness ramps: same colour means, other layout. The pixels 'backbone' was the identity, pooled to
    three channel means, so its shift test saw nothing (p = 1)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 12)[None, None, :, None]
    source = np.clip(ramp + rng.normal(0, 20, (40, 12, 12, 3)), 0, 255).astype("uint8")
    target = np.clip(ramp[:, :, ::-1] + rng.normal(0, 20, (40, 12, 12, 3)), 0, 255).astype("uint8")
    np.save(tmp_path / "source.npy", source)
    np.save(tmp_path / "target.npy", target)
    code = cli_main(["gap", str(tmp_path / "source.npy"), str(tmp_path / "target.npy"), "--backbone", "pixels",
                     "--metrics", "mmd", "--permutations", "200", "--json", str(tmp_path / "out.json")])
    assert code == 0
    test = json.loads((tmp_path / "out.json").read_text())["mmd_test"]
    assert test["p_value"] < 0.01 and test["num_source"] == 40 and test["num_target"] == 40


def test_measure_takes_feature_vector_and_sequence_backbones_and_checks_its_inputs_first():
    # A dense-input backbone raised IndexError and a Conv1D one a reshape error (the pixel row assumed (N, H, W, C));
    # a dataset, layers=None and 3 images ended in raw AttributeError / TypeError / a late error about features.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    source, target = rng.random((40, 16)), rng.random((40, 16)) + 0.5
    report = da.gap.measure(dense, source, target, verbose=0, metrics=("mmd",))
    pixels = next(row for row in report.rows if row["layer"] == "pixels")
    assert pixels["width"] == 16 and pixels["mmd"] == pytest.approx(da.gap.mmd(source, target), rel=1e-5)
    conv1d = keras.Sequential([keras.Input((12, 3)), keras.layers.Conv1D(4, 3)])
    assert da.gap.measure(conv1d, rng.random((40, 12, 3)), rng.random((40, 12, 3)), verbose=0,
                          metrics=("mmd",)).rows[0]["width"] == 36
    with pytest.raises(TypeError, match="`layers` must be 'auto', 'output' or a list"):
        da.gap.measure(dense, source, target, layers=None, verbose=0)
    with pytest.raises(ValueError, match="`source_images`: needs at least 4 images"):
        da.gap.measure(dense, source[:3], target, verbose=0)
    with pytest.raises(TypeError, match="`source_images`: measure takes image arrays"):
        da.gap.measure(dense, tf.data.Dataset.from_tensor_slices(source), target, verbose=0)


def test_covariance_overflow_and_an_oversized_permutation_test_are_clear_errors():
    # CORAL returned NaN and Fréchet raised numpy's LinAlgError past |x| ~ 1e154; mmd_test allocated the pooled
    # N x N kernel for any max_samples (100k per domain: ~480 GB).
    rng = np.random.default_rng(0)
    huge = rng.normal(size=(50, 3)) * 1e160
    for gap in (da.gap.coral, da.gap.frechet):
        with pytest.raises(ValueError, match="covariance overflowed float64"):
            gap(huge, huge * 2)
    source = np.zeros((12000, 2), "float32") + rng.normal(size=(12000, 2)).astype("float32")
    with pytest.raises(ValueError, match=r"Argument `max_samples`: 24000 pooled samples need ~6 GiB"):
        da.gap.mmd_test(source, source + 1.0, max_samples=12000)


def test_gap_entry_points_check_datasets_sample_counts_and_pool_any_layer_rank(tmp_path):
    backbone = small_backbone()
    source, target = np.zeros((12, 12, 12, 3), "float32"), np.ones((12, 12, 12, 3), "float32")
    with pytest.raises(ValueError, match=r"`source_images`: expected images of shape \(12, 12, 3\).*\(None, 6, 6, 3\)"):
        da.gap.features(backbone, tf.data.Dataset.from_tensor_slices(np.zeros((4, 6, 6, 3), "float32")).batch(2),
                        target, verbose=0)  # a raw tf.function binding error before
    with pytest.raises(TypeError, match="`source_images`: a dataset must yield numeric image tensors"):
        da.gap.features(backbone, tf.data.Dataset.from_tensor_slices({"image": source}).batch(2), target, verbose=0)
    with pytest.raises(ValueError, match="`verbose` must be 'auto', 0, 1 or 2"):  # int('x') before
        da.gap.features(backbone, source, target, verbose="x")
    with pytest.raises(ValueError, match="`max_samples` must be at least 2"):  # NaN statistic, p = 0.048 before
        da.gap.mmd_test(np.zeros((8, 3)), np.ones((8, 3)), permutations=20, max_samples=1)
    with pytest.raises(ValueError, match="`max_samples` must be at least 4"):  # proxy-A's error named source_features
        da.gap.measure(backbone, source, target, max_samples=3, verbose=0)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        da.gap.measure(backbone, source, target, batch_size=0, verbose=0)
    inputs = keras.Input((16, 3))
    conv1d = keras.Model(inputs, keras.layers.Conv1D(4, 3, name="c1d")(inputs))
    report = da.gap.measure(conv1d, np.zeros((8, 16, 3)), np.ones((8, 16, 3)), layers=["c1d"], metrics=("mmd",),
                            verbose=0)  # its (N, 14, 4) output was passed unpooled and refused by the metric
    assert [row["width"] for row in report.rows] == [48, 4]


def test_a_read_once_dataset_gives_every_image_and_the_scale_check_reads_images_only():
    # The scale check reads a dataset's first batch; the features must still include it (a generator over one
    # iterator cannot restart: 40 of 50 rows came back).
    import tensorflow as tf

    rng = np.random.default_rng(0)
    backbone = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
    batches = (rng.uniform(0, 1, (10, 4, 4, 1)).astype("float32") for _ in range(5))
    once = tf.data.Dataset.from_generator(lambda: batches, output_signature=tf.TensorSpec((None, 4, 4, 1), tf.float32))
    source_features, target_features = da.gap.features(backbone, rng.uniform(0, 1, (20, 4, 4, 1)), once, verbose=0)
    assert len(source_features) == 20 and len(target_features) == 50
    # Features of sensors, not images: a gain of 60 between the two sets is the shift to measure, not a mistake.
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    source_features, target_features = da.gap.features(dense, rng.uniform(0, 1, (30, 3)), rng.uniform(0, 60, (30, 3)),
                                                       verbose=0)
    assert target_features.shape == (30, 4)
    # Images are judged on evenly spaced ones, not the first 256: dark first images do not hide a [0, 255] set.
    bright_late = np.concatenate([np.zeros((300, 4, 4, 1)), rng.uniform(0, 255, (300, 4, 4, 1))])
    with pytest.raises(ValueError, match="scaled differently"):
        da.gap.features(backbone, rng.uniform(0, 1, (20, 4, 4, 1)), bright_late, verbose=0)
