"""Keras callbacks of domadapt."""

from __future__ import annotations

import keras

from domadapt.validators.compare import _resolve


class ValidatorCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch by an unsupervised validator; optionally stop early.

    At the end of each epoch the validator scores the model on ``source`` (held-out
    labeled source) and ``target`` (unlabeled target); the best weights are kept in
    memory and restored when training ends. No target labels are used.

    Args:
        validator: a validator name (``"snd"``, ``"information_maximization"``,
            ``"entropy"``, ``"dev"``, ``"mmd"``, ``"source_accuracy"``) or object.
        source, target: validation data.
        patience: stop after this many epochs without improvement (``None``: never).
        restore_best: restore the best weights at the end of training.

    Example:

    ```python
    checkpoint = da.callbacks.ValidatorCheckpoint("snd", source=(xs_val, ys_val), target=xt_val)
    adapter.fit(source=(xs, ys), target=xt, epochs=20, callbacks=[checkpoint])
    print(checkpoint.best_epoch, checkpoint.history)
    ```
    """

    def __init__(self, validator="snd", source=None, target=None, patience=None, restore_best=True):
        super().__init__()
        (self.validator,) = _resolve([validator])
        self.source = source
        self.target = target
        self.patience = patience
        self.restore_best = restore_best
        self.history = []
        self.best_epoch = None
        self._best_score = None
        self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = self.validator(self.model, self.source, self.target)
        self.history.append(value)
        if logs is not None:
            logs[f"val_{self.validator.name}"] = value
        score = self.validator.ranking_score(value)
        if self._best_score is None or score > self._best_score:
            self._best_score, self.best_epoch = score, epoch
            self._best_weights = self.model.get_weights()
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self._best_weights is not None:
            self.model.set_weights(self._best_weights)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop training with a clear error when a loss term becomes NaN or infinite.

    ``DomainAdapter.fit`` adds one by default (``stop_on_nonfinite=True``). The train
    step itself drops the gradients of a step whose loss terms are not all finite,
    so the weights stay finite (an optimizer with momentum still moves them by its
    momentum for that step). The error names the term, the epoch, the batch and the
    optimizer step. Reading the logs synchronises host and device every
    ``check_every`` batches, as Keras' own ``TerminateOnNaN`` does every batch.

    Example:

    ```python
    adapter.fit(source=(xs, ys), target=xt, callbacks=[da.callbacks.StopOnNonFinite(check_every=10)])
    ```
    """

    def __init__(self, check_every=1):
        super().__init__()
        if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
            raise ValueError(f"Argument `check_every` must be a positive integer; received {check_every!r}.")
        self.check_every = check_every
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not logs or (batch + 1) % self.check_every:
            return
        import numpy as np

        bad = {}
        for name, value in logs.items():
            value = np.asarray(value)
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                bad[name] = float(np.ravel(value)[0])
        if not bad:
            return
        terms = [n for n in bad if n != "loss"] or list(bad)
        self.model.stop_training = True
        step = int(self.model.optimizer.iterations.numpy())
        where = f"epoch {self._epoch + 1}, batch {batch + 1}" + (
            f" (within the last {self.check_every} batches)" if self.check_every > 1 else ""
        )
        raise NonFiniteLossError(
            f"Loss term(s) {', '.join(repr(t) + ' = ' + str(bad[t]) for t in terms)} became non-finite at {where}, "
            f"optimizer step {step}. Training stopped; the gradients of that step were dropped, so the weights are "
            "finite. Common causes: a learning rate or strategy weight too high, NaN or inf in the input images, "
            "float16 overflow without loss scaling."
        )
