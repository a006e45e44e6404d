"""Unsupervised validators: directions on constructed cases, label blindness, compare, checkpoint."""

import warnings

import keras
import numpy as np
import pytest
from conftest import mlp_backbone, train_and_score

import domadapt as da
from domadapt.validators import (
    DeepEmbeddedValidation,
    Entropy,
    FeatureMMD,
    InformationMaximization,
    ReverseValidation,
    SoftNeighborhoodDensity,
)
from domadapt.validators.snd import snd_of
from domadapt.validators.base import Validator
from domadapt.validators.compare import DEFAULT_VALIDATORS


class FixedOutputs(keras.Model):
    """A 'classifier' returning stored probabilities for stored inputs (row index in x[:, 0])."""

    def __init__(self, probabilities):
        super().__init__()
        self.table = keras.ops.convert_to_tensor(np.asarray(probabilities, "float32"))

    def call(self, x):
        return keras.ops.take(self.table, keras.ops.cast(x[:, 0], "int32"), axis=0)


def indices(count):
    return np.arange(count, dtype="float32")[:, None]


def test_entropy_is_lower_for_confident_predictions():
    confident = FixedOutputs(np.tile([[0.98, 0.01, 0.01]], (20, 1)))
    unsure = FixedOutputs(np.tile([[0.4, 0.3, 0.3]], (20, 1)))
    assert Entropy()(confident, target=indices(20)) < Entropy()(unsure, target=indices(20))
    assert not Entropy.higher_is_better


def test_information_maximization_penalises_collapse():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, 30)
    diverse = FixedOutputs(np.eye(3)[classes] * 0.97 + 0.01)
    collapsed = FixedOutputs(np.tile([[0.98, 0.01, 0.01]], (30, 1)))
    assert InformationMaximization()(diverse, target=indices(30)) > InformationMaximization()(collapsed, target=indices(30))


def test_snd_is_higher_for_clustered_target_outputs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    clustered = centres[rng.integers(0, 3, 90)] + 0.01 * rng.normal(size=(90, 8))
    scattered = rng.normal(size=(90, 8))
    assert snd_of(clustered) > snd_of(scattered)
    assert SoftNeighborhoodDensity.higher_is_better


def test_dev_equals_the_source_risk_when_domains_coincide():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(600, 4)).astype("float32")
    labels = (images[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, verbose=0)
    probabilities = model.predict(images[:300], verbose=0)
    risk = np.mean(-np.log(probabilities[np.arange(300), labels[:300]]))
    same = DeepEmbeddedValidation()(model, source=(images[:300], labels[:300]), target=images[300:])
    assert same == pytest.approx(risk, rel=0.15)
    shifted = DeepEmbeddedValidation()(model, source=(images[:300], labels[:300]), target=images[300:] + [3, 0, 0, 0])
    assert abs(shifted - risk) > abs(same - risk)


def test_reverse_validation_is_higher_when_target_pseudo_labels_transfer_back():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    labels = rng.integers(0, 3, 600)
    images = (centres[labels] + rng.normal(size=(600, 2))).astype("float32")
    identity = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
    trained = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    trained.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    trained.fit(images[:300], labels[:300], epochs=20, verbose=0)
    # Constant-ish predictions: a random tiny-weight classifier labels nearly everything alike.
    careless = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))])
    source, target = (images[:300], labels[:300]), images[300:]
    good = ReverseValidation()(trained, source=source, target=target, feature_extractor=identity)
    poor = ReverseValidation()(careless, source=source, target=target, feature_extractor=identity)
    assert good > 0.9
    assert good > poor + 0.2


def test_no_validator_reads_target_labels(moons):
    source_x, source_y, target_x, target_y = moons
    keras.utils.set_random_seed(0)
    _, _, adapter = train_and_score(mlp_backbone(), [da.MMD()], source_x, source_y, target_x, target_y, epochs=3)
    names = ["source_accuracy", "entropy", "information_maximization", "snd", "dev", "mmd", "reverse"]
    with_true = da.validate(adapter, source=(source_x[:200], source_y[:200]), target=(target_x, target_y), validators=names)
    with_wrong = da.validate(adapter, source=(source_x[:200], source_y[:200]), target=(target_x, 1 - target_y),
                             validators=names)
    assert with_true == with_wrong


