"""Parts of DomainAdapter's training that need no adapter state: logs, metrics, input transforms, resumption."""

from __future__ import annotations

import inspect
import json
import numbers
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import data
from domadapt.callbacks import StopOnNonFinite
from domadapt.gap.checks import check_seed
from domadapt.health import CollapseGuard
from domadapt.strategy import Strategy


@keras.saving.register_keras_serializable(package="domadapt")
class LastValue(keras.metrics.Metric):
    """A metric that shows the most recent value (for schedules such as lambda)."""

    def __init__(self, name="last_value", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value", aggregation="mean")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        self.value.assign(0.0)


def resolve_metric(metric):
    """A Keras metric object from a metric, its name or a function; "accuracy" is sparse categorical accuracy."""
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if metric in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    resolved = keras.metrics.get(metric)
    if isinstance(resolved, keras.metrics.Metric):
        return resolved
    if not callable(resolved):  # None: the traced step failed with "'NoneType' object is not callable"
        raise TypeError(f"Argument `metrics`: each metric must be a keras.metrics.Metric, a metric name or a function "
                        f"(y_true, y_pred) -> values; received {metric!r}.")
    return keras.metrics.MeanMetricWrapper(resolved, name=getattr(resolved, "__name__", str(metric)))


def log_names_of(strategies):
    """Map every (strategy index, declared name) to a unique progress-bar name.

    Returns ``{"kinds": {shown name: "mean" | "last"}, "per_strategy": [{declared: shown}]}``.
    """
    kinds = {"cls_loss": "mean", "target_cls_loss": "mean"}
    taken = {"loss", "cls_loss", "target_cls_loss"}
    per_strategy = []
    for strategy in strategies:
        mapping = {}
        declared_logs = strategy.log_names if isinstance(strategy.log_names, dict) else dict.fromkeys(
            strategy.log_names, "mean")
        for declared, kind in declared_logs.items():
            if kind not in ("mean", "last"):
                raise ValueError(
                    f"{type(strategy).__name__}.log_names[{declared!r}] must be 'mean' or 'last'; received {kind!r}."
                )
            shown, suffix = declared, 2
            while shown in taken:
                shown, suffix = f"{declared}_{suffix}", suffix + 1
            taken.add(shown)
            mapping[declared] = shown
            kinds[shown] = kind
        per_strategy.append(mapping)
    return {"kinds": kinds, "per_strategy": per_strategy}


def with_input_transforms(dataset, strategies):
    """The paired dataset after the strategies' tf.data transforms, in recipe order, without its step counter."""
    source_hooks = [_with_step(s.transform_source) for s in strategies if s.transforms_source]
    target_hooks = [_with_step(s.transform_target) for s in strategies if s.transforms_target]

    def transform(element):
        element = dict(element)
        step = element.pop("step")
        images, labels = element["source"]
        for hook in source_hooks:
            images, labels = hook(images, labels, step=step)
        element["source"] = (images, labels)
        for hook in target_hooks if "target" in element else ():
            element["target"] = hook(element["target"], step=step)
        return element

    return dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _with_step(hook):
    """``hook`` called with ``step=``, also when it was written without that parameter (0.1 strategies)."""
    if "step" in inspect.signature(hook).parameters:
        return hook
    return lambda *args, step: hook(*args)


class ScheduleClock(keras.callbacks.Callback):
    """Sets where the schedules' progress counts from, once a BackupAndRestore backup (if any) is loaded.

    Appended after the user's callbacks, so the optimizer's step counter is the
    restored one: progress = (iterations - start) / planned, with start =
    iterations - steps the run had already done (0 for a new run).
    """

    def __init__(self, adapter, planned_steps, steps_done):
        super().__init__()
        self.adapter, self.planned_steps, self.steps_done = adapter, planned_steps, steps_done

    def on_train_begin(self, logs=None):
        iterations = int(self.adapter.optimizer.iterations.numpy())
        self.adapter.schedule_start.assign(float(iterations - self.steps_done))
        self.adapter.planned_steps.assign(float(self.planned_steps))


def flat_callbacks(callbacks):
    """``fit``'s ``callbacks`` as one flat list: nested lists and tuples, and the callbacks of a
    ``keras.callbacks.CallbackList`` (its guard was not seen as one: a second guard was added beside it,
    without the target probe or the end-of-fit check)."""
    flat = []
    for callback in keras.tree.flatten(callbacks or []):
        if isinstance(callback, keras.callbacks.CallbackList):
            flat.extend(flat_callbacks(list(callback.callbacks)))
        else:
            flat.append(callback)
    return flat


def fit_callbacks(adapter, callbacks, planned_steps, steps_done, *, stop_on_nonfinite, collapse_guard=True,
                  target_images=None, probe_batch_size=None, exported_target=None):
    """The collapse guard, the user's callbacks, the schedule clock, StopOnNonFinite (unless given or off), the strategies' own.

    The collapse guard (``collapse_guard``: True, False or a CollapseGuard; one in
    ``callbacks`` is used instead) comes first, so the user's callbacks see the
    restored weights and its ``adaptation_scale`` log at each epoch end. It is left
    out when no strategy adds a loss term (nothing to back off from) and for
    regression and segmentation (its statistics are class predictions per image).
    """
    if not isinstance(collapse_guard, (bool, CollapseGuard)):
        raise TypeError("Argument `collapse_guard` must be True, False or a da.callbacks.CollapseGuard; received "
                        f"{collapse_guard!r} of type {type(collapse_guard).__name__}.")
    given = [c for c in callbacks if isinstance(c, CollapseGuard)]
    guards = {id(g): g for g in given + ([collapse_guard] if isinstance(collapse_guard, CollapseGuard) else [])}
    if len(guards) > 1:  # all but one were dropped without a word
        raise ValueError(f"fit takes one da.callbacks.CollapseGuard; received {len(guards)} (in `callbacks` and/or "
                         "`collapse_guard`). Pass one, with the rules and thresholds you want.")
    callbacks = [c for c in callbacks if not isinstance(c, CollapseGuard)]
    guard = given[0] if given else (collapse_guard if isinstance(collapse_guard, CollapseGuard) else None)
    task = getattr(getattr(adapter, "task", None), "name", "classification")
    if task != "classification":
        # Its rules read class predictions and source accuracy, collected for classification only.
        if guard is not None:
            raise ValueError(f"da.callbacks.CollapseGuard watches class predictions and applies to task="
                             f"'classification' only; received one with task={task!r}. Remove it.")
    elif guard is None and collapse_guard is True and any(type(s).loss is not Strategy.loss for s in adapter.strategies):
        guard = CollapseGuard()
    if guard is not None:
        from domadapt.batchnorm import batchnorm_layers

        # A training BatchNormalization layer predicts with moving statistics that lag the weights (momentum
        # 0.99): on the foggy digits a probe with them saw collapsed outputs of healthy runs and rolled every
        # DANN, MMD and BNM run back (DANN 71.9% -> 57.9%). With bn_mode="domain" fit exports statistics
        # re-estimated on the target with the final weights: the probe is judged so too. Other modes export
        # the moving statistics; their models are judged on the training steps' predictions.
        # bn_mode="domain" re-estimates every BN layer on the target at fit's end, frozen ones included (a
        # frozen pretrained backbone judged with its source statistics was rolled back three times for a
        # one-class probe the exported model did not have).
        probe_batchnorm = []
        if getattr(adapter, "source_batchnorm_statistics", None):
            probe_batchnorm = adapter._batchnorm.layers  # noqa: SLF001
        elif any(layer.trainable for layer in batchnorm_layers(adapter)):
            target_images = None
        guard._watch_target(target_images, probe_batch_size, probe_batchnorm)  # noqa: SLF001 (the target rules' probe)
    callbacks = _with_exported_statistics(adapter, callbacks, exported_target)
    callbacks = [*([guard] if guard is not None else []), *callbacks, ScheduleClock(adapter, planned_steps, steps_done)]
    if stop_on_nonfinite and not any(isinstance(c, StopOnNonFinite) for c in callbacks):
        callbacks.append(StopOnNonFinite())
    for strategy in adapter.strategies:
        callbacks.extend(strategy.callbacks())
    if guard is not None:  # last: it judges the weights every other callback leaves (EarlyStopping restores there)
        callbacks.append(_FinalCollapseCheck(guard))
    return callbacks


class _FinalCollapseCheck(keras.callbacks.Callback):
    """Runs the collapse guard's end-of-fit check after every other callback's ``on_train_end``."""

    def __init__(self, guard):
        super().__init__()
        self.guard = guard

    def on_train_end(self, logs=None):
        self.guard.final_check()


# Callbacks that see the model as it trains, not as fit exports it: Keras' own bookkeeping, resumption
# (its backup is training state: the moving statistics included) and ours (which score exported
# statistics themselves or need none).
_TRAINING_STATE_CALLBACKS = (keras.callbacks.History, keras.callbacks.ProgbarLogger, keras.callbacks.BackupAndRestore,
                             CollapseGuard, StopOnNonFinite)


class _ExportedStatistics(keras.callbacks.Callback):
    """The user's callbacks, run at each epoch's end (and the training's) with the batch-norm statistics
    fit would export for the current weights (bn_mode="domain": re-estimated on the target), then put back.

    A training BatchNormalization layer's moving statistics lag its weights and mix what it saw:
    a ModelCheckpoint, an EarlyStopping on a target metric or a user's own evaluation would otherwise
    score (and save) a model that is not the one fit returns. Every other hook runs unchanged.
    """

    def __init__(self, callbacks, adapter, target_images):
        super().__init__()
        # A plain list, not a keras CallbackList: that one copies `logs`, and what a callback writes into them
        # (a metric for a later EarlyStopping, or for History) must reach the callbacks after it.
        self.callbacks = list(callbacks)
        self._adapter, self._target_images = adapter, target_images

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def _exported(self):
        return self._adapter._reestimated_batchnorm(None, self._target_images)  # noqa: SLF001

    def on_epoch_end(self, epoch, logs=None):
        with self._exported():
            for callback in self.callbacks:
                callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        with self._exported():
            for callback in self.callbacks:
                callback.on_train_end(logs)


def _delegate(hook):
    def call(self, *args, **kwargs):
        for callback in self.callbacks:
            getattr(callback, hook)(*args, **kwargs)

    call.__name__ = hook
    return call


for _hook in ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
              "on_test_end", "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
              "on_predict_batch_begin", "on_predict_batch_end"):
    setattr(_ExportedStatistics, _hook, _delegate(_hook))


