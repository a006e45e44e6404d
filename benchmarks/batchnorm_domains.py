"""Batch-normalised backbone: exported target accuracy with bn_mode="joint" (the default before
issue #25) against bn_mode="domain" (per-domain statistics, the target's exported), and what a
further re-estimation of the statistics on the unlabeled target would still add.

    .venv/bin/python benchmarks/batchnorm_domains.py            # 2 shifts x 3 methods x 2 modes x 3 seeds
    .venv/bin/python benchmarks/batchnorm_domains.py --seeds 0 --shifts fog
    .venv/bin/python benchmarks/batchnorm_domains.py --backbone mobilenetv3small --methods source_only dann mmd cdan entropy
    .venv/bin/python benchmarks/batchnorm_domains.py --bn-modes domain_affine --methods source_only dann mmd

``--backbone mobilenetv3small``: keras.applications' MobileNetV3Small (``weights=None``:
nothing can be downloaded here; BN nested inside the application model) on the images
resized to 32 px, its minimum input. Rows merge into the JSON by (backbone, shift, method,
mode, seed), so partial reruns keep the rest.

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
from shifts import (  # noqa: E402
    RESULTS_DIR, SHIFTS, Sizes, batchnorm_cnn, configure_determinism, kept_rows, load_shift, machine_description,
)

SIZES = Sizes(source_train=1500, target_train=1500, target_test=1000, source_test=500)
METHODS = ("source_only", "oracle", "dann", "mmd", "cdan", "entropy", "bnm")
BACKBONES = ("batchnorm_cnn", "mobilenetv3small")
BN_MODES = ("joint", "domain", "domain_affine")
DEFAULT_BN_MODES = ("joint", "domain")


def make_backbone(name, input_shape):
    import keras

    if name == "batchnorm_cnn":
        return batchnorm_cnn(input_shape), keras.layers.Rescaling(1 / 255)
    backbone = keras.applications.MobileNetV3Small(input_shape=input_shape, include_top=False, weights=None,
                                                   include_preprocessing=False, pooling="avg")
    return backbone, keras.layers.Rescaling(1 / 127.5, offset=-1)  # MobileNetV3's [-1, 1] input range


def resized(data, side):
    import tensorflow as tf

    return {key: (tf.cast(tf.image.resize(value, (side, side)), "uint8").numpy() if key.endswith("_x") else value)
            for key, value in data.items()}


def run_one(data, method, bn_mode, seed, epochs, batch_size, backbone_name="batchnorm_cnn"):
    import keras

    import domadapt as da

    keras.utils.set_random_seed(seed)
    strategies = {"source_only": [], "oracle": [], "dann": [da.DANN()], "mmd": [da.MMD()], "cdan": [da.CDAN()],
                  "entropy": [da.EntropyMinimization()], "bnm": [da.BNM()]}[method]
    backbone, preprocess = make_backbone(backbone_name, data["source_x"].shape[1:])
    adapter = da.DomainAdapter(backbone, num_classes=10, strategies=strategies, preprocess=preprocess, bn_mode=bn_mode)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3))
    started = time.perf_counter()
    if method == "oracle":  # trained on the labeled target training split: the ceiling of the gap-closed column
        history = adapter.fit(source=(data["target_x"], data["target_y"]), epochs=epochs, batch_size=batch_size, seed=seed,
                    verbose=0)
    else:
        history = adapter.fit(source=(data["source_x"], data["source_y"]), target=data["target_x"], epochs=epochs,
                    batch_size=batch_size, seed=seed, verbose=0)
    seconds = time.perf_counter() - started

    def accuracy(model, images, labels):
        return float(np.mean(model.predict(images, batch_size=512, verbose=0).argmax(axis=1) == labels))

    exported = accuracy(adapter.classifier, data["target_test_x"], data["target_test_y"])
    source = accuracy(adapter.source_classifier, data["source_test_x"], data["source_test_y"])
    da.reestimate_batchnorm_statistics(adapter.classifier, data["target_x"])  # the adapter is not used after this
    reestimated = accuracy(adapter.classifier, data["target_test_x"], data["target_test_y"])
    return {"backbone": backbone_name, "method": method, "bn_mode": bn_mode, "seed": seed, "target_accuracy": exported,
            "target_accuracy_reestimated": reestimated, "source_accuracy": source, "train_seconds": round(seconds, 1),
            # The collapse guard's adaptation scale after each epoch (1.0 throughout: it never backed off).
            "adaptation_scale": [float(v) for v in history.history.get("adaptation_scale", [])]}


def render(rows, machine, epochs):
    lines = ["# Batch-norm statistics per domain (issue #25)", "",
             f"Machine: {machine}. {SIZES.source_train} source / {SIZES.target_train} unlabeled target training "
             f"images, {SIZES.target_test} held-out target test images; {epochs} epochs, Adam 1e-3, every strategy "
             "with its defaults at the time of its row (DANN and CDAN weight 0.1, EntropyMinimization with its "
             "diversity term). Mean ± std (population) over seeds. Backbones: `batchnorm_cnn` (the shifts suite's "
             "CNN with BatchNormalization) and `mobilenetv3small` (keras.applications, weights=None, 32 px). "
             "`oracle`: the same model trained on the labeled target training split (its row shows it under each "
             "mode). `(n=1)`: the old default measured on seed 0 only (MobileNetV3Small, five shifts: time). "
             "Gap closed = (domain exported − source-only domain exported) / (oracle domain − source-only "
             "domain exported), on the means. `domain_affine`: per-domain statistics and per-domain scale/shift "
             "(DSBN), where measured. The collapse guard (on by default) judges `domain` models on a probe of "
             "the target predicted with batch-norm statistics re-estimated on it (since b9e0f30, 2026-12-01; "
             "before, on the training steps' predictions): the strategies' `domain` rows of `batchnorm_cnn` and "
             "the fog rows of `mobilenetv3small` (and its rain rows of seed 0) were rerun with it; other rows are older (their runs had no back-off, and reruns of them gave the same accuracy to within 0.2 points).", ""]

    def mean_std(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "—"

    def exported(cell):
        return float(np.mean([r["target_accuracy"] for r in cell])) if cell else None

    for backbone in BACKBONES:
        backbone_rows = [r for r in rows if r.get("backbone", "batchnorm_cnn") == backbone]
        if not backbone_rows:
            continue
        lines += [f"## `{backbone}`", "",
                  "| shift | method | seeds | joint (old default): exported | joint: re-estimated | domain (new default): "
                  "exported | gap closed | domain: gain of a further re-estimation | domain: source accuracy | "
                  "domain_affine: exported |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for shift in dict.fromkeys(r["shift"] for r in backbone_rows):
            cells = {(method, mode): [r for r in backbone_rows if r["shift"] == shift and r["method"] == method
                                      and r["bn_mode"] == mode] for method in METHODS for mode in BN_MODES}
            baseline, ceiling = exported(cells["source_only", "domain"]), exported(cells["oracle", "domain"])
            for method in METHODS:
                joint, domain, affine = (cells[method, mode] for mode in BN_MODES)
                if not domain or (not joint and method != "oracle"):  # the oracle needs no old-default row
                    continue
                gain = [r["target_accuracy_reestimated"] - r["target_accuracy"] for r in domain]
                closed = "—"
                if method not in ("source_only", "oracle") and baseline is not None and ceiling is not None:
                    closed = f"{100 * (exported(domain) - baseline) / (ceiling - baseline):+.0f}%"
                fewer = f" (n={len(joint)})" if joint and len(joint) != len(domain) else ""  # seeds of the old default
                lines.append(f"| {shift} | {method} | {len(domain)} | {mean_std([r['target_accuracy'] for r in joint])}"
                             f"{fewer} | {mean_std([r['target_accuracy_reestimated'] for r in joint])}{fewer} | "
                             f"{mean_std([r['target_accuracy'] for r in domain])} | {closed} | {100 * np.mean(gain):+.1f} "
                             f"(max {100 * np.max(np.abs(gain)):.1f}) | {mean_std([r['source_accuracy'] for r in domain])} | "
                             f"{mean_std([r['target_accuracy'] for r in affine])} |")
        backed_off = [f"{r['shift']}/{r['method']}/{r['bn_mode']}/seed {r['seed']}" for r in backbone_rows
                      if min(r.get("adaptation_scale") or [1.0]) < 1]
        lines += ["", "Collapse-guard back-offs (rows that record the guard's scale): "
                  + (", ".join(backed_off) or "none") + "."]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", nargs="+", default=["fog", "fonts_to_handwritten"], choices=sorted(SHIFTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbone", default="batchnorm_cnn", choices=BACKBONES)
    parser.add_argument("--bn-modes", nargs="+", default=list(DEFAULT_BN_MODES), choices=BN_MODES)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    configure_determinism()
    machine = machine_description()
    out = Path(args.out)
    key = lambda row: (row.get("backbone", "batchnorm_cnn"), row["shift"], row["method"], row["bn_mode"], row["seed"])  # noqa: E731
    json_path, kept = kept_rows(out, "batchnorm_domains.json", key)
    data = {name: load_shift(SHIFTS[name], SIZES) for name in args.shifts}
    if args.backbone == "mobilenetv3small":
        data = {name: resized(value, 32) for name, value in data.items()}
    # Seed-major, results written after every run: an interrupted run leaves whole seeds.
    for seed in args.seeds:
        for name in args.shifts:
            for method in args.methods:
                for bn_mode in args.bn_modes if method != "oracle" else ["domain"]:
                    row = {"shift": name, **run_one(data[name], method, bn_mode, seed, args.epochs, args.batch_size,
                                                    args.backbone)}
                    row["machine"] = machine
                    kept[key(row)] = row
                    print(json.dumps(row), flush=True)
                    rows = sorted(kept.values(), key=lambda r: (r.get("backbone", "batchnorm_cnn"), r["shift"],
                                                                METHODS.index(r["method"]), r["bn_mode"], r["seed"]))
                    json_path.write_text(json.dumps(
                        {"machine": machine, "epochs": args.epochs, "sizes": SIZES.__dict__, "rows": rows}, indent=1))
                    (out / "batchnorm_domains.md").write_text(render(rows, machine, args.epochs))


if __name__ == "__main__":
    main()