def test_feature_mmd_is_lower_after_alignment(moons):
    source_x, source_y, target_x, target_y = moons
    scores = {}
    for name, strategies in (("plain", []), ("mmd", [da.MMD()])):
        keras.utils.set_random_seed(0)
        _, _, adapter = train_and_score(mlp_backbone(), strategies, source_x, source_y, target_x, target_y, epochs=40)
        scores[name] = FeatureMMD()(adapter, source=source_x, target=target_x)
    assert scores["mmd"] < scores["plain"]


@pytest.fixture(scope="module")
def candidates(moons):
    source_x, source_y, target_x, target_y = moons
    trained = {}
    for name, strategies, epochs in (
        ("untrained", [], 1),
        ("source-only", [], 40),
        ("dann", [da.GradientReversal(weight=1.0, hidden_units=(64, 64), dropout=0.0)], 80),
    ):
        keras.utils.set_random_seed(0)
        learning_rate = 1e-6 if name == "untrained" else 3e-3
        _, _, adapter = train_and_score(mlp_backbone(), strategies, source_x, source_y, target_x, target_y,
                                        epochs=epochs, learning_rate=learning_rate)
        trained[name] = adapter
    return trained


def test_compare_ranks_candidates_and_warns_about_source_accuracy_drops(moons, candidates, tmp_path):
    source_x, source_y, target_x, target_y = moons
    with pytest.warns(UserWarning, match="untrained: source accuracy"):
        table = da.compare(candidates, source=(source_x[:200], source_y[:200]), target=target_x,
                           target_labels=target_y)
    assert table.recommended != "untrained"
    assert set(table.correlations) == set(table.directions)
    assert table.target_accuracy["dann"] > table.target_accuracy["untrained"]
    text = str(table)
    assert "* recommended" in text and "spearman" in text
    assert table.to_json(tmp_path / "c.json").exists()
    assert table.plot(tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_validator_checkpoint_restores_the_best_epoch(moons):
    source_x, source_y, target_x, _ = moons
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
    checkpoint = da.callbacks.ValidatorCheckpoint("source_accuracy", source=(source_x[:200], source_y[:200]),
                                                  target=target_x)
    history = adapter.fit(source=(source_x, source_y), epochs=4, verbose=0, callbacks=[checkpoint])
    assert len(checkpoint.history) == 4 and "val_source_accuracy" in history.history
    assert checkpoint.best_epoch == int(np.argmax(checkpoint.history))
    restored = da.validate(adapter, source=(source_x[:200], source_y[:200]), validators=["source_accuracy"])
    assert restored["source_accuracy"] == pytest.approx(max(checkpoint.history))


def test_unknown_validator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown 'magic'"):
        da.validate(None, validators=["magic"])


def test_compare_never_recommends_a_collapsed_candidate_even_when_snd_prefers_it():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, 60)
    collapsed = FixedOutputs(np.tile([[0.98, 0.01, 0.01]], (60, 1)))
    diverse = FixedOutputs(np.eye(3)[classes] * 0.6 + rng.uniform(0, 0.2, size=(60, 3)))
    scores = da.validate(collapsed, target=indices(60), validators=["snd"])
    assert scores["snd"] > da.validate(diverse, target=indices(60), validators=["snd"])["snd"]  # SND's blind spot
    with pytest.warns(UserWarning, match="collapsed: its target predictions collapse"):
        table = da.compare({"collapsed": collapsed, "diverse": diverse}, target=indices(60), validators=["snd"])
    assert table.recommended == "diverse"


