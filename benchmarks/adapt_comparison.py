"""domadapt's DANN against ADAPT's DANN (adapt 0.4.5): seconds per epoch and target accuracy.

    python benchmarks/adapt_comparison.py [--epochs 6] [--seeds 0 1] [--adapt-python /tmp/adaptvenv/bin/python]

Same data (sunny -> rainy Fashion-MNIST from ``domadapt.datasets.load_sunny_rainy``),
same architecture on both sides: encoder = Rescaling(1/255) + ``small_cnn`` + global
average pooling, task head Dense(10) (logits), discriminator Dense(256, relu) x 2 +
Dense(1, sigmoid); Adam(1e-3); 64 source + 64 target images per step; the reversal
weight ramped 0 -> 1 over the run (domadapt: schedule "ganin"; ADAPT: its
``UpdateLambda`` callback, gamma 10, same number of steps). ADAPT runs in a
subprocess with its own virtual environment (``pip install adapt==0.4.5`` into a
venv that sees this one's TensorFlow through a .pth file), so nothing of it enters
domadapt's environment. Seconds per epoch exclude the first epoch (tracing). Writes
benchmarks/results/adapt_comparison.{json,md}; if ADAPT cannot run, the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BATCH = 64
NOTES = [
    "How ADAPT ran: `python -m venv /tmp/adaptvenv`, a .pth file pointing at domadapt's site-packages (the same "
    "TensorFlow 2.21 / Keras 3, no tf_keras or TF_USE_LEGACY_KERAS needed), `pip install adapt==0.4.5` (adds "
    "cvxopt, scikeras). Two things ADAPT needs that domadapt does not: the optimizer and loss go to the "
    "constructor (its `compile()` before `fit()` raises `AttributeError: 'DANN' object has no attribute "
    "'pretrain_'`), and labels must be one-hot (its train step reshapes the predictions to the labels' shape: "
    "`Input to reshape is a tensor with 640 values, but the requested shape has 64` with integer labels).",
    "",
    "Reading: on this shared CPU the per-epoch times differ by less than the machine's noise (the same library "
    "varies by ~35 % between seeds). Both stay near the source-only level on this shift after 5 epochs "
    "(source-only: 0.165 in strategy_throughput.md; chance: 0.10); accuracy "
    "here is a check that both train the same model, not a ranking.",
]


class _EpochTimer:
    """A Keras callback factory (keras is imported late: the ADAPT worker imports its own)."""

    @staticmethod
    def make(keras):
        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return Timer()


def _parts(keras, input_shape, small_cnn):
    encoder = keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255), small_cnn(input_shape),
                                keras.layers.GlobalAveragePooling2D()], name="encoder")
    task = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)], name="task")
    discriminator = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                      keras.layers.Dense(256, activation="relu"),
                                      keras.layers.Dense(1, activation="sigmoid")], name="discriminator")
    return encoder, task, discriminator


def run_domadapt(data, epochs, seed):
    import keras

    import domadapt as da
    from domadapt.datasets import small_cnn

    keras.utils.set_random_seed(seed)
    adapter = da.DomainAdapter(small_cnn(data["source_x"].shape[1:]), num_classes=10,
                               strategies=[da.DANN(hidden_units=(256, 256), dropout=0.0)],
                               preprocess=keras.layers.Rescaling(1 / 255))
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    timer = _EpochTimer.make(keras)
    adapter.fit(source=(data["source_x"], data["source_y"]), target=data["target_x"], epochs=epochs,
                batch_size=BATCH, callbacks=[timer], verbose=0, seed=seed)
    accuracy = float(adapter.evaluate(data["target_test_x"], data["target_test_y"], verbose=0)[1])
    return {"epoch_seconds": timer.seconds, "target_accuracy": accuracy}


def run_adapt(data_path, epochs, seed):
    """Runs in ADAPT's environment (``--adapt-worker``)."""
    import keras
    import tensorflow as tf
    from adapt.feature_based import DANN
    from adapt.utils import UpdateLambda

    # domadapt is an editable install of this venv, not of ADAPT's: import it from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from domadapt.datasets import small_cnn

    data = dict(np.load(data_path))
    keras.utils.set_random_seed(seed)
    encoder, task, discriminator = _parts(keras, data["source_x"].shape[1:], small_cnn)
    steps = epochs * int(np.ceil(len(data["source_x"]) / BATCH))
    # ADAPT takes its optimizer and loss at construction (its compile() before fit() fails: no `pretrain_`).
    model = DANN(encoder=encoder, task=task, discriminator=discriminator, lambda_=tf.Variable(0.0),
                 Xt=data["target_x"].astype("float32"), random_state=seed, optimizer=keras.optimizers.Adam(1e-3),
                 loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    timer = _EpochTimer.make(keras)
    # ADAPT reshapes the predictions to the labels' shape: one-hot labels.
    one_hot = np.eye(10, dtype="float32")[data["source_y"]]
    model.fit(data["source_x"].astype("float32"), one_hot, epochs=epochs, batch_size=BATCH, verbose=0,
              callbacks=[UpdateLambda(max_steps=steps, gamma=10.0), timer])
    logits = model.predict(data["target_test_x"].astype("float32"), verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == data["target_test_y"]))
    return {"epoch_seconds": timer.seconds, "target_accuracy": accuracy}


