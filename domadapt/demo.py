"""Sunny-to-rainy domain adaptation, offline, in a few minutes on a CPU.

    python -m domadapt.demo [--epochs 6] [--out demo_output] [--fashion-mnist DIR]

Source domain: clean ("sunny") Fashion-MNIST images with labels. Target domain:
other Fashion-MNIST images rendered in rain by ``domadapt.shifts.rain_streaks``
(the project's own streak-and-veil model: no albumentations transform and no preset
of ``MimicAugment``, so the rain preset is not judged on its own rendering), labels
hidden from training. Every strategy runs with its defaults. One seed: the evidence
across shifts and seeds is ``benchmarks/results/shifts.md``.
Fashion-MNIST is read from its IDX files (Debian's ``dataset-fashion-mnist`` path, ``--fashion-mnist DIR`` or
``$DOMADAPT_FASHION_MNIST``); without them the demo falls back to scikit-learn's
8x8 digits, upscaled. Every number printed is measured in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from domadapt.datasets import load_sunny_rainy, small_cnn
from domadapt.shifts import rain_streaks


def candidates():
    import domadapt as da

    return {
        "source-only": [],
        "MimicAugment rain": [da.MimicAugment("rain", seed=0)],
        "MimicAugment histogram": [da.MimicAugment.from_target(method="histogram", seed=0)],
        "DANN": [da.DANN()],
        "MMD": [da.MMD()],
        "CORAL": [da.CORAL()],
        "AdaMatch": [da.SelfTraining(seed=0)],
        "rain + DANN + MMD + entropy": (
            da.MimicAugment("rain", seed=0) + da.DANN() + da.MMD() + da.EntropyMinimization()
        ),
    }


def train_one(strategies, data, epochs, seed=0):
    import keras

    import domadapt as da

    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(
        small_cnn(data["source_x"].shape[1:]), num_classes=10, strategies=strategies,
        preprocess=keras.layers.Rescaling(1 / 255),
    )
    adapter.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    started = time.perf_counter()
    history = adapter.fit(
        source=(data["source_x"], data["source_y"]), target=data["target_x"],
        epochs=epochs, batch_size=64, seed=seed, verbose=0,
    )
    seconds = time.perf_counter() - started
    target_accuracy = adapter.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1]
    source_accuracy = adapter.evaluate(data["source_test_x"], data["source_test_y"], verbose=0)[1]
    source_features, target_features = da.gap.features(
        adapter, data["source_test_x"][:500], data["target_test_x"][:500], verbose=0
    )
    return {
        "target_accuracy": float(target_accuracy),
        "source_accuracy": float(source_accuracy),
        "mmd": da.gap.mmd(source_features, target_features),
        "frechet": da.gap.frechet(source_features, target_features),
        "proxy_a_distance": da.gap.proxy_a_distance(source_features, target_features),
        "train_seconds": seconds,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }


def plot(results, data, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure = plt.figure(figsize=(13, 4.5), layout="constrained")
    examples, chart = figure.subfigures(1, 2, width_ratios=[1, 1.4])
    axes = examples.subplots(2, 4)
    for row, (key, label) in enumerate((("source_test_x", "sunny (source)"), ("target_test_x", "rainy (target)"))):
        for column in range(4):
            axes[row, column].imshow(data[key][column])
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[row, 0].set_ylabel(label)
    axis = chart.subplots()
    names = list(results)
    values = [results[n]["target_accuracy"] for n in names]
    bars = axis.barh(names, values, color=["grey"] + ["tab:blue"] * (len(names) - 1))
    axis.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=3)
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("accuracy on rainy target test images")
    axis.set_title("Sunny-to-rainy adaptation")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


DEMO_OUTPUTS = ("demo.json", "demo.md", "demo.png")
DEMO_MARKER = ".domadapt-demo"


def _earlier_demo(out):
    """A folder a demo of an earlier release wrote (before the marker): its demo.json has the demo's keys."""
    try:
        return set(json.loads((out / "demo.json").read_text())) == {"data", "epochs", "results"}
    except (OSError, ValueError, TypeError):
        return False


