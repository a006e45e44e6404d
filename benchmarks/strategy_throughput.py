"""Throughput of each strategy against a plain Keras fit, and target accuracy on the demo's shift.

    python benchmarks/strategy_throughput.py [--steps 60] [--batch 128] [--repeats 5] [--skip-accuracy]

Throughput is images through the backbone per second. The plain fit sees `batch`
source images per step; an adapter sees `batch / 2` source + `batch / 2` target
images, so both process the same number of images per step and the ratio shows
the cost of the adaptation machinery itself. Every run is in this process,
after a warm-up epoch (tracing/compilation excluded), repeated round-robin. Writes
benchmarks/results/strategy_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import domadapt as da  # noqa: E402
from domadapt.datasets import load_sunny_rainy, small_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine():
    gpus = tf.config.list_physical_devices("GPU")
    gpu_names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


class _Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def candidates():
    """The methods measured (the demo's list at the time of writing, kept here so that
    editing the demo cannot change this benchmark)."""
    rain = lambda: da.MimicAugment("rain", severity=0.6, p=0.7, seed=0)  # noqa: E731
    return {
        "source-only": [],
        "MimicAugment rain": [rain()],
        "MimicAugment histogram": [da.MimicAugment.from_target(method="histogram", p=0.7, seed=0)],
        "DANN": [da.DANN(hidden_units=(256, 256))],
        "MMD": [da.MMD()],
        "CORAL": [da.CORAL(weight=10.0)],
        "rain + DANN + MMD + entropy": (
            rain() + da.DANN(hidden_units=(256, 256)) + da.MMD() + da.EntropyMinimization(0.05)
        ),
    }


def train_one(strategies, data, epochs, seed=0):
    """Target and source test accuracy after ``epochs`` of training with ``strategies``."""
    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(small_cnn(data["source_x"].shape[1:]), num_classes=10, strategies=strategies,
                               preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    adapter.fit(source=(data["source_x"], data["source_y"]), target=data["target_x"], epochs=epochs, batch_size=64,
                seed=seed, verbose=0)
    return {
        "target_accuracy": float(adapter.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1]),
        "source_accuracy": float(adapter.evaluate(data["source_test_x"], data["source_test_y"], verbose=0)[1]),
    }


def plain_fit_runner(images, labels, batch, steps):
    """Return a function that runs one timed epoch of a plain Keras fit and returns images/s."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(images.shape[1:]), keras.layers.Rescaling(1 / 255), small_cnn(images.shape[1:]),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images)).repeat()
        .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    )
    timer = _Timer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)  # warm-up: tracing excluded

    def run():
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return steps * batch / timer.seconds

    return run


def adapter_runner(strategies, images, labels, batch, steps):
    """The same for a DomainAdapter; with a target stream, half of each batch is target images."""
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(
        small_cnn(images.shape[1:]), num_classes=10, strategies=strategies, preprocess=keras.layers.Rescaling(1 / 255)
    )
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3))
    uses_target = any(s.uses_target for s in adapter.strategies)
    half = len(images) // 2
    kwargs = dict(
        source=(images[:half], labels[:half]), target=images[half:], batch_size=batch // 2 if uses_target else batch,
        steps_per_epoch=steps, verbose=0,
    )
    timer = _Timer()
    adapter.fit(epochs=1, **kwargs)  # warm-up

    def run():
        adapter.fit(epochs=1, callbacks=[timer], **kwargs)
        return steps * batch / timer.seconds

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-epochs", type=int, default=6)
    args = parser.parse_args(argv)

    name, data = load_sunny_rainy()
    images = np.concatenate([data["source_x"], data["target_x"]])
    labels = np.concatenate([data["source_y"], data["source_y"]])  # labels of target images are never read

    runners = {"plain keras fit": plain_fit_runner(images, labels, args.batch, args.steps)}
    for label, strategies_of in candidates().items():
        label = "source-only (adapter)" if label == "source-only" else label
        runners[label] = adapter_runner(strategies_of, images, labels, args.batch, args.steps)
    # Round-robin repeats, best of each: drift of a noisy machine hits every method alike.
    best = {label: 0.0 for label in runners}
    for _ in range(args.repeats):
        for label, run in runners.items():
            best[label] = max(best[label], run())
    plain = best.pop("plain keras fit")
    rows = []
    for label, throughput in best.items():
        rows.append({"method": label, "images_per_second": throughput, "ratio_to_plain_fit": throughput / plain})
        print(f"{label:<28} {throughput:9.0f} img/s  ratio {throughput / plain:.2f}", flush=True)

    accuracy = {}
    if not args.skip_accuracy:
        for method, strategies_of in candidates().items():
            result = train_one(strategies_of, data, args.accuracy_epochs)
            accuracy[method] = result
            print(f"{method:<28} target accuracy {result['target_accuracy']:.3f}", flush=True)

    report = {
        "machine": machine(),
        "data": name,
        "settings": vars(args),
        "plain_fit_images_per_second": plain,
        "throughput": rows,
        "accuracy_on_sunny_to_rainy": accuracy,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "strategy_throughput.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Strategy throughput vs a plain Keras fit",
        "",
        f"Machine: {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs, "
        f"GPUs: {report['machine']['gpus'] or 'none'}; TF {tf.__version__}, Keras {keras.__version__}. Data: {name}.",
        f"Batch {args.batch} images per step (adapters: half source, half target), {args.steps} steps, "
        f"best of {args.repeats} round-robin repeats.",
        "",
        f"Plain `keras.Model.fit`: {plain:.0f} images/s.",
        "",
        "| method | images/s | ratio to plain fit | target acc | source acc |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        key = "source-only" if row["method"].startswith("source-only") else row["method"]
        acc = accuracy.get(key, {})
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        lines.append(
            f"| {row['method']} | {row['images_per_second']:.0f} | {row['ratio_to_plain_fit']:.2f} | "
            f"{fmt(acc.get('target_accuracy'))} | {fmt(acc.get('source_accuracy'))} |"
        )
    (RESULTS / "strategy_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