def _uses_end_hooks(callback):
    """Whether ``callback`` does anything at an epoch's or the training's end (its own method, or a
    LambdaCallback's function): only those need the exported statistics, and each group costs a re-estimation."""
    return any(hook in vars(callback) or getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook)
               for hook in ("on_epoch_end", "on_train_end"))


def _with_exported_statistics(adapter, callbacks, exported_target):
    """``callbacks`` (a flat list: fit flattens nested ones, as Keras does) where each run of the user's own callbacks between
    the ones left as they are is grouped in an ``_ExportedStatistics``, in place, when fit exports statistics
    re-estimated on ``exported_target`` (bn_mode="domain" with a target); unchanged otherwise. A run in which no
    callback acts at an epoch's end is left as it is."""
    from domadapt.callbacks import ValidatorCheckpoint  # re-estimates the source's statistics too, itself

    if exported_target is None or not getattr(adapter, "source_batchnorm_statistics", None):
        return callbacks
    keep = _TRAINING_STATE_CALLBACKS + (ValidatorCheckpoint,)
    result, run = [], []

    def close_run():
        if any(_uses_end_hooks(callback) for callback in run):
            result.append(_ExportedStatistics(run, adapter, exported_target))
        else:
            result.extend(run)
        run.clear()

    for callback in callbacks:
        if isinstance(callback, keep):
            close_run()
            result.append(callback)
        else:
            run.append(callback)
    close_run()
    return result


