"""Arguments of strategies, adapters, select and compare: clear errors before any graph, numpy scalars welcome,
one strategy object per adapter, copies whose weights line up."""

import json
import math

import keras
import numpy as np
import pytest

import domadapt as da


def dense_backbone(width=8):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width)])


def small_data(seed=0):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(48, 4)).astype("float32")
    return source, (source[:, 0] > 0).astype(int), (source + 0.5).astype("float32")


def test_one_strategy_object_cannot_serve_two_adapters():
    # SelfTraining in a second adapter trained the second one's models from the first (every gradient of the
    # first None, silently) and added a variable to the first, which then failed to load; DANN shared one
    # discriminator between both.
    for strategy in (da.SelfTraining(seed=0), da.DANN(hidden_units=(4,))):
        da.DomainAdapter(dense_backbone(), num_classes=2, strategies=[strategy])
        with pytest.raises(ValueError, match=r"already belongs to another DomainAdapter.*from_config"):
            da.DomainAdapter(dense_backbone(), num_classes=2, strategies=[strategy])
    copy = type(strategy).from_config(strategy.get_config())  # the way the message names works
    assert da.DomainAdapter(dense_backbone(), num_classes=2, strategies=[copy]).strategies == [copy]


def test_an_adversarial_adapter_and_its_from_config_copy_have_weights_in_the_same_order():
    adapter = da.DomainAdapter(dense_backbone(), num_classes=3, strategies=[da.DANN(hidden_units=(4,))])
    copy = da.DomainAdapter.from_config(adapter.get_config())
    copy.set_weights(adapter.get_weights())  # a shape mismatch (8, 4) vs () before
    for ours, theirs in zip(adapter.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_numpy_scalars_are_numbers_and_configs_stay_json():
    strategies = [da.DANN(weight=np.float32(0.5)), da.MMD(weight=np.int64(1)), da.MCC(temperature=np.float32(2.5)),
                  da.SelfTraining(threshold=np.float32(0.9)), da.EntropyMinimization(diversity=np.float32(1)),
                  da.FineTune(every=np.int64(2), target_weight=np.float32(0.5))]
    assert strategies[0].weight == 0.5 and strategies[2].temperature == 2.5 and strategies[5].every == 2
    for strategy in strategies:
        json.dumps(strategy.get_config())  # numpy scalars would not serialise


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: da.FineTune(target_weight=True), ValueError, "`target_weight` must be a non-negative number"),
    (lambda: da.FineTune(target_weight=math.nan), ValueError, "`target_weight` must be a non-negative number"),
    (lambda: da.DANN(hidden_units=None), TypeError, "`hidden_units` must be a tuple of positive integers"),
    (lambda: da.DANN(hidden_units=("a",)), ValueError, "`hidden_units` must be a tuple of positive integers"),
    (lambda: da.DANN(hidden_units=(1.7,)), ValueError, "`hidden_units`"),  # was silently (1,)
    (lambda: da.DANN(dropout=None), ValueError, "`dropout` must be a number in"),
    (lambda: da.DANN(schedule=np.array([1.0, 2.0])), ValueError, "`schedule` must be one of"),
    (lambda: da.CDAN(random_dim="a"), ValueError, "`random_dim` must be a positive integer"),
    (lambda: da.CDAN(random_dim=2.9), ValueError, "`random_dim` must be a positive integer"),  # was 2
    (lambda: da.CDAN(random_dim=True), ValueError, "`random_dim` must be a positive integer"),  # was 1
    (lambda: da.CDAN(entropy_conditioning="no"), TypeError, "`entropy_conditioning` must be True or False"),
    (lambda: da.MimicAugment("rain", seed=-5), ValueError, "`seed` must be None or a non-negative integer"),
    (lambda: da.MimicAugment("rain", seed=1.9), ValueError, "`seed` must be None or a non-negative integer"),
    (lambda: da.MimicAugment.from_target(np.zeros((4, 8, 8, 3), "uint8"), num_references=0), ValueError,
     "`num_references` must be a positive integer"),
    (lambda: da.DomainAdapter(dense_backbone(), num_classes=2, input_shape="ab"), ValueError, "`input_shape` must be"),
    (lambda: da.DomainAdapter(dense_backbone(), num_classes=2, input_shape=(0,)), ValueError, "`input_shape` must be"),
    (lambda: da.DomainAdapter(dense_backbone(), num_classes=2, input_shape=(4.7,)), ValueError, "`input_shape`"),
    (lambda: da.DomainAdapter(dense_backbone(), num_classes=2, strategies=[
        da.DANN(discriminator=keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)]))]), ValueError,
     r"`discriminator` must take inputs of shape \(batch, 8\)"),
])
def test_bad_constructor_arguments_are_clear_errors(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_fit_compile_and_recipes_check_their_arguments_first():
    source, labels, target = small_data()
    adapter = da.DomainAdapter(dense_backbone(), num_classes=2, strategies=[da.MMD()])
    with pytest.raises(TypeError, match="Argument `metrics`"):  # a raw "'NoneType' object is not callable" in the step
        adapter.compile(optimizer="adam", metrics=[None])
    adapter.compile(optimizer="adam")
    with pytest.raises(ValueError, match="`target_labeled_weight` must be a non-negative number"):
        adapter.fit(source=(source, labels), target=target, target_labeled=(target[:4], labels[:4]),
                    target_labeled_weight=math.nan, epochs=1, verbose=0)
    recipe = sum([da.DANN(), da.MMD()])  # "item 0 is 0 of type int" before
    assert isinstance(recipe, da.Recipe) and [type(s) for s in recipe.strategies] == [da.DANN, da.MMD]


def test_select_copies_callable_arguments_and_checks_validators_before_training():
    source, labels, target = small_data()

    def build_adapter(strategies):
        adapter = da.DomainAdapter(dense_backbone(), num_classes=2, strategies=strategies)
        adapter.compile(optimizer="adam")
        return adapter

    def never(strategies):
        raise AssertionError("a candidate was built before the validators were checked")

    with pytest.raises(ValueError, match="bogus"):
        da.select({"mmd": [da.MMD()]}, (source, labels), target, build_adapter=never, validators=["bogus"])
    ramp = lambda progress: keras.ops.minimum(1.0, 2 * progress)  # noqa: E731 (an unregistered function)
    result = da.select({"mmd": [da.MMD(schedule=ramp)]}, (source, labels), target, build_adapter=build_adapter,
                       epochs=1, seed=0, verbose=0, validators=["source_accuracy", "entropy"])
    assert result.adapters["mmd"].strategies[0].schedule is ramp  # a copy, with the function itself


def test_compare_checks_its_options_before_scoring():
    source, labels, target = small_data()
    model = da.DomainAdapter(dense_backbone(), num_classes=2).classifier
    for options, pattern in (({"collapse_samples": 0}, "`collapse_samples` must be a positive integer"),
                             ({"collapse_threshold": "x"}, "`collapse_threshold` must be a number"),
                             ({"target_labels": labels[:5]}, r"expected one label per target image \(48\); received 5")):
        with pytest.raises(ValueError, match=pattern):
            da.compare({"a": model}, source=(source, labels), target=target, **options)
