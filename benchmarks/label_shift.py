"""Targets whose class mix differs (issue #22): alignment unweighted vs class-weighted, and the estimate's error.

    .venv/bin/python benchmarks/label_shift.py                   # accuracy: 2 shifts x 2 targets x 3 seeds (~40 min, 2 cores)
    .venv/bin/python benchmarks/label_shift.py --estimates-only  # the estimator only: source-only models (~10-15 min)
    .venv/bin/python benchmarks/label_shift.py --quick           # smoke test, writes to a temp dir
    .venv/bin/python benchmarks/label_shift.py --report-only     # regenerate label_shift.md from label_shift.json

Shifts: ``fonts_to_handwritten`` (two real image sources) and ``rain`` (Fashion-MNIST rendered by
``domadapt/shifts.py``), built by ``benchmarks/shifts.py`` with smaller sizes. For each, two
label-shifted targets are cut from the target splits (training and test alike; the source
keeps all classes):

* ``partial``: classes 0-4 only (half the classes);
* ``long_tailed``: class k kept with share proportional to 10^(-k/9) (imbalance factor 10).

Accuracy (default mode): source-only (trained once per shift and seed: the target never enters
its loss), DANN, CDAN, MMD, CORAL with their defaults (unweighted) and with
``class_weights="auto"`` (PADA-style in-graph estimate), and DANN with the fixed
``importance_weights`` that ``da.gap.label_shift`` (BBSE) estimates from the source-only model
(``dann_bbse``). Results are written after every run, so an interrupted run keeps what it measured.

Estimates (``--estimates-only``, replaces the ``estimates`` of label_shift.json and keeps its
accuracy rows): ``da.gap.label_shift`` (BBSE and BCTS-calibrated EM, bootstrap test at 5%) on
the source-only model, for balanced, partial and long-tailed targets cut from each shift's
target images (several random subsets per seed), against 1,000 held-out source images; "before"
is the estimator of the previous release (plain least-squares BBSE, EM on uncalibrated
probabilities) on the same images. ``same_domain``: the target is held-out *source* images cut
to the class mix (label shift alone, no change of appearance). The appearance margin
(``APPEARANCE_MARGIN`` in domadapt/gap/label_shift.py) was chosen on the ``tuning`` shifts;
the ``report`` shifts were not looked at to choose it.
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
# Estimates: the margin was chosen on the tuning shifts; the report shifts only measure it.
ESTIMATE_SHIFTS = {"tuning": ("colour_cast", "defocus_jpeg", "low_light"), "report": ("fonts_to_handwritten", "rain", "fog")}
ESTIMATE_SIZES = suite.Sizes(source_train=1500, target_train=3000, target_test=2000, source_test=2000)
ESTIMATE_KINDS = ("balanced", "partial", "long_tailed")


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
    previous = json.loads(path.read_text()) if path.exists() else {}
    payload = {"description": "benchmarks/label_shift.py", "machine": machine, "rows": [],
               **{key: previous[key] for key in ("estimates", "estimate_machine", "estimate_settings", "estimate_seconds") if key in previous}}
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
                if kind == "balanced":
                    continue
                bbse_weights[kind] = da.gap.label_shift(source_only, source=held_out, target=train_x,
                                                        bootstrap=0).importance_weights
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
    payload["rows_estimator"] = "ridge-regularised BBSE of da.gap.label_shift (after issue #22's estimator rework)"
    payload["settings"] = {"epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds,
                           "sizes": vars(sizes) if hasattr(sizes, "__dict__") else str(sizes)}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def estimate_before(method, source_probabilities, source_labels, target_probabilities):
    """The estimators of the previous release: least-squares BBSE, EM on uncalibrated probabilities."""
    num_classes = source_probabilities.shape[1]
    source_proportions = np.bincount(source_labels, minlength=num_classes) / len(source_labels)
    if method == "em":
        prior = source_proportions.copy()
        for _ in range(1000):
            adjusted = target_probabilities * (prior / np.maximum(source_proportions, 1e-12))
            adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-300)
            updated = adjusted.mean(axis=0)
            if np.abs(updated - prior).max() < 1e-8:
                break
            prior = updated
        return updated
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (source_probabilities.argmax(axis=1), source_labels), 1.0)
    confusion /= np.maximum(confusion.sum(axis=0, keepdims=True), 1.0)
    shares = np.bincount(target_probabilities.argmax(axis=1), minlength=num_classes) / len(target_probabilities)
    solution = np.clip(np.linalg.lstsq(confusion, shares, rcond=None)[0], 0.0, None)
    return solution / solution.sum()


def subset(labels, kind, count, rng):
    """Indices of ``count`` images of ``labels`` (without replacement) whose class mix is ``target_proportions(kind)``."""
    shares = target_proportions(kind)
    return np.concatenate([rng.choice(np.flatnonzero(labels == k), int(round(count * share)), replace=False)
                           for k, share in enumerate(shares) if share > 0])


def run_estimates(args, out_dir, machine):
    """The estimator's errors, test decisions and interval coverage on source-only models (see the module docstring)."""
    import domadapt as da

    suite.configure_determinism()
    path = out_dir / "label_shift.json"
    payload = json.loads(path.read_text()) if path.exists() else {"description": "benchmarks/label_shift.py", "rows": []}
    # A run of some shifts and seeds replaces only their rows (and the same-domain rows of their source).
    sources = {"fonts" if suite.SHIFTS[name].renderer is None else "fashion" for name in args.estimate_shifts}
    replaced = {(name, seed) for name in [*args.estimate_shifts, *(f"same_domain ({s})" for s in sources)]
                for seed in args.seeds}
    payload["estimates"] = [e for e in payload.get("estimates", []) if (e["shift"], e["seed"]) not in replaced
                            and "role" in e]
    payload.update(estimate_machine=machine, estimate_settings={
        "epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds,
        "resamples": {"balanced": args.resamples, "partial": 1, "long_tailed": 1},
        "bootstrap": args.bootstrap, "sizes": vars(ESTIMATE_SIZES), "held_out_source": 1000,
        "target_images": {"fonts_to_handwritten": 600, "same_domain": 300, "other": 800}})
    roles = {name: role for role, names in ESTIMATE_SHIFTS.items() for name in names}
    models = {}  # the Fashion-MNIST shifts share their source data: one source-only model per seed serves them all
    for shift_name in args.estimate_shifts:
        shift = suite.SHIFTS[shift_name]
        reason = suite.missing_data_reason(shift)
        if reason:
            print(f"skip {shift_name}: {reason}", flush=True)
            continue
        data = suite.load_shift(shift, ESTIMATE_SIZES)
        held_out = (data["source_test_x"][:1000], data["source_test_y"][:1000])
        pool_x = np.concatenate([data["target_x"], data["target_test_x"]])
        pool_y = np.concatenate([data["target_y"], data["target_test_y"]])
        source_key = "fonts" if shift.renderer is None else "fashion"
        for seed in args.seeds:
            first = (source_key, seed) not in models
            if first:
                models[source_key, seed] = train(data, (data["source_x"], data["source_y"]), None, [], seed,
                                                 args.epochs, args.batch_size)[0]
            model = models[source_key, seed]
            cases = [(shift_name, roles.get(shift_name, "report"), pool_x, pool_y, 600 if shift.renderer is None else 800)]
            if first:  # label shift alone: the target is the other held-out source images, cut to the mix
                cases.append((f"same_domain ({source_key})", "same_domain", data["source_test_x"][1000:],
                              data["source_test_y"][1000:], 300))
            source_probabilities = model.predict(held_out[0], batch_size=512, verbose=0).astype(np.float64)
            for name, role, images, labels, count in cases:
                probabilities = model.predict(images, batch_size=512, verbose=0).astype(np.float64)
                rng = np.random.default_rng([suite.DATA_SEED, seed])
                for kind in ESTIMATE_KINDS:
                    truth = target_proportions(kind)
                    # More balanced resamples: they measure the false-alarm rate.
                    for resample in range(args.resamples if kind == "balanced" else 1):
                        index = subset(labels, kind, count, rng)
                        for method in ("bbse", "em"):
                            result = da.gap.label_shift(model, source=held_out, target=images[index], method=method,
                                                        bootstrap=args.bootstrap, seed=resample)
                            before = estimate_before(method, source_probabilities, held_out[1], probabilities[index])
                            payload["estimates"].append({
                                "shift": name, "role": role, "target": kind, "seed": seed, "resample": resample,
                                "method": method, "num_target": len(index), "truth": truth.tolist(),
                                "estimate": result.target_proportions.tolist(),
                                "total_variation_error": total_variation(result.target_proportions, truth),
                                "total_variation_error_before": total_variation(before, truth),
                                "interval_covers": float(np.mean((result.interval[:, 0] - 1e-9 <= truth)
                                                                 & (truth <= result.interval[:, 1] + 1e-9))),
                                "p_value": result.p_value, "shifted": result.shifted, "margin": result.margin,
                                "label_shift_fit_p_value": result.label_shift_fit_p_value,
                                "target_accuracy": float(np.mean(probabilities[index].argmax(axis=1) == labels[index])),
                                "verdict": result.verdict})
                print(f"{name:>26} seed {seed}: " + ", ".join(
                    f"{e['target']} {e['method']} TV {e['total_variation_error']:.2f} {'S' if e['shifted'] else '-'}"
                    for e in payload["estimates"] if e["shift"] == name and e["seed"] == seed and e["resample"] == 0),
                    flush=True)
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
             f"Machine: {payload.get('machine', '?')}. Settings: {settings}. `dann_bbse` weights from: "
             f"{payload.get('rows_estimator', 'the least-squares BBSE of the release before the estimator rework')}.", ""]
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
    lines += render_estimates(payload)
    return "\n".join(lines) + "\n"


