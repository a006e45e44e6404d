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
