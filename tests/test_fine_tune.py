"""Target fine-tuning: freezing, gradual unfreezing, learning-rate multipliers, AdaBN."""

import keras
import numpy as np
import pytest

import domadapt as da
from domadapt.strategies.fine_tune import auto_choice, find_blocks


def three_conv_backbone(batchnorm=False):
    layers = [keras.Input((8, 8, 1))]
    for index in range(3):
        layers.append(keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"conv_{index}"))
        if batchnorm:
            layers.append(keras.layers.BatchNormalization(name=f"bn_{index}"))
    return keras.Sequential(layers, name="backbone")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1)).astype("float32")
    labels = (images[:, :4].mean(axis=(1, 2, 3)) > images[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return images, labels


def snapshot(model):
    return {w.path: w.numpy().copy() for w in model.weights}


def test_frozen_layers_are_bit_identical_after_training(data):
    images, labels = data
    keras.utils.set_random_seed(0)
    backbone = three_conv_backbone()
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.FineTune(trainable="last:1", verbose=False)])
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = snapshot(adapter)
    adapter.fit(source=(images, labels), epochs=2, batch_size=16, verbose=0)
    after = snapshot(adapter)
    for path in before:
        if "conv_0" in path or "conv_1" in path:
            np.testing.assert_array_equal(before[path], after[path])
    assert not np.array_equal(before["backbone/conv_2/kernel"], after["backbone/conv_2/kernel"])
    assert not np.array_equal(before["classifier_head/kernel"], after["classifier_head/kernel"])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("head", []),
        ("all", ["conv_0", "conv_1", "conv_2"]),
        ("last:2", ["conv_1", "conv_2"]),
        ("last:0.34", ["conv_1", "conv_2"]),
        ("conv_[02]", ["conv_0", "conv_2"]),
        (lambda layer: layer.name == "conv_1", ["conv_1"]),
    ],
)
def test_trainable_specifications_choose_the_documented_layers(spec, expected, data):
    images, labels = data
    backbone = three_conv_backbone()
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.FineTune(trainable=spec, verbose=False)])
    adapter.compile(optimizer="adam")
    adapter.fit(source=(images, labels), epochs=1, batch_size=32, verbose=0)
    assert sorted(layer.name for layer in backbone.layers if layer.trainable) == expected


def test_auto_follows_the_table_of_labeled_images_per_class(data, capsys):
    assert auto_choice(5) == "head" and auto_choice(50) == 0.25 and auto_choice(500) == 0.5 and auto_choice(5000) == 1.0
    images, labels = data
    backbone = three_conv_backbone()
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.FineTune()])
    adapter.compile(optimizer="adam")
    # 4 labeled target images per class: feature extraction only.
    adapter.fit(source=(images, labels), target_labeled=(images[:8], np.array([0, 1] * 4)), epochs=1, verbose=0)
    assert not any(layer.trainable for layer in backbone.layers)
    assert "backbone has 3 blocks" in capsys.readouterr().out  # the split is printed once


def test_gradual_unfreezing_follows_the_documented_schedule(data):
    images, labels = data
    keras.utils.set_random_seed(0)
    backbone = three_conv_backbone()
    strategy = da.FineTune(trainable="all", unfreeze="gradual", every=2, verbose=False)
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[strategy])
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            # Runs after FineTune's own callback (user callbacks come first in fit, so record at batch 0).
            pass

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen[len(seen)] = (sorted(l.name for l in backbone.layers if l.trainable), snapshot(backbone))

    adapter.fit(source=(images, labels), epochs=7, batch_size=32, verbose=0, callbacks=[Record()])
    assert strategy.schedule == [(2, ["conv_2"]), (4, ["conv_1"]), (6, ["conv_0"])]
    expected = [[], [], ["conv_2"], ["conv_2"], ["conv_1", "conv_2"], ["conv_1", "conv_2"], ["conv_0", "conv_1", "conv_2"]]
    assert [seen[epoch][0] for epoch in range(7)] == expected
    # conv_1 did not move before it was unfrozen at epoch 4, and moved after.
    np.testing.assert_array_equal(seen[0][1]["backbone/conv_1/kernel"], seen[4][1]["backbone/conv_1/kernel"])
    assert not np.array_equal(seen[4][1]["backbone/conv_1/kernel"], seen[6][1]["backbone/conv_1/kernel"])