def test_compare_excludes_exactly_uniform_outputs_but_not_an_accurate_model_on_an_imbalanced_target():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(90, int), np.ones(10, int)]  # a 90/10 target
    confidence = rng.uniform(0.99, 1.0, size=100)  # old rule: class-spread 0.48 < 0.5, excluded
    accurate = np.where(np.eye(2)[labels] == 1, confidence[:, None], 1 - confidence[:, None])
    models = {"accurate": FixedOutputs(accurate), "uniform": FixedOutputs(np.full((100, 2), 0.5)),
              "one-class": FixedOutputs(np.tile([[0.9, 0.1]], (100, 1)))}
    with pytest.warns(UserWarning) as record:
        table = da.compare(models, target=indices(100), validators=["snd", "entropy"])
    assert table.recommended == "accurate"
    assert set(table.excluded) == {"uniform", "one-class"}
    messages = [str(w.message) for w in record]
    assert any(m.startswith("uniform: its target predictions collapse: outputs near-uniform") for m in messages)
    assert not any(m.startswith("accurate:") and "collapse" in m for m in messages)
    # The rule itself: uniform and input-independent outputs have no information; one class for 99%+ images.
    from domadapt.validators.compare import collapse_reason

    assert collapse_reason(accurate) is None
    assert collapse_reason(np.full((50, 3), 1 / 3)) is not None
    varied_but_one_class = np.c_[rng.uniform(0.6, 0.99, 100), np.zeros(100)]
    varied_but_one_class[:, 1] = 1 - varied_but_one_class[:, 0]
    assert "onto one class (100.0%" in collapse_reason(varied_but_one_class)


def test_compare_table_keeps_full_column_names_and_prints_each_warning_once():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, 60)
    models = {"diverse": FixedOutputs(np.eye(3)[classes] * 0.9 + 0.03),
              "collapsed": FixedOutputs(np.tile([[0.98, 0.01, 0.01]], (60, 1)))}
    with pytest.warns(UserWarning) as record:
        table = da.compare(models, source=(indices(60), classes), target=indices(60),
                           validators=["source_accuracy", "information_maximization"])
    header = str(table).splitlines()[0].split()
    assert header == ["candidate", "source_accuracy", "information_maximization"]
    text = str(table)
    for message in table.warnings:
        assert message not in text  # issued once, as a Python warning
    assert sorted(str(w.message) for w in record) == sorted(table.warnings)
    assert "collapsed !" in text and "! not eligible: collapsed (" in text


def test_validator_checkpoint_defaults_to_information_maximization_not_snd():
    # validator_selection.md: SND Spearman -0.94 / -0.67 with target accuracy; IM +0.94 / +0.66.
    assert da.callbacks.ValidatorCheckpoint(target=indices(4)).validator.name == "information_maximization"
    assert da.callbacks.ValidatorCheckpoint("snd", target=indices(4)).validator.name == "snd"


def test_feature_mmd_with_the_strategy_options_scores_what_da_mmd_minimises():
    rng = np.random.default_rng(2)
    source, target = rng.normal(size=(40, 4)).astype("float32"), rng.normal(0.5, 1, size=(30, 4)).astype("float32")
    identity = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    score = FeatureMMD(bandwidth="multi", estimator="biased")(identity, source=source, target=target,
                                                                feature_extractor=identity)
    assert score == pytest.approx(float(da.ops.mmd(source, target, "rbf", "multi", "biased")), rel=1e-5)
    with pytest.raises(ValueError, match="`bandwidth` must be one of"):
        FeatureMMD(bandwidth="scott")


def test_validators_and_compare_read_a_target_dataset_of_single_images_as_fit_does(moons, candidates):
    # fit accepts tf.data.Dataset.from_tensor_slices(images) (one image per element); the validators
    # concatenated its elements as if they were batches (N x 2 features -> 2N numbers: a raw Keras shape error).
    import tensorflow as tf

    source_x, source_y, target_x, _ = moons
    source, target = (source_x[:200], source_y[:200]), target_x[:150]
    names = ["entropy", "information_maximization", "snd", "mmd"]
    expected = da.validate(candidates["dann"], source=source, target=target, validators=names)
    for dataset in (tf.data.Dataset.from_tensor_slices(target), tf.data.Dataset.from_tensor_slices(target).batch(16),
                    tf.data.Dataset.from_tensor_slices((target, np.zeros(150, int)))):
        scores = da.validate(candidates["dann"], source=source, target=dataset, validators=names)
        assert scores == pytest.approx(expected, rel=1e-5)
    with pytest.warns(UserWarning):
        table = da.compare(candidates, source=source, target=tf.data.Dataset.from_tensor_slices(target))
        reference = da.compare(candidates, source=source, target=target)
    for name in candidates:
        assert table.scores[name] == pytest.approx(reference.scores[name], rel=1e-5)
    assert table.recommended == reference.recommended and table.class_mix == reference.class_mix
    with pytest.raises(ValueError, match="rank 1, one per element or batched"):
        da.validate(candidates["dann"], source=source, validators=["entropy"],
                    target=tf.data.Dataset.from_tensor_slices(target[:, :, None, None]))