def render_estimates(payload):
    estimates = payload.get("estimates", [])
    if not estimates:
        return []
    settings = {**payload.get("estimate_settings", {}), "seeds": sorted({e["seed"] for e in estimates})}
    lines = ["## Estimate of the target's class proportions (source-only model)", "",
             f"Machine: {payload.get('estimate_machine', '?')}. Settings: {settings}. Seconds per run of "
             f"--estimate-shifts: {payload.get('estimate_seconds', '?')}. Roles: `same_domain`: label shift alone "
             "(held-out source images cut to the mix); `tuning`: shifts on which `APPEARANCE_MARGIN` was chosen; `report`: shifts not used to "
             "choose it.", "",
             "TV error: total variation to the true proportions, mean ± std over seeds and resamples (goal < 0.1); "
             "before: the previous release's estimator on the same images. `shifted`: share of runs the test "
             "(5% level) flags — on `balanced` targets the false-alarm rate, otherwise the detection rate. "
             "margin: share of runs where the label-shift fit test saw an appearance change and the test allowed "
             "its margin (0.15 BBSE, 0.25 EM). coverage: share of classes whose true proportion lies in the 95% bootstrap interval. "
             "acc: the source-only model's accuracy on those target images.", "",
             "### Summary (both methods)", "", "| role | shifts | balanced: false alarms | partial: detected | "
             "long_tailed: detected |", "|---|---|---|---|---|"]
    for role in ("same_domain", "tuning", "report"):
        chosen = [e for e in estimates if e["role"] == role]
        if not chosen:
            continue
        cells = []
        for kind in ESTIMATE_KINDS:
            flags = [e["shifted"] for e in chosen if e["target"] == kind]
            cells.append(f"{sum(flags)}/{len(flags)} ({np.mean(flags):.0%})" if flags else "—")
        shifts = ", ".join(dict.fromkeys(e["shift"] for e in chosen))
        lines.append(f"| {role} | {shifts} | " + " | ".join(cells) + " |")
    lines += ["", "### Per shift", "", "| role | shift | target | method | TV error before | TV error | shifted | margin | "
              "coverage | acc | runs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((e["role"], e["shift"], e["target"], e["method"]) for e in estimates)
    for role, shift, kind, method in keys:
        chosen = [e for e in estimates if (e["role"], e["shift"], e["target"], e["method"]) == (role, shift, kind, method)]
        after, before = _mean_std([e["total_variation_error"] for e in chosen]), _mean_std(
            [e["total_variation_error_before"] for e in chosen])
        lines.append(f"| {role} | {shift} | {kind} | {method} | {before[0]:.3f} ± {before[1]:.3f} | "
                     f"{after[0]:.3f} ± {after[1]:.3f} | {np.mean([e['shifted'] for e in chosen]):.0%} | "
                     f"{np.mean([e['margin'] > 0 for e in chosen]):.0%} | "
                     f"{np.mean([e['interval_covers'] for e in chosen]):.0%} | "
                     f"{np.mean([e['target_accuracy'] for e in chosen]):.2f} | {len(chosen)} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", nargs="+", choices=SHIFT_NAMES, default=list(SHIFT_NAMES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--estimates-only", action="store_true")
    parser.add_argument("--estimate-shifts", nargs="+", choices=list(suite.SHIFTS),
                        default=[name for names in ESTIMATE_SHIFTS.values() for name in names])
    parser.add_argument("--resamples", type=int, default=2, help="random balanced target subsets per shift and seed")
    parser.add_argument("--bootstrap", type=int, default=60, help="bootstrap draws of da.gap.label_shift")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.quick else suite.RESULTS_DIR)
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:1]
        args.estimate_shifts, args.resamples, args.bootstrap = ["fonts_to_handwritten"], 1, 20
    if args.estimates_only:
        started = time.perf_counter()
        payload = run_estimates(args, out_dir, suite.machine_description())
        payload.setdefault("estimate_seconds", {})[" ".join(args.estimate_shifts)] = round(time.perf_counter() - started)
        (out_dir / "label_shift.json").write_text(json.dumps(payload, indent=1) + "\n")
    elif not args.report_only:
        started = time.perf_counter()
        payload = run(args, out_dir, suite.machine_description())
        payload["total_seconds"] = round(time.perf_counter() - started)
        (out_dir / "label_shift.json").write_text(json.dumps(payload, indent=1) + "\n")
    payload = json.loads((out_dir / "label_shift.json").read_text())
    (out_dir / "label_shift.md").write_text(render(payload))
    print(f"wrote {out_dir / 'label_shift.md'}")


if __name__ == "__main__":
    main()