def format_table(results):
    baseline = results["source-only"]["target_accuracy"]
    header = (f"{'method':<30}{'target acc':>11}{'vs source-only':>16}{'source acc':>12}"
              f"{'MMD^2':>9}{'Frechet':>10}{'proxy-A':>9}{'train s':>9}")
    lines = [header, "-" * len(header)]
    for method, r in results.items():
        lines.append(
            f"{method:<30}{r['target_accuracy']:>11.1%}{r['target_accuracy'] - baseline:>+16.1%}"
            f"{r['source_accuracy']:>12.1%}{r['mmd']:>9.3f}{r['frechet']:>10.3g}{r['proxy_a_distance']:>9.2f}"
            f"{r['train_seconds']:>9.1f}"
        )
    return "\n".join(lines)


def machine_name():
    import os
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m domadapt.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per method (default 6)")
    parser.add_argument("--per-domain", type=int, default=4000, help="source and target training images (default 4000)")
    parser.add_argument("--fashion-mnist", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--out", default="demo_output", help="folder for demo.json and demo.png (default demo_output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace demo.json, demo.md and demo.png in --out even if the demo did not write them")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.per_domain < 100:
        parser.error("--epochs must be >= 1 and --per-domain >= 100")
    if args.fashion_mnist is not None and not Path(args.fashion_mnist).is_dir():
        parser.error(f"--fashion-mnist {args.fashion_mnist} is not a folder (it should hold the four IDX files)")
    out = Path(args.out)
    # Files an earlier demo run wrote (its marker is beside them) are ours to replace; others only with --overwrite.
    foreign = [name for name in DEMO_OUTPUTS
               if (out / name).exists() and not (out / DEMO_MARKER).exists() and not _earlier_demo(out)]
    if foreign and not args.overwrite:
        parser.error(f"{out} already holds {', '.join(foreign)}, not written by this demo; pass --overwrite to "
                     "replace them, or choose another --out")

    import tensorflow as tf

    # Published numbers someone can reproduce: with deterministic kernels (and the seeds of train_one)
    # a rerun on the same machine and library versions prints the same accuracies (train s aside).
    tf.config.experimental.enable_op_determinism()
    # One op at a time (each still uses every core): deterministic kernels are not enough when two alignment
    # terms run side by side. DANN + MMD gave 6 different weights in 6 processes after 16 steps (a tiny MLP),
    # and the combined recipe 57.5-58.1%; with one inter-op thread, the same weights every time.
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process (main() called from a notebook or script)
        warnings.warn("TensorFlow was initialised before the demo, so it cannot run one op at a time; its numbers "
                      "may differ from run to run in the last digits. Run `python -m domadapt.demo` in a fresh "
                      "process to reproduce the published ones.", RuntimeWarning, stacklevel=2)
    name, data = load_sunny_rainy(args.fashion_mnist, per_domain=args.per_domain, shift=rain_streaks)
    print(f"Data: {name}; {len(data['source_x'])} labeled sunny source images, "
          f"{len(data['target_x'])} unlabeled rainy target images, {len(data['target_test_x'])} rainy test images.")
    results = {}
    for method, strategies in candidates().items():
        print(f"  training {method} ...", flush=True)
        results[method] = train_one(strategies, data, args.epochs)

    table = format_table(results)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("Written by python -m domadapt.demo: it replaces demo.json, demo.md and demo.png "
                                   "here on its next run.\n")
    (out / "demo.json").write_text(json.dumps({"data": name, "epochs": args.epochs, "results": results}, indent=2))
    (out / "demo.md").write_text(
        f"# Demo: sunny-to-rainy adaptation\n\nMachine: {machine_name()}. Data: {name}; "
        f"{len(data['source_x'])} sunny source, {len(data['target_x'])} rainy target (unlabeled), "
        f"{len(data['target_test_x'])} rainy test images; {args.epochs} epochs per method. Gaps are measured on the "
        "trained model's pooled features of 500 source and 500 target test images (lower is closer).\n\n```\n"
        + table + "\n```\n"
    )
    picture = plot(results, data, out / "demo.png")
    print(f"\nWrote {out / 'demo.json'}, {out / 'demo.md'}" + (f" and {picture}" if picture else " (pip install matplotlib for demo.png)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
