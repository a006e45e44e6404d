"""Targets whose class mix differs (issue #22): alignment unweighted vs class-weighted, and the estimate's error.

    .venv/bin/python benchmarks/label_shift.py                 # 2 shifts x 2 targets x 3 seeds (~25-40 min, 2 cores)
    .venv/bin/python benchmarks/label_shift.py --quick         # smoke test, writes to a temp dir
    .venv/bin/python benchmarks/label_shift.py --report-only   # regenerate label_shift.md from label_shift.json

Shifts: ``fonts_to_handwritten`` (two real image sources) and ``rain`` (Fashion-MNIST rendered by
``benchmarks/shift_renderers.py``), built by ``benchmarks/shifts.py`` with smaller sizes so the
run fits in about half an hour. For each, two label-shifted targets are cut from the target
splits (training and test alike; the source keeps all classes):

* ``partial``: classes 0-4 only (half the classes);
* ``long_tailed``: class k kept with share proportional to 10^(-k/9) (imbalance factor 10).

Methods: source-only (trained once per shift and seed: the target never enters its loss),
DANN, CDAN, MMD, CORAL with their defaults (unweighted) and with ``class_weights="auto"``
(PADA-style in-graph estimate), and DANN with the fixed ``importance_weights`` that
``da.gap.label_shift`` (BBSE) estimates from the source-only model (``dann_bbse``). The
estimate's error (total variation to the true target proportions, BBSE and EM, on the
unlabeled target training images and 1,000 held-out source images) is recorded for the
balanced, partial and long-tailed targets of each shift and seed (balanced: the false-alarm
side). Results are written after every run, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shifts as suite  # noqa: E402

SHIFT_NAMES = ("fonts_to_handwritten", "rain")
TARGETS = ("partial", "long_tailed")
SIZES = suite.Sizes(source_train=1500, target_train=1000, target_test=1000, source_test=1000)
QUICK_SIZES = suite.Sizes(source_train=256, target_train=256, target_test=256, source_test=256)
IMBALANCE = 10.0
METHODS = ("dann", "dann_auto", "dann_bbse", "cdan", "cdan_auto", "mmd", "mmd_auto", "coral", "coral_auto")


def target_proportions(kind, num_classes=suite.NUM_CLASSES):
    if kind == "balanced":
        shares = np.ones(num_classes)
    elif kind == "partial":
        shares = (np.arange(num_classes) < num_classes // 2).astype(float)
    else:
        shares = IMBALANCE ** (-np.arange(num_classes) / (num_classes - 1))
    return shares / shares.sum()


def cut(images, labels, kind, rng):
    """The subset of (images, labels) whose class mix is ``target_proportions(kind)`` (largest such subset)."""
    shares = target_proportions(kind)
    counts = np.bincount(labels, minlength=len(shares))
    present = shares > 0
    total = np.floor(np.min(counts[present] / shares[present]))
    keep = []
    for k, share in enumerate(shares):
        index = np.flatnonzero(labels == k)
        keep.append(rng.choice(index, int(round(total * share)), replace=False))
    keep = np.sort(np.concatenate(keep))
    return images[keep], labels[keep]


def strategies_for(method, bbse_weights):
    import domadapt as da

    name, _, variant = method.partition("_")
    make = {"dann": da.DANN, "cdan": da.CDAN, "mmd": da.MMD, "coral": da.CORAL}[name]
    if variant == "auto":
        return [make(class_weights="auto")]
    if variant == "bbse":
        return [make(class_weights=list(bbse_weights))]
    return [make()]


def train(data, source, target, strategies, seed, epochs, batch_size):
    import keras

    import domadapt as da

    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(suite.groupnorm_cnn(data["source_x"].shape[1:]), num_classes=suite.NUM_CLASSES,
                               strategies=strategies, preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3))
    started = time.perf_counter()
    history = adapter.fit(source=source, target=target, epochs=epochs, batch_size=batch_size, seed=seed, verbose=0)
    # < 1 when the default CollapseGuard backed the adaptation off (0: switched off).
    adapter.final_adaptation_scale = float(history.history.get("adaptation_scale", [1.0])[-1])
    return adapter, time.perf_counter() - started


def accuracy(adapter, images, labels):
    return float((adapter.predict(images, batch_size=512, verbose=0).argmax(axis=1) == labels).mean())


def total_variation(a, b):
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def run(args, out_dir, machine):
    import domadapt as da

    suite.configure_determinism()
    path = out_dir / "label_shift.json"
    payload = {"description": "benchmarks/label_shift.py", "machine": machine, "rows": [], "estimates": []}
    sizes = QUICK_SIZES if args.quick else SIZES
    for shift_name in args.shifts:
        shift = suite.SHIFTS[shift_name]
        reason = suite.missing_data_reason(shift)
        if reason:
            print(f"skip {shift_name}: {reason}", flush=True)
            continue
        data = suite.load_shift(shift, sizes)
        rng = np.random.default_rng(suite.DATA_SEED)
        targets = {kind: (cut(data["target_x"], data["target_y"], kind, rng), cut(data["target_test_x"], data["target_test_y"], kind, rng))
                   for kind in ("balanced", *TARGETS)}
        held_out = (data["source_test_x"], data["source_test_y"])
        for seed in args.seeds:
            # Source-only never puts the target in a loss: one model serves every target kind.
            source_only, seconds = train(data, (data["source_x"], data["source_y"]), targets["partial"][0][0], [], seed,
                                         args.epochs, args.batch_size)
            bbse_weights = {}
            for kind, ((train_x, train_y), (test_x, test_y)) in targets.items():
                truth = target_proportions(kind)
                for method in ("bbse", "em"):
                    result = da.gap.label_shift(source_only, source=held_out, target=train_x, method=method, seed=seed)
                    payload["estimates"].append({
                        "shift": shift_name, "target": kind, "seed": seed, "method": method, "num_target": len(train_x),
                        "estimate": result.target_proportions.tolist(), "truth": truth.tolist(),
                        "total_variation_error": total_variation(result.target_proportions, truth),
                        "interval_covers": float(np.mean((result.interval[:, 0] - 1e-9 <= truth) & (truth <= result.interval[:, 1] + 1e-9))),
                        "p_value": result.p_value, "differs": bool(result.differs), "verdict": result.verdict})
                    if method == "bbse":
                        bbse_weights[kind] = result.importance_weights
                if kind == "balanced":
                    continue
                payload["rows"].append({"shift": shift_name, "target": kind, "method": "source_only", "seed": seed,
                                        "target_accuracy": accuracy(source_only, test_x, test_y),
                                        "source_accuracy": accuracy(source_only, *held_out),
                                        "train_seconds": round(seconds, 1), "num_target_train": len(train_x),
                                        "num_target_test": len(test_x)})
            path.write_text(json.dumps(payload, indent=1) + "\n")
            for kind in TARGETS:
                (train_x, _), (test_x, test_y) = targets[kind]
                for method in args.methods:
                    adapter, seconds = train(data, (data["source_x"], data["source_y"]), train_x,
                                             strategies_for(method, bbse_weights[kind]), seed, args.epochs, args.batch_size)
                    row = {"shift": shift_name, "target": kind, "method": method, "seed": seed,
                           "target_accuracy": accuracy(adapter, test_x, test_y),
                           "source_accuracy": accuracy(adapter, *held_out), "train_seconds": round(seconds, 1),
                           "adaptation_scale": adapter.final_adaptation_scale,
                           "class_weights_end": (None if adapter.strategies[0].current_class_weights() is None
                                                 else np.round(adapter.strategies[0].current_class_weights(), 3).tolist()),
                           "num_target_train": len(train_x), "num_target_test": len(test_x)}
                    payload["rows"].append(row)
                    print(f"{shift_name:>22} {kind:>12} {method:>11} seed {seed}: target {row['target_accuracy']:.3f} "
                          f"({seconds:.0f} s)", flush=True)
                    path.write_text(json.dumps(payload, indent=1) + "\n")
    payload["settings"] = {"epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds,
                           "sizes": vars(sizes) if hasattr(sizes, "__dict__") else str(sizes)}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def _mean_std(values):
    values = np.asarray(values, float)
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0


def render(payload):
    rows, estimates = payload["rows"], payload["estimates"]
    settings = payload.get("settings", {})
    lines = ["# Label-shifted targets: unweighted vs class-weighted alignment", "",
             "Generated by `benchmarks/label_shift.py` from `label_shift.json`. Target accuracy on the held-out "
             "target test split cut to the same class mix, mean ± std over seeds (sample std); Δ = method − "
             "source-only on the means. `_auto`: `class_weights=\"auto\"` (in-graph PADA estimate); `dann_bbse`: "
             "DANN with the fixed `importance_weights` of `da.gap.label_shift` (BBSE) on the source-only model. ⚠k: in k "
             "runs the default CollapseGuard backed the adaptation off (adaptation_scale < 1 at the end).", "",
             f"Machine: {payload.get('machine', '?')}. Settings: {settings}.", ""]
    methods = ["source_only"] + [m for m in METHODS if any(r["method"] == m for r in rows)]
    for shift in dict.fromkeys(r["shift"] for r in rows):
        lines += [f"## {shift}", "", "| method | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
        base = {kind: _mean_std([r["target_accuracy"] for r in rows if r["shift"] == shift and r["target"] == kind
                                 and r["method"] == "source_only"])[0] for kind in TARGETS}
        for method in methods:
            cells = []
            for kind in TARGETS:
                values = [r["target_accuracy"] for r in rows if r["shift"] == shift and r["target"] == kind and r["method"] == method]
                if not values:
                    cells.append("—")
                    continue
                mean, std = _mean_std(values)
                delta = "" if method == "source_only" else f" (Δ {100 * (mean - base[kind]):+.1f})"
                backed_off = sum(r.get("adaptation_scale", 1.0) < 1.0 for r in rows if r["shift"] == shift
                                 and r["target"] == kind and r["method"] == method)
                guard = f" ⚠{backed_off}" if backed_off else ""
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}{delta} [n={len(values)}]{guard}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Estimate of the target's class proportions (source-only model)", "",
              "Total variation to the true proportions (0: exact; the goal is < 0.1), mean ± std over seeds; "
              "`differs`: share of runs whose verdict says the class mix differs (on `balanced` this is the "
              "false-alarm rate); coverage: share of classes whose true proportion lies in the 95% bootstrap interval.", "",
              "| shift | target | method | TV error | differs | coverage | target images |", "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((e["shift"], e["target"], e["method"]) for e in estimates)
    for shift, kind, method in keys:
        chosen = [e for e in estimates if (e["shift"], e["target"], e["method"]) == (shift, kind, method)]
        mean, std = _mean_std([e["total_variation_error"] for e in chosen])
        lines.append(f"| {shift} | {kind} | {method} | {mean:.3f} ± {std:.3f} | "
                     f"{np.mean([e['differs'] for e in chosen]):.0%} | {np.mean([e['interval_covers'] for e in chosen]):.0%} | "
                     f"{chosen[0]['num_target']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", nargs="+", choices=SHIFT_NAMES, default=list(SHIFT_NAMES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.quick else suite.RESULTS_DIR)
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:1]
    if not args.report_only:
        started = time.perf_counter()
        payload = run(args, out_dir, suite.machine_description())
        payload["total_seconds"] = round(time.perf_counter() - started)
        (out_dir / "label_shift.json").write_text(json.dumps(payload, indent=1) + "\n")
    payload = json.loads((out_dir / "label_shift.json").read_text())
    (out_dir / "label_shift.md").write_text(render(payload))
    print(f"wrote {out_dir / 'label_shift.md'}")


if __name__ == "__main__":
    main()