def adapt_subprocess(python, data_path, epochs, seed):
    """ADAPT's result, or {"error": why it could not run}."""
    if not Path(python).exists():
        return {"error": f"no ADAPT environment at {python} (create a venv and `pip install adapt==0.4.5` into it)"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [python, __file__, "--adapt-worker", data_path, "--out", out, "--epochs", str(epochs), "--seeds", str(seed)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip() and not line.startswith(("I0000", "E0000", "W0000"))]
        return {"error": "\n".join(lines[-12:])}
    return json.loads(Path(out).read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--adapt-python", default="/tmp/adaptvenv/bin/python")
    parser.add_argument("--adapt-worker", metavar="DATA_NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.adapt_worker:
        result = run_adapt(args.adapt_worker, args.epochs, args.seeds[0])
        import adapt.feature_based  # noqa: F401 (its version is the installed distribution's)
        from importlib.metadata import version

        result["adapt_version"] = version("adapt")
        Path(args.out).write_text(json.dumps(result))
        return 0

    import keras
    import tensorflow as tf

    from domadapt.datasets import load_sunny_rainy

    name, data = load_sunny_rainy()
    data_path = Path(tempfile.mkdtemp()) / "sunny_rainy.npz"
    np.savez(data_path, **{k: v for k, v in data.items() if k in ("source_x", "source_y", "target_x",
                                                                   "target_test_x", "target_test_y")})
    runs = []
    for seed in args.seeds:
        for library in ("domadapt", "adapt"):
            result = (run_domadapt(data, args.epochs, seed) if library == "domadapt"
                      else adapt_subprocess(args.adapt_python, str(data_path), args.epochs, seed))
            runs.append({"library": library, "seed": seed, **result})
            if "error" in result:
                print(f"{library} seed {seed}: cannot run:\n{result['error']}", flush=True)
            else:
                print(f"{library} seed {seed}: {np.mean(result['epoch_seconds'][1:]):.2f} s/epoch (after the first), "
                      f"target accuracy {result['target_accuracy']:.3f}", flush=True)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
               "tensorflow": tf.__version__, "keras": keras.__version__, "load_average_at_end": os.getloadavg()}
    report = {"machine": machine, "data": name, "epochs": args.epochs, "batch": BATCH, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapt_comparison.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# domadapt DANN vs ADAPT DANN (adapt 0.4.5)",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs shared with other jobs (load average at the "
        f"end {machine['load_average_at_end'][0]:.1f}), GPUs: {machine['gpus'] or 'none'}; TF {machine['tensorflow']}, "
        f"Keras {machine['keras']} in both (ADAPT in its own venv that sees the same TensorFlow). Data: {name} "
        f"sunny -> rainy, {len(data['source_x'])} source and {len(data['target_x'])} target training images, "
        f"target accuracy on {len(data['target_test_x'])} held-out target images. {args.epochs} epochs, "
        f"{BATCH} source + {BATCH} target images per step, same encoder/head/discriminator, Adam(1e-3), "
        "reversal weight ramped 0 -> 1 over the run. Seconds per epoch: mean of epochs 2+ (epoch 1 includes tracing).",
        "",
        "| library | seed | s/epoch (epochs 2+) | first epoch s | target accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        if "error" in run:
            lines.append(f"| {run['library']} | {run['seed']} | could not run | - | - |")
            continue
        lines.append(f"| {run['library']} | {run['seed']} | {np.mean(run['epoch_seconds'][1:]):.2f} | "
                     f"{run['epoch_seconds'][0]:.2f} | {run['target_accuracy']:.3f} |")
    lines += ["", *NOTES]
    errors = {run["error"] for run in runs if "error" in run}
    for error in errors:
        lines += ["", "ADAPT could not run here:", "", "```", error, "```"]
    (RESULTS / "adapt_comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