def test_images_of_without_a_known_image_rank_reads_batches_and_refuses_dict_elements():
    import tensorflow as tf

    from domadapt.validators.base import _image_rank, images_of

    x = np.random.default_rng(0).random((10, 4, 4, 1)).astype("float32")
    unknown = tf.data.Dataset.from_tensor_slices(x).batch(5).map(lambda b: tf.py_function(lambda t: t, [b], tf.float32))
    assert unknown.element_spec.shape.rank is None
    net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert images_of(unknown, "target", net).shape == (10, 4, 4, 1)  # as batches, as before
    first, second = keras.Input((3,)), keras.Input((4,))
    two_inputs = keras.Model([first, second], keras.layers.Concatenate()([first, second]))
    assert _image_rank(two_inputs) is None and _image_rank(net) == 3
    with pytest.raises(TypeError, match="dataset of images"):
        images_of(tf.data.Dataset.from_tensor_slices({"image": x}), "target", net)


# ------------------------------------------------------------------ review fixes (each failed before)
def test_compare_scores_every_candidate_on_the_same_images_of_a_shuffled_dataset_target(moons, candidates):
    # Each validator read the dataset again: a shuffled dataset gave each candidate (and each validator) another
    # sample; the same model entered twice scored differently (SND 2.374 / 2.318).
    import tensorflow as tf

    source_x, source_y, target_x, _ = moons
    model = candidates["dann"]
    shuffled = tf.data.Dataset.from_tensor_slices(target_x).shuffle(500, seed=1).batch(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = da.compare({"a": model, "b": model, "c": model}, source=(source_x[:200], source_y[:200]),
                           target=shuffled, validators=[SoftNeighborhoodDensity(max_samples=100), "entropy"])
    assert table.scores["a"] == table.scores["b"] == table.scores["c"]


def test_the_collapse_filter_samples_the_target_at_random_not_its_first_images():
    # A class-sorted target: its first images are all one class, and an accurate model looked collapsed on them
    # (excluded as "collapsed"; a 49%-accurate model was recommended).
    count = 600
    labels = np.repeat([0, 1, 2], count // 3)
    accurate = FixedOutputs(np.eye(3)[labels] * 0.9 + 0.1 / 3)
    guessing = FixedOutputs(np.eye(3)[np.random.default_rng(0).integers(0, 3, count)] * 0.5 + 0.5 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = da.compare({"accurate": accurate, "guessing": guessing}, target=indices(count),
                           validators=["entropy"], collapse_samples=100)
    assert table.excluded == {} and table.recommended == "accurate"


def test_a_nan_score_sets_its_candidate_aside_instead_of_picking_the_first_listed():
    from domadapt.validators.compare import recommend

    for order in (("nan", "good", "poor"), ("good", "nan", "poor"), ("poor", "nan", "good")):
        values = {"nan": float("nan"), "good": 2.0, "poor": 1.0}
        oriented = {"information_maximization": {c: values[c] for c in order}}
        recommended, mean_rank, excluded = recommend(oriented, by=("information_maximization",))
        assert recommended == "good" and excluded == {"nan": "non-finite score"}
    with pytest.raises(ValueError, match="NaN or infinite score"):
        recommend({"entropy": {"a": float("nan")}}, by=("entropy",))


def test_validator_inputs_are_checked_before_any_prediction(moons, candidates):
    source_x, source_y, target_x, _ = moons
    model = candidates["source-only"]
    with pytest.raises(ValueError, match=r"Argument `target`: expected images of shape \(num_images, 2\)"):
        da.validate(model, target=target_x[:, :1], validators=["entropy"])
    poisoned = target_x.copy()
    poisoned[5, 1] = np.nan
    with pytest.raises(ValueError, match="Argument `target`: image 5"):
        da.validate(model, target=poisoned, validators=["entropy"])
    for labels, match in ((np.full(500, 2), r"class indices in \[0, 2\)"), (np.full(500, -1), "class indices"),
                          (np.full(500, 0.5), "integer class indices")):
        with pytest.raises(ValueError, match=match):
            da.validate(model, source=(source_x, labels), target=target_x, validators=["dev"])
    with pytest.raises(ValueError, match="at least 2 labeled images"):
        da.validate(model, source=(source_x[:1], source_y[:1]), target=target_x, validators=["source_accuracy"])
    import tensorflow as tf

    with pytest.raises(ValueError, match="needs at least 2 images"):
        da.validate(model, target=tf.data.Dataset.from_tensor_slices(target_x).take(0), validators=["entropy"])
    for make in (lambda: SoftNeighborhoodDensity(max_samples=0), lambda: ReverseValidation(max_samples=None),
                 lambda: DeepEmbeddedValidation(max_samples=-1), lambda: FeatureMMD(max_samples=1)):
        with pytest.raises(ValueError, match="max_samples"):
            make()
    with pytest.raises(ValueError, match="temperature"):
        SoftNeighborhoodDensity(temperature=0)
    with pytest.raises(ValueError, match="is empty"):
        da.validate(model, target=target_x, validators=[])
    with pytest.raises(ValueError, match=r"names \['snd'\] more than once"):
        da.validate(model, target=target_x, validators=[SoftNeighborhoodDensity(), SoftNeighborhoodDensity(temperature=1.0)])
    with pytest.raises(ValueError, match="`target_labels`: expected one label per target image"):
        da.compare({"m": model}, target=target_x, target_labels=np.zeros(499, int), validators=["entropy"])


def short_batchnorm_fit(seed, **fit_arguments):
    """A BN adapter after one 4-step epoch (its moving statistics are mostly their initial 0 and 1)."""
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(256, 2)).astype("float32") * 3 + 5
    labels = (source[:, 0] > 5).astype(int)
    target = (source * 1.5 + 2).astype("float32")
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                                 keras.layers.ReLU()])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD(weight=1e-3)])
    adapter.compile(optimizer="adam", metrics=["accuracy"])
    extra = {key: value(target, labels) if callable(value) else value for key, value in fit_arguments.items()}
    history = adapter.fit(source=(source, labels), target=target, epochs=1, batch_size=64, verbose=0,
                          collapse_guard=False, **extra)
    return adapter, history, target, labels


