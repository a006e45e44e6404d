"""Few labeled target images: scratch vs head-only vs auto fine-tuning vs fine-tuning + gradient reversal.

    python benchmarks/fine_tune_few_labels.py [--per-class 10 50 200] [--steps 200]

Shift: sunny-to-rainy Fashion-MNIST (clean source, rainy target;
``domadapt.datasets.load_sunny_rainy``, the data the demo trains on too). A small
CNN is pretrained on the labeled sunny source; then, for 10, 50 and 200 labeled rainy images per class:

* scratch: a fresh CNN trained on the labeled target images only;
* head-only: the pretrained CNN, backbone frozen (FineTune("head")), on those images;
* auto fine-tuning: FineTune("auto") on those images;
* fine-tuning + gradient reversal: FineTune("auto") + DANN, trained on the
  labeled source, the labeled target images (target_labeled) and the rest of the
  target unlabeled.

Every method runs the same number of optimizer steps. Target accuracy is measured on
2000 held-out rainy test images. Writes benchmarks/results/fine_tune_few_labels.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import domadapt as da  # noqa: E402
from domadapt.datasets import load_sunny_rainy, small_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_adapter(backbone, strategies):
    adapter = da.DomainAdapter(backbone, num_classes=10, strategies=strategies, preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    return adapter


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per method")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    args = parser.parse_args(argv)

    name, data = load_sunny_rainy()
    keras.utils.set_random_seed(0)
    pretrained = make_adapter(small_cnn(data["source_x"].shape[1:]), [])
    pretrained.fit(source=(data["source_x"], data["source_y"]), epochs=args.pretrain_epochs, batch_size=64, verbose=0, seed=0)
    pretrained_backbone = pretrained.backbone
    source_only = pretrained.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1]
    print(f"pretrained on sunny source: rainy target accuracy {source_only:.3f}")

    rng = np.random.default_rng(0)
    rows = []
    epochs = 4
    steps = max(1, args.steps // epochs)
    for per_class in args.per_class:
        chosen = np.concatenate([
            rng.choice(np.flatnonzero(data["target_y"] == c), per_class, replace=False) for c in range(10)
        ])
        rest = np.setdiff1d(np.arange(len(data["target_x"])), chosen)
        labeled = (data["target_x"][chosen], data["target_y"][chosen])
        methods = {
            "scratch": lambda: (make_adapter(small_cnn(data["source_x"].shape[1:]), []), dict(source=labeled)),
            "head-only": lambda: (make_adapter(copy_of(pretrained_backbone), [da.FineTune("head", verbose=False)]),
                                  dict(source=labeled)),
            "auto fine-tuning": lambda: (make_adapter(copy_of(pretrained_backbone), [da.FineTune("auto", verbose=False)]),
                                         dict(source=labeled)),
            "fine-tuning + gradient reversal": lambda: (
                make_adapter(copy_of(pretrained_backbone),
                             [da.FineTune("auto", verbose=False), da.DANN(hidden_units=(256, 256))]),
                dict(source=(data["source_x"], data["source_y"]), target_labeled=labeled, target=data["target_x"][rest]),
            ),
        }
        for method, build in methods.items():
            keras.utils.set_random_seed(0)
            adapter, inputs = build()
            adapter.fit(**inputs, epochs=epochs, steps_per_epoch=steps, batch_size=64, verbose=0, seed=0)
            accuracy = adapter.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1]
            rows.append({"labeled_per_class": per_class, "method": method, "target_accuracy": float(accuracy)})
            print(f"{per_class:>4} per class  {method:<34} {accuracy:.3f}", flush=True)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "data": name, "steps_per_method": epochs * steps,
              "source_only_target_accuracy": float(source_only), "rows": rows}
    (RESULTS / "fine_tune_few_labels.json").write_text(json.dumps(report, indent=2))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    lines = [
        "# Few labeled target images",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs. Data: {name}, sunny source -> rainy target. "
        f"{epochs * steps} optimizer steps per method (batch 64). Pretrained on source only: rainy target accuracy "
        f"{source_only:.3f}.",
        "",
        "| labeled target images per class | " + " | ".join(methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    for per_class in args.per_class:
        values = {row["method"]: row["target_accuracy"] for row in rows if row["labeled_per_class"] == per_class}
        lines.append(f"| {per_class} | " + " | ".join(f"{values[m]:.3f}" for m in methods) + " |")
    (RESULTS / "fine_tune_few_labels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