def restored_epoch(callbacks):
    """The epoch a ``keras.callbacks.BackupAndRestore`` in ``callbacks`` will resume at (0 if none)."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            path = getattr(callback, "_training_metadata_path", None) or os.path.join(
                callback.backup_dir, "training_metadata.json"
            )
            if os.path.exists(path):
                with open(path) as file:
                    text = file.read()
                try:
                    return int(json.loads(text).get("epoch", 0))
                except (ValueError, AttributeError):
                    raise ValueError(
                        f"`callbacks`: the BackupAndRestore metadata {path!r} is unreadable ({text[:40]!r}): the "
                        "process was probably killed while keras.callbacks.BackupAndRestore rewrote it. Remove the "
                        "file to resume from its saved weights at epoch 0, or the folder to start afresh; "
                        "da.callbacks.BackupAndRestore replaces the file atomically and avoids this."
                    ) from None
    return 0


def reducible(logs):
    """Logs as Keras' TF trainer can reduce them under every tf.distribute strategy.

    Under MultiWorkerMirroredStrategy Keras reduces each log with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (also for a
    plain keras.Model in Keras 3.15); a leading axis of one makes it a plain mean.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def trainable_in_principle(model):
    """Variables created trainable (kernels, biases, BN scales), whether or not their layer is frozen now."""
    seen, variables = set(), []
    for layer in model._flatten_layers(include_self=True):
        for variable in getattr(layer, "_trainable_variables", []):
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def check_fit_arguments(source, epochs, target_labeled_weight, kwargs, *, seed=None, initial_epoch=0):
    """Clear errors for DomainAdapter.fit arguments that data.pair does not check."""
    check_seed(seed)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ValueError(f"Argument `initial_epoch` must be a non-negative integer; received "
                         f"initial_epoch={initial_epoch!r}.")
    if source is None:
        raise ValueError("Argument `source` is required: labeled source data (images, labels) or a dataset of them.")
    if isinstance(source, (np.ndarray, tf.Tensor)):
        raise TypeError(
            "Argument `source` must be (images, labels) or a dataset of them; received "
            f"{data.describe(source)}. Did you mean adapter.fit(source=(x, y), target=x_target)?"
        )
    for unsupported in ("x", "y", "sample_weight", "class_weight", "validation_split"):
        if unsupported in kwargs:
            raise TypeError(
                f"DomainAdapter.fit does not take `{unsupported}`: pass source=(images, labels) "
                "and target=images" + (" and validation_data=" if unsupported == "validation_split" else "") + "."
            )
    data.check_positive_int(epochs, "epochs")
    if isinstance(target_labeled_weight, bool) or not isinstance(target_labeled_weight, numbers.Real) or not (
        target_labeled_weight >= 0 and target_labeled_weight < float("inf")
    ):
        raise ValueError(
            f"Argument `target_labeled_weight` must be a non-negative number; received {target_labeled_weight!r}."
        )


def compile_arguments(loss, metrics, kwargs):
    """``(classification loss or None, user metric objects)`` from DomainAdapter.compile's arguments, checked."""
    for unsupported in ("loss_weights", "weighted_metrics"):
        if kwargs.get(unsupported) is not None:
            raise TypeError(
                f"DomainAdapter.compile does not support `{unsupported}`: each strategy takes a `weight=`."
            )
    if loss is not None:
        resolved = keras.losses.get(loss)
        if resolved is None:
            raise ValueError(f"Argument `loss`: unknown loss {loss!r}.")
        loss = resolved
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        raise TypeError(f"Argument `metrics` must be a list; received {metrics!r}.")
    return loss, [resolve_metric(m) for m in (metrics or [])]

def classification_loss(loss, labels, logits):
    """Mean classification loss: sparse cross-entropy from logits when ``loss`` is None, else ``loss(labels, probabilities)``."""
    labels = ops.cast(labels, "int32")
    if loss is None:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    else:
        probabilities = ops.softmax(logits, axis=-1)
        per_example = loss.call(labels, probabilities) if isinstance(loss, keras.losses.Loss) else loss(labels, probabilities)
    return ops.mean(ops.cast(per_example, "float32"))