def test_validator_checkpoint_scores_a_batchnorm_adapter_with_the_statistics_fit_would_export():
    # The checkpoint scored a model nobody would export. Now it scores the epoch's weights with statistics
    # re-estimated on its target, which, after one epoch and no restore, is exactly the model fit returns.
    checkpoints = []

    def checkpoint(target, labels):
        checkpoints.append(da.callbacks.ValidatorCheckpoint("entropy", target=target, restore_best=False))
        return checkpoints

    adapter, _, target, _ = short_batchnorm_fit(0, callbacks=checkpoint)
    exported = da.validate(adapter, target=target, validators=["entropy"])["entropy"]
    assert checkpoints[0].history[0] == pytest.approx(exported, rel=1e-4, abs=1e-6)


def test_fit_validation_metrics_of_a_batchnorm_adapter_are_those_of_the_model_it_exports():
    # Keras evaluated validation_data with the lagging moving statistics.
    adapter, history, target, labels = short_batchnorm_fit(1, validation_data=lambda target, labels: (target, labels))
    loss, accuracy = adapter.evaluate(target, labels, verbose=0)  # the model fit returns: the same weights
    assert history.history["val_loss"][0] == pytest.approx(loss, rel=1e-4)
    assert history.history["val_accuracy"][0] == pytest.approx(accuracy, abs=1e-6)
    assert adapter.__dict__.get("_validation_target") is None  # evaluate after fit uses the exported statistics