def test_a_multiplier_of_a_tenth_moves_a_layer_a_tenth_as_far(data):
    images, labels = data

    def movement(backbone_lr):
        keras.utils.set_random_seed(0)
        backbone = three_conv_backbone()
        adapter = da.DomainAdapter(backbone, num_classes=2,
                                   strategies=[da.FineTune(trainable="all", backbone_lr=backbone_lr, verbose=False)])
        adapter.compile(optimizer=keras.optimizers.SGD(0.1))
        before = snapshot(adapter)
        adapter.fit(source=(images, labels), epochs=1, batch_size=64, verbose=0, shuffle=False)  # one step
        after = snapshot(adapter)
        return {path: after[path] - before[path] for path in before}

    full, tenth = movement(1.0), movement(0.1)
    largest = np.abs(full["backbone/conv_2/kernel"]).max()
    assert largest > 0
    # Equal up to float32 rounding of weight differences.
    np.testing.assert_allclose(tenth["backbone/conv_2/kernel"], 0.1 * full["backbone/conv_2/kernel"], atol=1e-3 * largest)
    ratio = np.linalg.norm(tenth["backbone/conv_0/kernel"]) / np.linalg.norm(full["backbone/conv_0/kernel"])
    assert ratio == pytest.approx(0.1, rel=1e-3)
    np.testing.assert_allclose(tenth["classifier_head/kernel"], full["classifier_head/kernel"], rtol=1e-5, atol=1e-9)


def test_layerwise_decay_gives_each_earlier_block_another_factor(data):
    images, labels = data
    backbone = three_conv_backbone()
    adapter = da.DomainAdapter(backbone, num_classes=2,
                               strategies=[da.FineTune(trainable="all", backbone_lr=0.5, decay=0.5, verbose=False)])
    adapter.compile(optimizer="sgd")
    adapter.fit(source=(images, labels), epochs=1, batch_size=64, verbose=0)
    groups = adapter.strategies[0].parameter_groups
    factor = {layer.name: groups.multiplier(layer.kernel) for layer in backbone.layers}
    assert factor == {"conv_2": 0.5, "conv_1": 0.25, "conv_0": 0.125}
    assert groups.multiplier(adapter.head.kernel) == 1.0


def test_parameter_groups_reject_bad_groups_and_only_strategies_install_them():
    kernel = keras.Variable([1.0])
    with pytest.raises(ValueError, match="multiplier of item 0 must be a positive number"):
        da.parameter_groups.ParameterGroups([([kernel], 0.0)])
    with pytest.raises(ValueError, match="appears in two groups"):
        da.parameter_groups.ParameterGroups([([kernel], 0.5), ([kernel], 0.2)])
    groups = da.parameter_groups.ParameterGroups([([kernel], 0.5)])
    assert groups.multiplier(kernel) == 0.5 and groups.multiplier(keras.Variable([2.0])) == 1.0

    class Sloppy(da.Strategy):
        uses_target = False

        def on_fit_start(self, context):
            context.adapter.set_parameter_groups({id(kernel): 0.5})  # the 0.1 dict of multipliers

    adapter = da.DomainAdapter(three_conv_backbone(), num_classes=2, strategies=[Sloppy()])
    adapter.compile(optimizer="sgd")
    assert not hasattr(adapter, "learning_rate_multipliers")  # no adapter state for learning rates
    with pytest.raises(TypeError, match="must be a da.parameter_groups.ParameterGroups"):
        adapter.fit(source=(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1])), epochs=1, verbose=0)


def test_batchnorm_frozen_keeps_statistics_and_train_updates_them(data):
    images, labels = data
    for mode, should_change in (("frozen", False), ("train", True)):
        backbone = three_conv_backbone(batchnorm=True)
        adapter = da.DomainAdapter(backbone, num_classes=2,
                                   strategies=[da.FineTune(trainable="all", batchnorm=mode, verbose=False)])
        adapter.compile(optimizer="adam")
        before = backbone.get_layer("bn_1").moving_mean.numpy().copy()
        adapter.fit(source=(images, labels), epochs=1, batch_size=32, verbose=0)
        changed = not np.array_equal(before, backbone.get_layer("bn_1").moving_mean.numpy())
        assert changed == should_change, mode


