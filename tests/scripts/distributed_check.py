"""Train each strategy on one device and under MirroredStrategy on two logical CPUs; print weight gaps.

Run by tests/test_reliability.py in a subprocess: logical devices must be set
before TensorFlow starts, which a pytest process has long done.
Prints one JSON line: {strategy name: max relative weight difference}, then one line on
bn_mode="domain_affine" (refused on several devices).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import domadapt as da  # noqa: E402


def candidates():
    return {
        "source-only": lambda: [],
        "gradient_reversal": lambda: [da.GradientReversal(hidden_units=(16,), dropout=0.0, schedule="ganin")],
        "conditional_adversarial": lambda: [da.ConditionalAdversarial(hidden_units=(16,), dropout=0.0)],
        "entropy": lambda: [da.EntropyMinimization(0.3)],
        "mmd": lambda: [da.MMD()],
        "coral": lambda: [da.CORAL(weight=3.0)],
        "fine_tune_lr_multipliers": lambda: [da.FineTune("all", backbone_lr=0.3, decay=0.5, verbose=False)],
        "combined": lambda: [da.GradientReversal(hidden_units=(16,), dropout=0.0), da.MMD(), da.EntropyMinimization(0.1)],
        # bn_mode="domain" with synchronized BatchNormalization: per-domain batch statistics
        # are all-reduced across replicas, and the end-of-fit re-estimation runs on the
        # final weights, so the moving statistics of both domains match one device too.
        "batchnorm_domain": lambda: [da.DANN(weight=1.0, hidden_units=(16,), dropout=0.0), da.MMD()],
    }


BATCHNORM = {"batchnorm_domain"}


def build(strategies, weights=None, batchnorm=False):
    keras.utils.set_random_seed(0)
    normalisation = [keras.layers.BatchNormalization(synchronized=True, name="bn")] if batchnorm else []
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, name="block1"), *normalisation,
                                 keras.layers.Activation("tanh"),
                                 keras.layers.Dense(16, activation="tanh", name="block2")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    if weights is not None:
        adapter.set_weights(weights)
    return adapter


def main():
    rng = np.random.default_rng(0)
    source_x = rng.normal(size=(256, 2)).astype("float32")
    source_y = (source_x[:, 0] + 0.3 * source_x[:, 1] > 0).astype("int64")
    target_x = (source_x @ np.array([[0.8, 0.6], [-0.6, 0.8]]) + 0.5).astype("float32")
    names = sys.argv[1:] or list(candidates())
    gaps = {}
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name in names:
        make = candidates()[name]
        batchnorm = name in BATCHNORM
        single = build(make(), batchnorm=batchnorm)
        initial = single.get_weights()
        with mirrored_strategy.scope():
            mirrored = build(make(), weights=initial, batchnorm=batchnorm)
        fit = dict(source=(source_x, source_y), target=target_x, epochs=2, batch_size=32, seed=0, verbose=0)
        single_history = single.fit(**fit).history
        mirrored_history = mirrored.fit(**fit).history
        trained = [np.asarray(v) for v in single.trainable_variables]
        start = [np.asarray(v) for v in build(make(), batchnorm=batchnorm).trainable_variables]
        differences = [np.max(np.abs(a - np.asarray(b))) for a, b in zip(trained, mirrored.trainable_variables)]
        if batchnorm:
            # Weights are compared through the outputs: a bias right before a BN layer gets a zero
            # gradient that Adam turns into rounding-noise steps, cancelled by the BN mean.
            # The exported classifier (target statistics) and source_classifier must agree.
            outputs = lambda adapter: np.concatenate([  # noqa: E731
                np.asarray(adapter.classifier(target_x, training=False)),
                np.asarray(adapter.source_classifier(source_x, training=False))])
            single_outputs, mirrored_outputs = outputs(single), outputs(mirrored)
            statistic_gap = float(np.max(np.abs(single_outputs - mirrored_outputs)) / np.max(np.abs(single_outputs)))
            differences = [d for d, v in zip(differences, single.trainable_variables) if "block1/bias" not in v.path]
        else:
            statistic_gap = None
        moved = [np.max(np.abs(a - b)) for a, b in zip(trained, start)]
        # How far the two runs ended apart, relative to how far training moved the weights.
        gaps[name] = {"relative_gap": float(max(differences) / max(moved)), "moved": float(max(moved)),
                      "loss": [single_history["loss"][-1], mirrored_history["loss"][-1]],
                      "replicas": mirrored_strategy.num_replicas_in_sync, "statistics_gap": statistic_gap,
                      # The collapse guard's in-graph statistics add over replicas (not per replica).
                      "health": [single.health.read()["num_source"], mirrored.health.read()["num_source"]]}
    print("RESULT " + json.dumps(gaps))
    with mirrored_strategy.scope():  # per-domain scale/shift is refused before any graph is traced
        backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
        adapter = da.DomainAdapter(backbone, num_classes=2, bn_mode="domain_affine")
        adapter.compile(optimizer="adam")
    try:
        adapter.fit(source=(source_x, source_y), target=target_x, epochs=1, batch_size=32, verbose=0)
        print("AFFINE trained")
    except ValueError as error:
        print("AFFINE " + str(error))


if __name__ == "__main__":
    main()
