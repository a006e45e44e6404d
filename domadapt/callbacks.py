"""Keras callbacks of domadapt."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile

import keras
import numpy as np

from domadapt._files import apply_umask
from domadapt.data import without_labels
from domadapt.health import CollapseGuard, CollapseWarning  # noqa: F401  (da.callbacks.CollapseGuard)
from domadapt.validators.compare import resolve_validators


class ValidatorCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch by an unsupervised validator; optionally stop early.

    At the end of each epoch the validator scores the model on ``source`` (held-out
    labeled source) and ``target`` (unlabeled target); the best weights are kept in
    memory and restored when training ends. No target labels are used.

    Args:
        validator: a validator name (``"information_maximization"``, the default;
            ``"reverse"``, ``"snd"``, ``"entropy"``, ``"dev"``, ``"mmd"``,
            ``"source_accuracy"``) or object. The default was ``"snd"`` until 0.1;
            benchmarks/results/validator_selection.md found SND anti-correlated with
            target accuracy (Spearman -0.94 on rain, -0.67 on colour: it prefers
            collapsed models), and information maximization the best correlated
            (+0.94, +0.66) of those that need only target images (reverse, +0.86 and
            +0.70, also needs labeled ``source``). Pass ``"snd"`` for the old behaviour.
        source, target: validation data.
        patience: stop after this many epochs without improvement (``None``: never).
        restore_best: restore the best weights at the end of training.

    Example:

    ```python
    checkpoint = da.callbacks.ValidatorCheckpoint("information_maximization", target=xt_val)
    adapter.fit(source=(xs, ys), target=xt, epochs=20, callbacks=[checkpoint])
    print(checkpoint.best_epoch, checkpoint.history)
    ```
    """

    def __init__(self, validator="information_maximization", source=None, target=None, patience=None, restore_best=True):
        super().__init__()
        (self.validator,) = resolve_validators([validator])
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, (int, np.integer))
                                     or patience < 0):
            raise ValueError(f"Argument `patience` must be None or an integer >= 0; received patience={patience!r}.")
        if not isinstance(restore_best, bool):
            raise TypeError(f"Argument `restore_best` must be True or False; received restore_best={restore_best!r}.")
        # Checked now, not at the end of the first epoch of training.
        requires = getattr(self.validator, "requires", ())
        if source is None and target is None:
            raise ValueError("ValidatorCheckpoint needs validation data: pass `target` (unlabeled target images) "
                             "and/or `source` (held-out labeled source images).")
        if "target" in requires and target is None:
            raise ValueError(f"Argument `target` is required by the {self.validator.name!r} validator.")
        if ("source" in requires or "labeled_source" in requires) and source is None:
            raise ValueError(f"Argument `source` is required by the {self.validator.name!r} validator.")
        if "labeled_source" in requires and not (isinstance(source, (tuple, list)) and len(source) == 2):
            raise TypeError(f"Argument `source` must be (images, labels) for the {self.validator.name!r} validator; "
                            f"received {type(source).__name__}.")
        self.source = source
        self.target = target
        self.patience = patience
        self.restore_best = restore_best
        self._reset()

    def _reset(self):
        self.history = []
        self.best_epoch = None
        self._best_score = None
        self._best_weights = None

    def on_train_begin(self, logs=None):
        # Each fit searches its own epochs: a checkpoint reused in a second fit restored the first fit's best.
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        # A DomainAdapter with per-domain batch-norm statistics is scored as fit would export these weights: its
        # moving statistics lag them (DANN on the BN CNN's fog: 10% accuracy with them, 35% re-estimated).
        statistics = getattr(self.model, "_reestimated_batchnorm", None)
        context = (statistics(self.source, without_labels(self.target)) if statistics is not None
                   and self.target is not None else contextlib.nullcontext())
        with context:
            value = self.validator(self.model, self.source, self.target)
        self.history.append(value)
        if logs is not None:
            logs[f"val_{self.validator.name}"] = value
        score = self.validator.ranking_score(value)
        # A non-finite score is never the best: a NaN first score locked the checkpoint to that epoch.
        if np.isfinite(score) and (self._best_score is None or score > self._best_score):
            self._best_score, self.best_epoch = score, epoch
            self._best_weights = self.model.get_weights()
        elif self.patience is not None and epoch - (-1 if self.best_epoch is None else self.best_epoch) >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop training with a clear error when a loss term becomes NaN or infinite.

    ``DomainAdapter.fit`` adds one by default (``stop_on_nonfinite=True``). The train
    step's ``da.nonfinite.NonFiniteGuard`` drops the gradients of any step whose loss
    terms are not all finite (so the weights stay finite; an optimizer with momentum
    still moves them by its momentum) and records, in the graph, the first such step
    and its terms. This callback reads
    that record every ``check_every`` batches and at each epoch's end (one small
    device-to-host read, so training is not synchronised every step) and raises
    :class:`NonFiniteLossError` naming the terms, the optimizer step, the epoch and
    the batch.

    Example:

    ```python
    adapter.fit(source=(xs, ys), target=xt, callbacks=[da.callbacks.StopOnNonFinite(check_every=1)])
    ```
    """

    def __init__(self, check_every=20):
        super().__init__()
        if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
            raise ValueError(f"Argument `check_every` must be a positive integer; received {check_every!r}.")
        self.check_every = check_every
        self._epoch_starts = []  # (epoch, optimizer iterations when it began)

    def on_train_begin(self, logs=None):
        if getattr(self.model, "nonfinite_guard", None) is None:
            raise TypeError(
                "StopOnNonFinite watches a da.DomainAdapter's train step; for a plain keras.Model use "
                "keras.callbacks.TerminateOnNaN."
            )
        self.model.nonfinite_guard.reset()
        self._epoch_starts = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_starts.append((epoch, int(self.model.optimizer.iterations.numpy())))

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every == 0:
            self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()

    def _check(self):
        guard = self.model.nonfinite_guard
        step = int(guard.first_step.numpy())
        if step == 0:
            return
        names = guard.names_of(int(guard.term_mask.numpy()))
        epoch, start = next(((e, s) for e, s in reversed(self._epoch_starts) if s < step), (0, 0))
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"Loss term(s) {', '.join(repr(n) for n in names)} became non-finite (NaN or inf) at optimizer step {step} "
            f"(epoch {epoch + 1}, batch {step - start}). Training stopped; the gradients of non-finite steps were "
            "dropped, so the weights are finite. Common causes: a learning rate or strategy weight too high, NaN or "
            "inf in the input images, float16 overflow without loss scaling."
        )


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose ``training_metadata.json`` is replaced atomically.

    Keras truncates the metadata file and then writes it: a process killed in
    between leaves an empty file, and the next ``fit`` fails to resume with a JSON
    error (seen in the project's SIGKILL test of ``domadapt run --resume``). Here the
    new metadata goes to a temporary file in the same folder, which then replaces
    the old one (``os.replace``): a kill leaves either the previous epoch's metadata
    or the new one (on local paths; remote ones such as ``gs://`` are written as Keras
    does). Weights are saved as in Keras (a partial weights file is
    detected on loading and the ``double_checkpoint`` copy used).

    When training ends (``delete_checkpoint=True``, the default) it removes the files
    it wrote and then the folder if that left it empty; Keras' removes the whole
    ``backup_dir`` tree, whatever else the user keeps there (a ``backup_dir`` of
    ``"."`` emptied the working directory).

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    adapter = da.DomainAdapter(backbone, num_classes=2)
    adapter.compile(optimizer="adam")
    backup = da.callbacks.BackupAndRestore("/tmp/domadapt-backup", double_checkpoint=True)
    adapter.fit(source=(np.random.rand(32, 2), np.random.randint(0, 2, 32)), epochs=2, verbose=0, callbacks=[backup])
    ```
    """

    def on_train_end(self, logs=None):
        if "://" in str(self.backup_dir) or not self.delete_checkpoint:
            return super().on_train_end(logs)
        # what _save_model writes, and a temporary metadata file a killed process left behind
        partial = glob.glob(os.path.join(glob.escape(str(self.backup_dir)), ".training_metadata.*.partial"))
        for path in (self._weights_path, self._training_metadata_path, self._prev_weights_path,
                     self._prev_training_metadata_path, *partial):
            if os.path.isfile(path):
                os.remove(path)
        try:
            os.rmdir(self.backup_dir)  # only if nothing else is in it
        except OSError:
            pass

    def _save_model(self):
        if "://" in str(self.backup_dir):  # gs://, s3://, ram://: Keras' file_utils writes there, os cannot
            return super()._save_model()
        os.makedirs(self.backup_dir, exist_ok=True)
        metadata = self._training_metadata_path
        if self.double_checkpoint and os.path.exists(self._weights_path):
            shutil.copyfile(self._weights_path, self._prev_weights_path)
        if self.double_checkpoint and os.path.exists(metadata):
            shutil.copyfile(metadata, self._prev_training_metadata_path)
        self.model.save_weights(filepath=self._weights_path, overwrite=True)
        handle, temporary = tempfile.mkstemp(dir=self.backup_dir, prefix=".training_metadata.", suffix=".partial")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            apply_umask(temporary)  # mkstemp makes it private; a plain open() would not
            os.replace(temporary, metadata)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
