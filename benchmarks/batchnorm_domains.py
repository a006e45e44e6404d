"""Batch-normalised backbone: exported target accuracy with bn_mode="joint" (the default before
issue #25) against bn_mode="domain" (per-domain statistics, the target's exported), and what a
further re-estimation of the statistics on the unlabeled target would still add.

    .venv/bin/python benchmarks/batchnorm_domains.py            # 2 shifts x 3 methods x 2 modes x 3 seeds
    .venv/bin/python benchmarks/batchnorm_domains.py --seeds 0 --shifts fog

Data and backbone come from the shifts suite (``benchmarks/shifts.py``: ``load_shift``,
``batchnorm_cnn``), at reduced sizes (a full run: ~40 min on 2 cores loaded by ~7 jobs).
"Re-estimated" is the exported classifier after ``da.reestimate_batchnorm_statistics`` on
all unlabeled target training images; accuracies are on the held-out target test split.
Results: ``benchmarks/results/batchnorm_domains.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shifts import RESULTS_DIR, SHIFTS, Sizes, batchnorm_cnn, configure_determinism, load_shift, machine_description  # noqa: E402

SIZES = Sizes(source_train=1500, target_train=1500, target_test=1000, source_test=500)
METHODS = ("source_only", "dann", "mmd")
BN_MODES = ("joint", "domain")


def run_one(data, method, bn_mode, seed, epochs, batch_size):
    import keras

    import domadapt as da

    keras.utils.set_random_seed(seed)
    strategies = {"source_only": [], "dann": [da.DANN()], "mmd": [da.MMD()]}[method]
    adapter = da.DomainAdapter(batchnorm_cnn(data["source_x"].shape[1:]), num_classes=10, strategies=strategies,
                               preprocess=keras.layers.Rescaling(1 / 255), bn_mode=bn_mode)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3))
    started = time.perf_counter()
    adapter.fit(source=(data["source_x"], data["source_y"]), target=data["target_x"], epochs=epochs,
                batch_size=batch_size, seed=seed, verbose=0)
    seconds = time.perf_counter() - started

    def accuracy(model, images, labels):
        return float(np.mean(model.predict(images, batch_size=512, verbose=0).argmax(axis=1) == labels))

    exported = accuracy(adapter.classifier, data["target_test_x"], data["target_test_y"])
    source = accuracy(adapter.source_classifier, data["source_test_x"], data["source_test_y"])
    da.reestimate_batchnorm_statistics(adapter.classifier, data["target_x"])  # the adapter is not used after this
    reestimated = accuracy(adapter.classifier, data["target_test_x"], data["target_test_y"])
    return {"method": method, "bn_mode": bn_mode, "seed": seed, "target_accuracy": exported,
            "target_accuracy_reestimated": reestimated, "source_accuracy": source, "train_seconds": round(seconds, 1)}


def render(rows, machine, epochs):
    lines = ["# Batch-norm statistics per domain (issue #25)", "",
             f"Machine: {machine}. Backbone: the shifts suite's `batchnorm_cnn`; {SIZES.source_train} source / "
             f"{SIZES.target_train} unlabeled target training images, {SIZES.target_test} held-out target test "
             f"images; {epochs} epochs, Adam 1e-3, every strategy with its defaults. Mean ± std over seeds.", "",
             "| shift | method | seeds | joint (old default): exported | joint: re-estimated | domain (new default): "
             "exported | domain: gain of a further re-estimation | domain: source accuracy |",
             "|---|---|---|---|---|---|---|---|"]

    def mean_std(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"

    for shift in dict.fromkeys(r["shift"] for r in rows):
        for method in METHODS:
            cell = {mode: [r for r in rows if r["shift"] == shift and r["method"] == method and r["bn_mode"] == mode]
                    for mode in BN_MODES}
            if not cell["joint"] or not cell["domain"]:
                continue
            joint, domain = cell["joint"], cell["domain"]
            gain = [r["target_accuracy_reestimated"] - r["target_accuracy"] for r in domain]
            lines.append(f"| {shift} | {method} | {len(domain)} | {mean_std([r['target_accuracy'] for r in joint])} | "
                         f"{mean_std([r['target_accuracy_reestimated'] for r in joint])} | "
                         f"{mean_std([r['target_accuracy'] for r in domain])} | {100 * np.mean(gain):+.1f} "
                         f"(max {100 * np.max(np.abs(gain)):.1f}) | {mean_std([r['source_accuracy'] for r in domain])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", nargs="+", default=["fog", "fonts_to_handwritten"], choices=sorted(SHIFTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    configure_determinism()
    machine = machine_description()
    rows, out = [], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {name: load_shift(SHIFTS[name], SIZES) for name in args.shifts}
    # Seed-major, results written after every run: an interrupted run leaves whole seeds.
    for seed in args.seeds:
        for name in args.shifts:
            for method in METHODS:
                for bn_mode in BN_MODES:
                    row = {"shift": name, **run_one(data[name], method, bn_mode, seed, args.epochs, args.batch_size)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    (out / "batchnorm_domains.json").write_text(json.dumps(
                        {"machine": machine, "epochs": args.epochs, "sizes": SIZES.__dict__, "rows": rows}, indent=1))
                    (out / "batchnorm_domains.md").write_text(render(rows, machine, args.epochs))
    print(render(rows, machine, args.epochs))


if __name__ == "__main__":
    main()
