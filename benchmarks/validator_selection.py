"""Do the unsupervised validators pick a good adaptation? Spearman correlation and pick quality.

    python benchmarks/validator_selection.py [--epochs 4] [--per-domain 2000]

Two shifts, both built offline from Fashion-MNIST (scikit-learn digits when the IDX
files are missing):

* rain: the sunny-to-rainy shift of ``domadapt.datasets.load_sunny_rainy`` (the demo's data);
* colour: clean grey source vs a target that is colour-tinted, darker and lower in
  contrast, with a bright random background tint (a "different camera" shift).

On each shift a set of candidates is trained (source-only, each strategy, a few
hyperparameters of each). For each validator the script reports the Spearman rank
correlation between its score (oriented so that higher is better) and the true
target accuracy, the target accuracy of the candidate it would pick, the best
possible pick and the source-only accuracy. Validators see held-out labeled source
images and the unlabeled target training images; true accuracy is measured on
held-out target test images. Writes benchmarks/results/validator_selection.{json,md}.
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
from scipy import stats  # noqa: E402

import domadapt as da  # noqa: E402
from domadapt.datasets import load_sunny_rainy, small_cnn  # noqa: E402
from domadapt.validators.compare import DEFAULT_VALIDATORS  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def coloured(images, seed):
    """A colour/brightness/contrast shift of uint8 RGB images."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.4, 1.0, size=(len(images), 1, 1, 3))
    background = rng.uniform(40, 120, size=(len(images), 1, 1, 3))
    shifted = images.astype("float32") * 0.6 * tint + background
    return shifted.clip(0, 255).astype("uint8")


def shifts(per_domain):
    name, rain = load_sunny_rainy(per_domain=per_domain)
    _, colour = load_sunny_rainy(per_domain=per_domain, shift=coloured)
    return name, {"rain": rain, "colour": colour}


def candidates():
    gradient_reversal = lambda weight: da.DANN(weight=weight, hidden_units=(256, 256))  # noqa: E731
    return {
        "source-only": [],
        "MimicAugment rain": [da.MimicAugment("rain", severity=0.6, p=0.7, seed=0)],
        "MimicAugment histogram": [da.MimicAugment.from_target(method="histogram", p=0.7, seed=0)],
        "DANN w=0.3": [gradient_reversal(0.3)],
        "DANN w=1": [gradient_reversal(1.0)],
        "MMD w=0.3": [da.MMD(weight=0.3)],
        "MMD w=1": [da.MMD(weight=1.0)],
        "CORAL w=1": [da.CORAL(weight=1.0)],
        "CORAL w=10": [da.CORAL(weight=10.0)],
        "entropy w=0.1": [da.EntropyMinimization(0.1)],
        "CDAN+E": [da.CDAN(hidden_units=(256, 256))],
        "histogram + MMD + entropy": (
            da.MimicAugment.from_target(method="histogram", p=0.7, seed=0) + da.MMD() + da.EntropyMinimization(0.05)
        ),
    }


def train(strategies, data, epochs, seed=0):
    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(small_cnn(data["source_x"].shape[1:]), num_classes=10, strategies=strategies,
                               preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    adapter.fit(source=(data["source_x"], data["source_y"]), target=data["target_x"], epochs=epochs, batch_size=64,
                seed=seed, verbose=0)
    return adapter


def summarise(scores, accuracy, source_only, directions):
    """``directions``: ``{validator: "higher" | "lower"}`` of the comparison table (its ``agreement`` column
    is no validator class)."""
    names = list(next(iter(scores.values())))
    best = max(accuracy.values())
    summary = {}
    for name in names:
        sign = 1.0 if directions[name] == "higher" else -1.0
        oriented = {c: sign * scores[c][name] for c in scores}
        pick = max(oriented, key=oriented.get)
        rho = stats.spearmanr([oriented[c] for c in scores], [accuracy[c] for c in scores]).statistic
        summary[name] = {"spearman": float(rho), "picked": pick, "picked_accuracy": accuracy[pick],
                         "best_accuracy": best, "source_only_accuracy": source_only}
    return summary


def markdown(report):
    lines = [f"# Validator selection\n\nMachine: {report['machine']}. Data: {report['data']}; "
             f"{report['per_domain']} source / {report['per_domain']} unlabeled target training images, "
             f"{report['epochs']} epochs per candidate, {len(report['candidates'])} candidates per shift. "
             "Validators use held-out labeled source and unlabeled target images; target accuracy is on "
             "held-out target test images.\n"]
    for shift, result in report["shifts"].items():
        lines.append(f"\n## Shift: {shift}\n\n| candidate | target acc | " + " | ".join(report["validators"]) + " |")
        lines.append("|---|---|" + "---|" * len(report["validators"]))
        for candidate, accuracy in result["target_accuracy"].items():
            row = " | ".join(f"{result['scores'][candidate][v]:.4g}" for v in report["validators"])
            lines.append(f"| {candidate} | {accuracy:.3f} | {row} |")
        lines.append("\n| validator | Spearman vs target acc | picks | picked acc | best acc | source-only acc |")
        lines.append("|---|---|---|---|---|---|")
        for name, row in result["summary"].items():
            lines.append(f"| {name} | {row['spearman']:+.2f} | {row['picked']} | {row['picked_accuracy']:.3f} | "
                         f"{row['best_accuracy']:.3f} | {row['source_only_accuracy']:.3f} |")
        recommended = result["recommended"]
        lines.append(f"\n`da.compare` recommends **{recommended}** (target acc "
                     f"{result['target_accuracy'][recommended]:.3f}).\n")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-domain", type=int, default=2000)
    parser.add_argument("--shifts", nargs="+", default=["rain", "colour"])
    args = parser.parse_args(argv)

    name, all_data = shifts(args.per_domain)
    report = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()}", "data": name,
              "epochs": args.epochs, "per_domain": args.per_domain, "candidates": list(candidates()),
              "validators": list(DEFAULT_VALIDATORS), "shifts": {}}
    for shift in args.shifts:
        data = all_data[shift]
        trained = {}
        started = time.perf_counter()
        for candidate, strategies in candidates().items():
            print(f"[{shift}] training {candidate} ...", flush=True)
            trained[candidate] = train(strategies, data, args.epochs)
        source_val = (data["source_test_x"][:1000], data["source_test_y"][:1000])
        target_unlabeled = data["target_x"][:1000]
        table = da.compare(trained, source=source_val, target=target_unlabeled)
        report["validators"] = list(table.directions)  # compare's agreement column included
        accuracy = {c: float(model.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1])
                    for c, model in trained.items()}
        report["shifts"][shift] = {
            "scores": table.scores, "target_accuracy": accuracy, "recommended": table.recommended,
            "warnings": table.warnings, "summary": summarise(table.scores, accuracy, accuracy["source-only"], table.directions),
            "seconds": time.perf_counter() - started,
        }
        print(markdown({**report, "shifts": {shift: report["shifts"][shift]}}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "validator_selection.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "validator_selection.md").write_text(markdown(report))
    print(f"Wrote {RESULTS / 'validator_selection.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
