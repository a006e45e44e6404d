"""Images per second of MimicAugment in a tf.data pipeline, beside the training step it must feed.

    python benchmarks/augment_throughput.py [--sizes 32 96 224] [--presets rain fog ...]

For each image size and preset, the augmentation runs as the adapter runs it
(batches of 32 through ``tf.data.Dataset.map`` with 1, 2 and all CPU workers).
Beside it: images per second of a training step (``DomainAdapter.fit``, source-only,
batch 32) of MobileNetV3Small at the same size on the same machine. If augmentation
is slower than the step, it would starve the accelerator. Writes
benchmarks/results/augment_throughput.{json,md} and preset_preview.png.
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
from domadapt.augment import PRESETS, TF_PRESETS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BATCH = 32


def scenes(count, size, seed=0):
    """Photo-like uint8 images: gradients, a few rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = np.empty((count, size, size, 3), np.float32)
    for image in images:
        image[:] = (0.6 * x[..., None] + 0.4 * y[..., None]) * rng.uniform(0.3, 1.0, 3)
        for _ in range(3):
            top, left = rng.integers(0, size // 2, 2)
            image[top : top + size // 4, left : left + size // 4] = rng.uniform(0, 1, 3)
    images += rng.normal(0, 0.02, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def augment_rate(strategy, images, workers):
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), "int32"))).batch(BATCH)
    dataset = dataset.map(strategy.transform_source, num_parallel_calls=workers).prefetch(2)
    for _ in dataset.take(1):  # warm-up: per-thread transforms are built here
        pass
    started = time.perf_counter()
    count = sum(int(batch[0].shape[0]) for batch in dataset)
    return count / (time.perf_counter() - started)


def training_runner(size, steps=8, strategies=()):
    """A compiled, warmed-up source-only fit; calling it returns images per second of ``steps`` steps."""
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(size, size, 3))
    adapter = da.DomainAdapter(backbone, num_classes=10, strategies=list(strategies))
    adapter.compile(optimizer="adam")
    images = scenes(BATCH * steps, size)
    labels = np.zeros(len(images), "int64")
    adapter.fit(source=(images, labels), epochs=1, batch_size=BATCH, steps_per_epoch=2, verbose=0)  # warm-up

    def run():
        started = time.perf_counter()
        adapter.fit(source=(images, labels), epochs=1, batch_size=BATCH, steps_per_epoch=steps, verbose=0)
        return steps * BATCH / (time.perf_counter() - started)

    return run


def training_rate(size, steps=8, strategies=()):
    return training_runner(size, steps, strategies)()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96, 224])
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS) + ["from_target:histogram", "from_target:fda"])
    parser.add_argument("--images", type=int, default=128, help="images per measurement")
    parser.add_argument("--tf-engine-only", action="store_true",
                        help="measure only engine='tf' and keep the albumentations rows of the last results")
    args = parser.parse_args(argv)
    all_workers = os.cpu_count() or 1
    worker_counts = sorted({1, 2, all_workers})

    rows = []
    training = {}
    if args.tf_engine_only:
        previous = json.loads((RESULTS / "augment_throughput.json").read_text())
        rows = previous["rows"]
        for row in rows:
            row["images_per_second"] = {int(w): r for w, r in row["images_per_second"].items()}
            row["ratio_to_training_step"] = {int(w): r for w, r in row["ratio_to_training_step"].items()}
        training = {int(size): rate for size, rate in previous["training_images_per_second"].items()}
    # engine="tf": the training step with the augmentation compiled into it, as a
    # ratio to the same step without it, measured back to back.
    tf_rows = []
    for size in args.sizes:
        runners = {"plain": training_runner(size, steps=12)}
        for preset in sorted(TF_PRESETS):
            runners[preset] = training_runner(size, steps=12, strategies=[da.MimicAugment(preset, seed=0, engine="tf")])
        # Round-robin repeats, best of each: drift of a noisy machine hits every variant alike.
        best = {name: 0.0 for name in runners}
        for _ in range(3):
            for name, run in runners.items():
                best[name] = max(best[name], run())
        for preset in sorted(TF_PRESETS):
            tf_rows.append({"size": size, "preset": preset, "training_images_per_second": best[preset],
                            "plain_training_images_per_second": best["plain"], "ratio": best[preset] / best["plain"]})
            print(f"{size}px engine='tf' {preset:<10} {best[preset]:7.0f} img/s vs {best['plain']:7.0f} "
                  f"({best[preset] / best['plain']:.2f})", flush=True)
    for size in [] if args.tf_engine_only else args.sizes:
        images = scenes(args.images, size)
        references = scenes(16, size, seed=1) // 2
        training[size] = training_rate(size)
        print(f"{size}px: MobileNetV3Small training step {training[size]:.0f} img/s", flush=True)
        for preset in args.presets:
            if preset.startswith("from_target:"):
                strategy = da.MimicAugment.from_target(references, method=preset.split(":")[1], seed=0)
            else:
                strategy = da.MimicAugment(preset, seed=0)
            rates = {workers: augment_rate(strategy, images, workers) for workers in worker_counts}
            rows.append({"size": size, "preset": preset, "images_per_second": rates,
                         "ratio_to_training_step": {w: r / training[size] for w, r in rates.items()}})
            print(f"  {preset:<22}" + "".join(f"{w} workers: {r:8.0f} img/s  " for w, r in rates.items()), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    da.augment.preview(scenes(6, 96, seed=3), sorted(PRESETS), path=RESULTS / "preset_preview.png", overwrite=True)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": all_workers, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}
    report = {"machine": machine, "batch": BATCH, "training_images_per_second": training, "rows": rows,
              "tf_engine_rows": tf_rows}
    (RESULTS / "augment_throughput.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# MimicAugment throughput vs the training step",
        "",
        f"Machine: {machine['processor']}, {all_workers} CPUs, GPUs: {machine['gpus'] or 'none'}. "
        f"Batches of {BATCH}; tf.data map workers as columns. Training step: MobileNetV3Small "
        "(weights=None), DomainAdapter source-only fit, same machine.",
        "",
        "| size | preset | " + " | ".join(f"img/s, {w} worker{'s' if w > 1 else ''}" for w in worker_counts)
        + " | training step img/s | best ratio to step |",
        "|---:|---|" + "---:|" * len(worker_counts) + "---:|---:|",
    ]
    for row in rows:
        rates = row["images_per_second"]
        lines.append(
            f"| {row['size']} | {row['preset']} | " + " | ".join(f"{rates[w]:.0f}" for w in worker_counts)
            + f" | {training[row['size']]:.0f} | {max(row['ratio_to_training_step'].values()):.1f} |"
        )
    lines += [
        "",
        "## engine=\"tf\": augmentation inside the compiled train step",
        "",
        "MobileNetV3Small training step with the preset compiled into it vs the same step without: best of 3 "
        "round-robin repeats of 12 steps (no tf.data workers involved). On a CPU the in-graph ops share the cores "
        "with the training step; on an accelerator they run beside it. Ratios above 1 are this machine's timing "
        "noise (about 20% between repeats).",
        "",
        "| size | preset | training img/s with augmentation | without | ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in tf_rows:
        lines.append(f"| {row['size']} | {row['preset']} | {row['training_images_per_second']:.0f} | "
                     f"{row['plain_training_images_per_second']:.0f} | {row['ratio']:.2f} |")
    lines += ["", "Preview of every preset (severity 0.5): `preset_preview.png`."]
    (RESULTS / "augment_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
