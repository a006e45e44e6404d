"""Train with BackupAndRestore; optionally die by SIGKILL mid-epoch. Used by tests/test_reliability.py.

    python resume_check.py OUT_DIR full            # uninterrupted run, no backup
    python resume_check.py OUT_DIR backup KILL_AT  # BackupAndRestore; SIGKILL at global batch KILL_AT (0: never)

Writes OUT_DIR/<mode>.npz (final trainable weights, by index) and <mode>.json (last logs, lambda per epoch).
"""

import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import numpy as np  # noqa: E402

import domadapt as da  # noqa: E402

EPOCHS, BATCH = 4, 32


class KillAt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, as a preempted machine


class RecordLambda(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch[epoch] = {k: float(v) for k, v in logs.items()}


def main():
    out, mode = Path(sys.argv[1]), sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    rng = np.random.default_rng(0)
    source_x = rng.normal(size=(320, 2)).astype("float32")
    source_y = (source_x[:, 0] > 0).astype("int64")
    target_x = (source_x[::-1] * 1.5 + 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    # A BatchNormalization layer that trains (FineTune(batchnorm="train")): bn_mode="domain" keeps
    # per-domain moving statistics, which the backup must restore like the weights.
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, name="block1"),
                                 keras.layers.BatchNormalization(name="block1_bn"), keras.layers.Activation("tanh"),
                                 keras.layers.Dense(16, activation="tanh", name="block2")])
    strategies = [da.GradientReversal(weight=1.0, hidden_units=(16,), dropout=0.0),
                  da.FineTune(trainable="all", unfreeze="gradual", backbone_lr=0.5, decay=0.5, batchnorm="train",
                              verbose=False)]
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    record = RecordLambda()
    callbacks = [record]
    if mode == "backup":
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(out / "backup")))
        if kill_at:
            callbacks.append(KillAt(kill_at))
    adapter.fit(source=(source_x, source_y), target=target_x, epochs=EPOCHS, batch_size=BATCH, seed=0, verbose=0,
                callbacks=callbacks)
    # Trainable weights, then the exported (target) and source batch-norm statistics.
    statistics = [v for v in adapter.classifier.non_trainable_variables] + list(adapter.source_batchnorm_statistics)
    assert len(statistics) == 4, len(statistics)
    np.savez(out / f"{mode}.npz", *[np.asarray(v) for v in adapter.trainable_variables + statistics])
    (out / f"{mode}.json").write_text(json.dumps({"epochs": record.per_epoch,
                                                  "iterations": int(adapter.optimizer.iterations.numpy())}))


if __name__ == "__main__":
    main()