def test_validate_predicts_each_image_set_once_with_the_scores_of_separate_calls(moons, candidates, monkeypatch):
    # The seven default validators score the same held-out images; each used to run the backbone
    # again (20 predict passes, classifier and feature extractor apart, on two image sets).
    source_x, source_y, target_x, _ = moons
    adapter = candidates["source-only"]
    source = (source_x[:200], source_y[:200])
    separate = {name: da.validate(adapter, source=source, target=target_x, validators=[name])
                for name in DEFAULT_VALIDATORS}
    passes = []
    predict = keras.Model.predict
    monkeypatch.setattr(keras.Model, "predict", lambda self, x, *a, **k: passes.append(len(x)) or predict(self, x, *a, **k))
    together = da.validate(adapter, source=source, target=target_x)
    assert together == {name: scores[name] for scores in separate.values() for name in scores}
    # one joint (probabilities, features) pass per image set and statistics: source, target, and the
    # mmd validator's random subsets of each
    assert len(passes) <= 4, passes


class _Scores(Validator):
    """A validator returning a fixed sequence of scores, one per call."""

    name = "scripted"
    requires = ("target",)

    def __init__(self, scores):
        self.scores = list(scores)

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        return self.scores.pop(0)


def test_validator_checkpoint_restarts_each_fit_never_picks_a_nan_and_checks_its_arguments(moons):
    source_x, source_y, target_x, _ = moons
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[da.CORAL()])
    adapter.compile(optimizer="adam")
    fit = dict(source=(source_x, source_y), target=target_x, verbose=0, collapse_guard=False)
    # Reused in a second fit, it kept the first fit's best (score 5) and restored its weights.
    checkpoint = da.callbacks.ValidatorCheckpoint(_Scores([5.0, 1.0, 0.5, 0.7]), target=target_x)
    adapter.fit(epochs=2, callbacks=[checkpoint], **fit)
    ends = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(adapter.get_weights()))
    adapter.fit(epochs=2, callbacks=[record, checkpoint], **fit)
    assert checkpoint.history == [0.5, 0.7] and checkpoint.best_epoch == 1
    assert all(np.array_equal(a, b) for a, b in zip(adapter.get_weights(), ends[1]))
    # A NaN first score locked the checkpoint to epoch 0.
    checkpoint = da.callbacks.ValidatorCheckpoint(_Scores([float("nan"), 1.0, 2.0]), target=target_x)
    ends.clear()
    adapter.fit(epochs=3, callbacks=[record, checkpoint], **fit)
    assert checkpoint.best_epoch == 2 and all(np.array_equal(a, b) for a, b in zip(adapter.get_weights(), ends[2]))
    # Bad arguments: at construction, not at the end of the first epoch of training.
    for kwargs, error, pattern in ((dict(patience="2"), ValueError, "`patience`"), (dict(patience=-1), ValueError, "`patience`"),
                                   (dict(restore_best="no"), TypeError, "`restore_best`")):
        with pytest.raises(error, match=pattern):
            da.callbacks.ValidatorCheckpoint(target=target_x, **kwargs)
    with pytest.raises(ValueError, match="needs validation data"):
        da.callbacks.ValidatorCheckpoint()
    with pytest.raises(ValueError, match="`source` is required by the 'reverse' validator"):
        da.callbacks.ValidatorCheckpoint("reverse", target=target_x)
    with pytest.raises(TypeError, match="`source` must be \\(images, labels\\)"):
        da.callbacks.ValidatorCheckpoint("dev", source=source_x, target=target_x)
    with pytest.raises(ValueError, match="`diversity` must be a finite number"):
        da.EntropyMinimization(0.1, diversity=float("inf"))  # the loss went non-finite at step 1
    with pytest.raises(TypeError, match="`verbose` must be True or False"):
        da.FineTune(verbose="no")  # bool("no") is True