def test_batchnorm_adapt_without_target_fails_before_the_first_step(data):
    images, labels = data
    backbone = three_conv_backbone(batchnorm=True)
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.FineTune(batchnorm="adapt", verbose=False)])
    adapter.compile(optimizer="adam")
    before = snapshot(adapter)
    with pytest.raises(ValueError, match=r"`target` is required: strategies \['FineTune'\] need unlabeled target"):
        adapter.fit(source=(images, labels), epochs=5, batch_size=16, verbose=0)
    assert int(adapter.optimizer.iterations.numpy()) == 0  # not one step ran
    after = snapshot(adapter)
    assert all(np.array_equal(before[path], after[path]) for path in before)


@pytest.mark.parametrize("bn_mode", ["domain", "joint"])
def test_batchnorm_adapt_reestimates_statistics_on_the_target_at_the_end(data, bn_mode):
    # "domain": the adapter's own end-of-fit re-estimation does it (FineTune skips its pass);
    # "joint": only FineTune's AdaBN callback does it.
    images, labels = data
    backbone = three_conv_backbone(batchnorm=True)
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.FineTune("all", batchnorm="adapt", verbose=False)],
                               bn_mode=bn_mode)
    adapter.compile(optimizer="adam")
    target = images * 3.0 + 2.0
    trained_with = backbone.get_layer("bn_0").moving_mean.numpy().copy()
    adapter.fit(source=(images, labels), target=target, epochs=1, batch_size=16, verbose=0)
    inputs = keras.Model(backbone.inputs, backbone.get_layer("conv_0").output).predict(target, verbose=0)
    np.testing.assert_allclose(backbone.get_layer("bn_0").moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-3,
                               atol=1e-3)
    if bn_mode != "domain":
        return
    # The frozen layer's source statistics stay those it trained with.
    source_bn = next(layer for layer in da.batchnorm.batchnorm_layers(adapter.source_classifier) if layer.name == "bn_0")
    np.testing.assert_array_equal(source_bn.moving_mean.numpy(), trained_with)


def test_adapt_batchnorm_changes_moving_statistics_and_nothing_else():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5, name="dense"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(2, activation="softmax", name="out"),
    ])
    rng = np.random.default_rng(0)
    target = (rng.normal(size=(200, 6)) * 3 + 2).astype("float32")
    before = snapshot(model)
    da.adapt_batchnorm(model, target, batch_size=50)
    after = snapshot(model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert {path.split("/", 1)[1] for path in changed} == {"bn/moving_mean", "bn/moving_variance"}
    inputs = keras.Model(model.inputs, model.get_layer("dense").output).predict(target, verbose=0)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-4, atol=1e-4)
    order = np.random.default_rng(0).permutation(200)  # arrays are read in this seeded order (see reestimate)
    batch_variances = np.mean([inputs[np.sort(order[i:i + 50])].var(axis=0) for i in range(0, 200, 50)], axis=0)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), batch_variances, rtol=1e-3)
    assert model.get_layer("bn").momentum == 0.99  # restored


def test_adapt_batchnorm_recovers_accuracy_under_a_feature_shift():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    source = rng.normal(size=(600, 4)).astype("float32")
    source_labels = (source[:, 0] + source[:, 1] > 0).astype("int64")
    target = (rng.normal(size=(600, 4)) * 1.0).astype("float32")
    target_labels = (target[:, 0] + target[:, 1] > 0).astype("int64")
    target = target * 4.0 + 3.0  # the target sensor has another gain and offset
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(source, source_labels, epochs=10, verbose=0)
    change = da.adapt_batchnorm(model, target, labels=target_labels)
    assert change > 0.2


def test_find_blocks_uses_keras_applications_stage_names():
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    names = [name for name, _ in find_blocks(backbone)]
    assert "expanded_conv" in names and "expanded_conv_10" in names
    assert len(names) < 0.5 * len([l for l in backbone.layers if l.weights])  # stages group several layers


def test_bad_fine_tune_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="'last:N' takes a count"):
        da.FineTune(trainable="last:abc")
    with pytest.raises(ValueError, match="`batchnorm` must be one of"):
        da.FineTune(batchnorm="sometimes")
    with pytest.raises(ValueError, match="`unfreeze`"):
        da.FineTune(unfreeze="linear")
    with pytest.raises(ValueError, match="`backbone_lr`"):
        da.FineTune(backbone_lr=0)
    with pytest.raises(ValueError, match="no BatchNormalization"):
        da.adapt_batchnorm(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), np.zeros((4, 2)))
