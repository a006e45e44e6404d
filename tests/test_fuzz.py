"""Fuzzed bad input: fit, the gap metrics and the CLI answer with a clear domadapt error, never a graph error."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp_backbone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import domadapt as da
from domadapt.cli import main as cli_main

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def adapter():
    model = da.DomainAdapter(mlp_backbone(), num_classes=3, strategies=[da.MMD()])
    model.compile(optimizer="adam")
    return model


def good_images(count=8):
    return np.random.default_rng(0).normal(size=(count, 2)).astype("float32")


def good_labels(count=8):
    return np.arange(count) % 3


@st.composite
def bad_fit_arguments(draw):
    """(keyword arguments of fit, which argument is wrong) with exactly one thing wrong."""
    kind = draw(st.sampled_from([
        "shape", "dtype", "empty", "length", "label_range", "label_fraction", "nan", "one_hot",
        "dataset_empty", "dataset_shape", "dataset_strings", "target_shape", "not_a_tuple",
    ]))
    count = draw(st.integers(2, 12))
    images, labels, target = good_images(count), good_labels(count), good_images(count)
    if kind == "shape":
        dims = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3).filter(lambda d: tuple(d) != (2,)))
        images = np.zeros((count, *dims), "float32")
    elif kind == "dtype":
        images = draw(st.sampled_from([images.astype(str), images.astype(object), images.astype(complex)]))
    elif kind == "empty":
        images, labels = images[:0], labels[:0]
    elif kind == "length":
        labels = good_labels(count + draw(st.integers(1, 5)))
    elif kind == "label_range":
        labels = labels.copy()
        labels[draw(st.integers(0, count - 1))] = draw(st.sampled_from([-1, 3, 99, -7]))
    elif kind == "label_fraction":
        labels = labels.astype("float32") + 0.5
    elif kind == "nan":
        images = images.copy()
        images[draw(st.integers(0, count - 1)), draw(st.integers(0, 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "one_hot":
        labels = np.eye(3)[labels]
        if labels.shape[1] == 1:
            labels = np.eye(3)[[0, 1]]
    elif kind == "target_shape":
        target = np.zeros((count, draw(st.integers(3, 6))), "float32")
    source = (images, labels)
    if kind == "dataset_empty":
        source = tf.data.Dataset.from_tensor_slices((good_images(4), good_labels(4))).take(0)
    elif kind == "dataset_shape":
        source = tf.data.Dataset.from_tensor_slices((np.zeros((count, 5), "float32"), labels)).batch(4)
    elif kind == "dataset_strings":
        source = tf.data.Dataset.from_tensor_slices((np.array(["a"] * count), labels))
    elif kind == "not_a_tuple":
        source = images
    return {"source": source, "target": target}, kind


@SETTINGS
@given(arguments=bad_fit_arguments())
def test_fit_rejects_bad_input_with_a_clear_error(adapter, arguments):
    kwargs, kind = arguments
    before = [w.copy() for w in adapter.get_weights()]
    with pytest.raises((ValueError, TypeError)) as caught:
        adapter.fit(**kwargs, epochs=1, batch_size=4, verbose=0)
    assert not isinstance(caught.value, tf.errors.OpError), kind
    message = str(caught.value)
    assert "Argument `" in message or "DomainAdapter.fit" in message, (kind, message)
    assert len(message) < 600, kind  # a sentence, not a graph dump
    assert all(np.array_equal(a, b) for a, b in zip(before, adapter.get_weights())), kind  # nothing trained


@st.composite
def bad_features(draw):
    good = np.random.default_rng(1).normal(size=(20, 4))
    kind = draw(st.sampled_from(["rank", "width", "nan", "few", "strings", "empty"]))
    if kind == "rank":
        bad = np.zeros((20, 2, 2, draw(st.integers(1, 3))))
    elif kind == "width":
        bad = np.zeros((20, draw(st.integers(5, 9))))
    elif kind == "nan":
        bad = good.copy()
        bad[draw(st.integers(0, 19)), draw(st.integers(0, 3))] = draw(st.sampled_from([np.nan, np.inf]))
    elif kind == "few":
        bad = good[:1]
    elif kind == "strings":
        bad = good.astype(str)
    else:
        bad = good[:0]
    first = draw(st.booleans())
    return (bad, good) if first else (good, bad), kind


GAP_FUNCTIONS = {
    "mmd": lambda s, t: da.gap.mmd(s, t),
    "mmd_linear": lambda s, t: da.gap.mmd(s, t, estimator="linear"),
    "mmd_test": lambda s, t: da.gap.mmd_test(s, t, permutations=10),
    "coral": da.gap.coral,
    "frechet": da.gap.frechet,
    "kid": lambda s, t: da.gap.kid(s, t, subset_size=4, subsets=2),
    "proxy_a_distance": da.gap.proxy_a_distance,
}


@SETTINGS
@given(pair=bad_features(), function=st.sampled_from(sorted(GAP_FUNCTIONS)))
def test_gap_metrics_reject_bad_features_with_a_clear_error(pair, function):
    (source, target), kind = pair
    with pytest.raises((ValueError, TypeError)) as caught:
        GAP_FUNCTIONS[function](source, target)
    assert not isinstance(caught.value, tf.errors.OpError), (function, kind)
    assert "features" in str(caught.value), (function, kind, str(caught.value))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=st.sampled_from([
    ["gap"],
    ["gap", "{missing}", "{images}"],
    ["gap", "{images}", "{missing}"],
    ["gap", "{empty}", "{images}"],
    ["gap", "{images}", "{images}", "--backbone", "no_such_backbone"],
    ["gap", "{images}", "{images}", "--image-size", "0"],
    ["gap", "{images}", "{images}", "--max-samples", "-3"],
    ["gap", "{images}", "{images}", "--backbone", "pixels", "--json", "{existing}"],
    ["run", "no_such_recipe", "--source", "{images}", "--target", "{images}"],
    ["run", "few_labels", "--source", "{missing}", "--target", "{images}"],
    ["run", "few_labels", "--source", "{images}", "--target", "{images}", "--epochs", "0"],
    ["no_such_command"],
]))
def test_cli_answers_bad_arguments_with_exit_code_2_and_no_traceback(tmp_path_factory, capsys, arguments):
    root = tmp_path_factory.mktemp("cli")
    (root / "images").mkdir()
    for index in range(3):
        keras.utils.save_img(root / "images" / f"{index}.png", np.full((12, 12, 3), 40 * index, "uint8"), scale=False)
    (root / "empty").mkdir()
    (root / "existing.json").write_text("{}")
    paths = {name: str(root / name) for name in ("images", "empty", "missing")}
    paths["existing"] = str(root / "existing.json")
    argv = [a.format(**paths) for a in arguments]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
    output = capsys.readouterr()
    assert code == 2, (argv, output.err[-500:])
    assert "Traceback" not in output.err + output.out, argv
    assert (root / "existing.json").read_text() == "{}"  # nothing the user owns was overwritten
