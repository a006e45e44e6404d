"""Collapse detection for DomainAdapter training: statistics kept in the graph, judged by a callback.

A strategy can destroy a model without any loss becoming NaN: every target image
lands in one class, the pooled features shrink to a point, source accuracy falls
back to chance. :class:`TrainingHealth` (``adapter.health``) accumulates, inside the
compiled train step and without host synchronisation, what is needed to see it:

* target predictions: the sum of the probabilities, of their entropies and the
  count of each predicted class (for :func:`prediction_collapse_reason`, the rule
  ``da.compare`` applies to trained candidates);
* pooled features (source and target): the mean over batches of the per-dimension
  batch variance;
* source batches: correct predictions and label counts (accuracy and chance level).

It also holds ``adaptation_scale``, a non-trainable scalar that multiplies every
strategy loss term in ``DomainAdapter.compute_loss_terms`` (1 by default), so the
guard can ramp the adaptation down without retracing the step.
``da.callbacks.CollapseGuard`` reads and resets the statistics at each epoch end
(or every ``check_every`` batches) and acts on a collapse.
"""

from __future__ import annotations

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from domadapt import _distribute
from domadapt import ops as da_ops

__all__ = ["CollapseGuard", "CollapseWarning", "TrainingHealth", "prediction_collapse_reason", "prediction_statistics"]


def prediction_collapse_reason(mean_probabilities, mean_entropy, top_class_share, threshold=0.01,
                               single_class_share=0.99):
    """Why target predictions count as collapsed, from their summary statistics, or ``None``.

    Collapse is a property of the outputs, not of the class balance: a collapsed
    model gives (nearly) the same output whatever the image. Two rules:

    * **uninformative outputs**: the mutual information between image and predicted
      class, I = H(mean_x p) - mean_x H(p) (the IM validator's score), is below
      ``threshold * log(num_classes)``. I = 0 for identical outputs on every image,
      confident or not, and for exactly uniform outputs. I is bounded by H(mean p),
      not by the class balance, so an accurate, confident model on an imbalanced
      target keeps it high (90/10, 95% confident: I = 0.30 log 2).
    * **one class for (almost) every image**: the argmax falls on one class for at
      least ``single_class_share`` of the images even though the outputs still vary.
      A target that truly holds >= 99% of one class cannot be told from this without
      labels; pass ``single_class_share=1.01`` to turn it off.

    ``da.compare`` (``collapse_reason``, on predicted probabilities) and
    ``da.callbacks.CollapseGuard`` (on statistics accumulated during training) both
    decide with this function.

    Args:
        mean_probabilities: ``(num_classes,)`` mean predicted probabilities.
        mean_entropy: mean entropy H(p) of the predictions, in nats.
        top_class_share: share of images whose argmax is the most frequent class.
        threshold: minimum I as a fraction of log(num_classes).
        single_class_share: maximum share of images predicted as one class.

    Returns:
        A sentence saying why, or ``None``.

    Example:

    ```python
    from domadapt.health import prediction_collapse_reason
    print(prediction_collapse_reason([0.5, 0.5], mean_entropy=0.693, top_class_share=0.5))  # uniform
    print(prediction_collapse_reason([0.86, 0.14], mean_entropy=0.199, top_class_share=0.9))  # None
    ```
    """
    mean_probabilities = np.asarray(mean_probabilities, dtype=np.float64)
    num_classes = max(mean_probabilities.shape[-1], 2)
    clipped = np.clip(mean_probabilities, 1e-12, 1.0)
    information = float(-np.sum(mean_probabilities * np.log(clipped))) - float(mean_entropy)
    normalised = information / math.log(num_classes)
    if normalised < threshold:
        kind = "near-uniform" if mean_entropy > 0.99 * math.log(num_classes) else "the same for every image"
        return (f"its target predictions collapse: outputs {kind}, information I(image; class) = "
                f"{normalised:.3g} log K < {threshold} log K")
    if top_class_share >= single_class_share:
        return f"its target predictions collapse onto one class ({top_class_share:.1%} of target images)"
    return None


def prediction_statistics(probabilities):
    """``(mean probabilities, mean entropy in nats, top-class share)`` of ``(num_images, num_classes)`` predictions:
    what :func:`prediction_collapse_reason` reads (``da.compare`` and the collapse guard's probe)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    entropy = np.asarray(da_ops.entropy(probabilities), dtype=np.float64)
    return probabilities.mean(axis=0), float(entropy.mean()), float(counts.max() / len(probabilities))


class TrainingHealth(keras.layers.Layer):
    """In-graph statistics of the train step for collapse detection, and the adaptation scale.

    ``DomainAdapter`` owns one (``adapter.health``): its train step calls
    :meth:`update` once per step and multiplies every strategy loss term by
    ``adaptation_scale``. Under ``tf.distribute`` the sums add over replicas.

    Attributes:
        adaptation_scale: float32 scalar multiplying every strategy loss term (1: as
            configured; 0: strategies off).
        num_classes: length of the class-count vectors.

    Example:

    ```python
    import numpy as np, domadapt as da
    from domadapt.strategy import Step
    health = da.health.TrainingHealth(num_classes=3)
    logits = np.array([[4.0, 0, 0], [0, 4.0, 0]], "float32")
    health.update(Step(source_labels=np.array([0, 0]), source_logits=logits, source_features=logits,
                       target_logits=logits, target_features=logits))
    print(health.read())  # source accuracy 0.5, two predicted classes, ...
    ```
    """

    def __init__(self, num_classes, name="training_health", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.adaptation_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="adaptation_scale",
                                                aggregation="only_first_replica")
        # Each replica adds the all-reduced (global) step statistics to its copy, the copies
        # stay equal and reads take the first: "only_first_replica". (aggregation="sum" would
        # be wrong: Keras turns assign_add into an assign of var + x summed over replicas,
        # which doubled the counts every step under MirroredStrategy.)
        vector = dict(shape=(self.num_classes,), initializer="zeros", trainable=False, aggregation="only_first_replica")
        scalar = dict(shape=(), initializer="zeros", trainable=False, aggregation="only_first_replica")
        self.target_probability_sum = self.add_weight(name="target_probability_sum", **vector)
        self.target_predicted_counts = self.add_weight(name="target_predicted_counts", **vector)
        self.source_label_counts = self.add_weight(name="source_label_counts", **vector)
        self.target_entropy_sum = self.add_weight(name="target_entropy_sum", **scalar)
        self.target_count = self.add_weight(name="target_count", **scalar)
        self.source_correct = self.add_weight(name="source_correct", **scalar)
        self.source_count = self.add_weight(name="source_count", **scalar)
        self.feature_variance_sum = self.add_weight(name="feature_variance_sum", **scalar)
        self.feature_batches = self.add_weight(name="feature_batches", **scalar)
        self.term_names = ()  # the strategy loss terms of the step (set at trace time)
        self.built = True

    @property
    def statistics(self):
        """The accumulators (every variable but ``adaptation_scale``)."""
        return [v for v in self.weights if v is not self.adaptation_scale]

    def update(self, step):
        """Add one step's statistics (a :class:`domadapt.strategy.Step`); no gradient, no host sync."""
        k = self.num_classes
        updates = []  # (variable, this replica's value): summed over replicas in ONE all-reduce below
        logits = ops.stop_gradient(ops.cast(step.source_logits, "float32"))
        labels = ops.cast(ops.reshape(step.source_labels, (-1,)), "int32")
        updates += [(self.source_correct, ops.sum(ops.cast(ops.equal(ops.argmax(logits, axis=-1), labels), "float32"))),
                    (self.source_count, ops.cast(ops.shape(labels)[0], "float32")),
                    (self.source_label_counts, ops.sum(ops.one_hot(labels, k), axis=0))]
        features = [step.source_features]
        if step.target_logits is not None:
            probabilities = ops.softmax(ops.stop_gradient(ops.cast(step.target_logits, "float32")), axis=-1)
            updates += [(self.target_probability_sum, ops.sum(probabilities, axis=0)),
                        (self.target_predicted_counts, ops.sum(ops.one_hot(ops.argmax(probabilities, axis=-1), k), axis=0)),
                        (self.target_entropy_sum, ops.sum(da_ops.entropy(probabilities))),
                        (self.target_count, ops.cast(ops.shape(probabilities)[0], "float32"))]
            features.append(step.target_features)
        features = ops.stop_gradient(ops.cast(ops.concatenate([f for f in features if f is not None], axis=0), "float32"))
        # Per-batch variance (centred on the batch), averaged: stable where sum/sum-of-squares
        # would cancel. Under tf.distribute each replica's variance of its slice, averaged.
        updates += [(self.feature_variance_sum, ops.mean(ops.var(features, axis=0)) / _distribute.replica_count()),
                    (self.feature_batches, ops.convert_to_tensor(1.0 / _distribute.replica_count(), "float32"))]
        flat = [ops.reshape(ops.cast(value, "float32"), (-1,)) for _, value in updates]
        summed = _distribute.replica_sum(ops.concatenate(flat, axis=0))  # one collective per step, not nine
        offset = 0
        for variable, value in updates:
            size = int(np.prod(variable.shape))
            variable.assign_add(ops.reshape(summed[offset:offset + size], variable.shape))
            offset += size

    def read(self):
        """The statistics since the last :meth:`reset`, as Python numbers (one small device-to-host read).

        Returns ``{"source_accuracy", "source_chance", "feature_std", "target_mean_probabilities",
        "target_mean_entropy", "target_top_class_share", "num_source", "num_target"}`` (``None``
        where nothing was counted).
        """
        values = {v.name: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64) for v in self.statistics}
        num_source, num_target = float(values["source_count"]), float(values["target_count"])
        batches = float(values["feature_batches"])
        return {
            "num_source": num_source, "num_target": num_target,
            "source_accuracy": float(values["source_correct"]) / num_source if num_source else None,
            "source_chance": float(values["source_label_counts"].max()) / num_source if num_source else None,
            "feature_std": math.sqrt(max(float(values["feature_variance_sum"]) / batches, 0.0)) if batches else None,
            "target_mean_probabilities": values["target_probability_sum"] / num_target if num_target else None,
            "target_mean_entropy": float(values["target_entropy_sum"]) / num_target if num_target else None,
            "target_top_class_share": float(values["target_predicted_counts"].max()) / num_target if num_target else None,
        }

    def reset(self):
        """Zero the statistics (not the scale)."""
        for variable in self.statistics:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def call(self, *args, **kwargs):
        raise NotImplementedError("TrainingHealth is used through update(), not called on tensors.")


# An adversarial strategy's discriminator right on this share of an epoch's images when a collapse is
# caught: the guard's warning adds that its reversed gradient vanishes (on the suite's fog shift DANN's
# domain loss reached 0.005 unguarded, about every image told apart).
SATURATED_DISCRIMINATOR_ACCURACY = 0.95


class CollapseWarning(UserWarning):
    """Training collapsed (see :class:`CollapseGuard`)."""


class CollapseGuard(keras.callbacks.Callback):
    """Detect a collapse during ``DomainAdapter.fit``, name the adaptation terms, and back off.

    ``DomainAdapter.fit`` adds one by default (``collapse_guard=True``) whenever a
    strategy adds a loss term. At each epoch end (and every ``check_every`` batches
    if given) it reads the statistics the train step accumulated in the graph
    (:class:`TrainingHealth`: one small device-to-host read, no per-step sync) and
    calls the period collapsed when

    * the target predictions collapse (:func:`prediction_collapse_reason`: image-class
      information I < ``information_threshold`` log K, exactly uniform outputs
      included, or one class for >= ``single_class_share`` of the target images)
      (the information part only after an earlier period of this fit, warm-up
      included, in which they did not collapse: predictions never informative but
      spread over classes are a model still learning the target, as a batch-norm CNN
      at Adam 1e-3 on foggy digits for its first 60 steps, not a strategy's doing;
      one class for >= ``single_class_share`` counts from the start only when the
      training steps' predictions show it too: after the first epoch an unadapted
      model's probe is often one class while its steps spread, as on the demo's rain);
    * the target predictions drift onto one class: the most predicted class takes at
      least ``drift_share`` of the target images and at least ``drift_ratio`` times
      the lowest such share seen earlier in this fit (warm-up included). The
      alignment strategies' typical failure (DANN on a colour-cast shift: a third to
      two thirds of the targets in one class, accuracy 75% -> 23%) stays far below
      the 99% of the rule above. A shift that by itself concentrates predictions
      (fog) does so from the first epoch, so the ratio does not fire; a target whose
      classes are truly that imbalanced and that the model only learns to predict
      late can trip it: pass ``drift_ratio=None`` there;
    * the target predictions pile onto one class without confidence: the most
      predicted class takes at least ``uncertain_share`` of the target images while
      the mean prediction entropy is at least ``uncertain_entropy`` log K (for 10
      classes: the top class holds ~80% of the probability or less on average),
      after an earlier period of this fit with a lower share. An accurate model on
      a target that truly holds 90% of one class is confident on those images; a
      strategy that drags uncertain targets into one class is not (CDAN, CORAL and
      AdaMatch on the suite's fog shift: 95-99% in one class at 0.50-0.58 log K,
      below the 18-21% accuracy of no adaptation). Like the drift rule, it is for
      the case the ratio cannot see: a shift that already concentrates the
      predictions before any strategy acts;
    * the pooled features' standard deviation over the batch (source and target,
      averaged over dimensions) falls below ``feature_std_ratio`` times the largest
      seen in this fit, or below 1e-6;
    * source training accuracy is still within 2 points of chance (the majority
      class share) after the second epoch, or has lost more than ``source_drop``
      of its best gain over chance (and at least 5 points).

    The target-prediction rules (all but the drift rule, whose thresholds were
    chosen on the training steps' statistics) judge the model as it stands at the check: its
    predictions (inference mode, as exported) on up to ``probe_size`` evenly spaced
    images of an array target, one forward pass per check. The statistics of the
    training steps average over a period in which the weights move: on a shift
    whose predictions swing from step to step (the suite's fog: 34% to 88% of
    target images in one class from one 6-step window to the next), the model fit
    returns can sit far from that average (CDAN: 85% in one class on average over
    its last epoch, 98% at its end; AdaMatch: 63% and 98%). With a training
    BatchNormalization layer and ``bn_mode="domain"`` (the default), the probe is
    predicted with batch-norm statistics re-estimated on it with the current weights,
    as ``fit`` exports the model (the moving statistics lag the weights: DANN on the
    batch-norm CNN's fog put 100% of target images in one class with them at the
    first epoch ends, 33-35% with re-estimated ones). A dataset target,
    ``probe_size=None`` and a training BatchNormalization layer under another
    ``bn_mode`` (whose exported model uses the lagging moving statistics) are judged
    on the training steps' predictions.

    When ``fit`` ends (after the other callbacks), the model it returns is judged once more on the probe: one
    class for at least ``single_class_share`` of the probed target images is a
    collapse there whatever the training steps showed (the rules above excuse it
    early in a fit, where it is often an unadapted model's snapshot). With
    ``back_off`` the weights of the last healthy epoch end whose probe was spread
    over classes are restored (a second snapshot is kept in host memory when it is
    not the last healthy one; epoch ends after the strategies were switched off count
    too); without one, or with ``back_off=False``, it warns only. Without a probe (a
    dataset target, ``probe_size=None``, a training BatchNormalization layer under
    ``bn_mode="joint"``/``"separate"``) there is no end-of-fit check. Called by hand
    after ``fit``, a restore keeps the restored moving statistics (``fit`` re-estimates
    them only at its own end).

    Nothing is judged during the first ``warmup_steps`` steps of a ``fit`` (an
    untrained model's outputs are uninformative and its accuracy is chance; on
    data it cannot learn it stays so, and that is no strategy's doing), but the
    references (largest feature std, best source accuracy) include them.

    On a collapse it warns (:class:`CollapseWarning`) with the reasons and the
    strategy loss terms and their mean values over the period, and, when
    ``back_off`` is on, restores the weights and optimizer state of the last healthy
    epoch end (one where no rule fired, warm-up included; kept in host memory; the
    weights ``fit`` started from before the first) and halves ``adapter.health.adaptation_scale``, the factor of
    every strategy term; the ``max_collapses``-th collapse sets it to 0 and says the
    strategies are off for the rest of this ``fit``. Each ``fit`` starts at scale 1.
    The scale in effect after each epoch's check is logged as ``adaptation_scale``
    (it appears in the ``History``); ``events`` lists every collapse caught.
    Validation metrics of an epoch are computed before the check, on the weights
    before any restore.

    The thresholds were chosen on Fashion-MNIST -> rendered rain (GroupNorm CNN,
    3 seeds, see tests/test_health.py and the note of issue #13): no healthy run of
    any default strategy came near them; collapsed runs were far past them.

    Args:
        back_off: restore and ramp down (default) or only warn.
        max_collapses: the collapse that switches the strategies off (scale 0).
        check_every: also check every this many batches (``None``: at epoch ends only).
        warmup_steps: optimizer steps of a fit before the first judgement.
        information_threshold, single_class_share: the target-prediction rule.
        feature_std_ratio: the feature rule, relative to the largest std seen.
        source_drop: the share of its best gain over chance source accuracy may lose.
        drift_share, drift_ratio: the drift rule (``drift_ratio=None`` turns it off).
        uncertain_share, uncertain_entropy: the uncertain-pile-up rule (entropy as a
            fraction of log K; ``uncertain_share`` above 1 turns it off).
        probe_size: target images whose predictions the target rules judge (``None``:
            the training steps' predictions).

    Attributes:
        events: one dict per collapse caught: ``epoch``, ``batch`` (``None`` at an
            epoch end), ``reasons``, ``terms`` ({name: mean value}), ``scale`` (after).

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD()])
    adapter.compile(optimizer="adam")
    guard = da.callbacks.CollapseGuard(max_collapses=2)
    xs, ys = np.random.rand(64, 2), np.random.randint(0, 2, 64)
    history = adapter.fit(source=(xs, ys), target=np.random.rand(64, 2), epochs=2, verbose=0, collapse_guard=guard)
    print(history.history["adaptation_scale"], guard.events)
    ```
    """

    def __init__(self, back_off=True, max_collapses=3, check_every=None, *, warmup_steps=50,
                 information_threshold=0.01, single_class_share=0.99, feature_std_ratio=0.01, source_drop=0.5,
                 drift_share=0.35, drift_ratio=2.0, uncertain_share=0.9, uncertain_entropy=0.45, probe_size=512):
        super().__init__()
        if not isinstance(back_off, bool):
            raise TypeError(f"Argument `back_off` must be True or False; received {back_off!r}.")
        for name, value, low in (("max_collapses", max_collapses, 1), ("check_every", check_every, 1),
                                 ("warmup_steps", warmup_steps, 0)):
            if name == "check_every" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a positive" if low else "a non-negative"
                raise ValueError(f"Argument `{name}` must be {kind} integer; received {name}={value!r}.")
        for name, value in (("information_threshold", information_threshold), ("feature_std_ratio", feature_std_ratio),
                            ("source_drop", source_drop)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(f"Argument `{name}` must be a number in [0, 1]; received {name}={value!r}.")
        if isinstance(single_class_share, bool) or not isinstance(single_class_share, numbers.Real) or not (
                0 < single_class_share):
            raise ValueError("Argument `single_class_share` must be a positive number (above 1 turns the rule off); "
                             f"received single_class_share={single_class_share!r}.")
        self.back_off, self.max_collapses, self.check_every = back_off, max_collapses, check_every
        self.warmup_steps = warmup_steps
        self.information_threshold, self.single_class_share = float(information_threshold), float(single_class_share)
        self.feature_std_ratio, self.source_drop = float(feature_std_ratio), float(source_drop)
        if isinstance(drift_share, bool) or not isinstance(drift_share, numbers.Real) or not 0 < drift_share <= 1:
            raise ValueError(f"Argument `drift_share` must be a number in (0, 1]; received drift_share={drift_share!r}.")
        if drift_ratio is not None and (isinstance(drift_ratio, bool) or not isinstance(drift_ratio, numbers.Real)
                                        or not drift_ratio > 1):
            raise ValueError(f"Argument `drift_ratio` must be a number > 1 or None; received drift_ratio={drift_ratio!r}.")
        if isinstance(uncertain_share, bool) or not isinstance(uncertain_share, numbers.Real) or not uncertain_share > 0:
            raise ValueError("Argument `uncertain_share` must be a positive number (above 1 turns the rule off); "
                             f"received uncertain_share={uncertain_share!r}.")
        if (isinstance(uncertain_entropy, bool) or not isinstance(uncertain_entropy, numbers.Real)
                or not 0 <= uncertain_entropy <= 1):
            raise ValueError("Argument `uncertain_entropy` must be a number in [0, 1] (a fraction of log K); "
                             f"received uncertain_entropy={uncertain_entropy!r}.")
        self.uncertain_share, self.uncertain_entropy = float(uncertain_share), float(uncertain_entropy)
        if probe_size is not None and (isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 2):
            raise ValueError(f"Argument `probe_size` must be an integer >= 2 or None; received probe_size={probe_size!r}.")
        self.probe_size = probe_size
        self._target_probe, self._probe_batch_size = None, 256
        self.drift_share = float(drift_share)
        self.drift_ratio = None if drift_ratio is None else float(drift_ratio)
        self.events = []
        self._reset_run()

    def get_config(self):
        return {"back_off": self.back_off, "max_collapses": self.max_collapses, "check_every": self.check_every,
                "warmup_steps": self.warmup_steps,
                "information_threshold": self.information_threshold, "single_class_share": self.single_class_share,
                "feature_std_ratio": self.feature_std_ratio, "source_drop": self.source_drop,
                "drift_share": self.drift_share, "drift_ratio": self.drift_ratio,
                "uncertain_share": self.uncertain_share, "uncertain_entropy": self.uncertain_entropy,
                "probe_size": self.probe_size}

    def _watch_target(self, target_images, batch_size=None, batchnorm_layers=()):
        """``DomainAdapter.fit`` passes the target images its steps use: an array gives the probe, anything
        else none; the probe is predicted in batches of the fit's target batch size (memory as in training).
        ``batchnorm_layers``: BN layers whose statistics fit re-estimates on the target at its end
        (``bn_mode="domain"``); the probe is judged with statistics re-estimated on it, as fit would export."""
        self._target_probe = None
        self._probe_batch_size = batch_size or 256
        self._probe_batchnorm = list(batchnorm_layers)
        if self.probe_size is not None and isinstance(target_images, np.ndarray) and len(target_images) >= 2:
            count = min(self.probe_size, len(target_images))
            self._target_probe = target_images[np.unique(np.linspace(0, len(target_images) - 1, count).round().astype(int))]

    def _probe_predictions(self):
        """The probe's predicted probabilities with the current weights, as fit would export the model."""
        if self._probe_batchnorm:
            return self._predict_with_reestimated_statistics()
        return self.model.predict(self._target_probe, batch_size=self._probe_batch_size, verbose=0)

    def _probe_statistics(self, statistics):
        """``statistics`` with its target part measured on the probe, with the current weights."""
        probabilities = self._probe_predictions()
        mean, entropy, share = prediction_statistics(probabilities)
        self._probe_share = share
        return {**statistics, "num_target": float(len(probabilities)),
                "steps_target_top_class_share": statistics["target_top_class_share"],
                "target_mean_probabilities": mean, "target_mean_entropy": entropy, "target_top_class_share": share}

    def _predict_with_reestimated_statistics(self):
        """The probe's predictions with batch-norm statistics of the current weights, re-estimated on the probe
        (``DomainAdapter._reestimated_batchnorm``, which puts the moving ones back: training continues as
        without the guard).

        The moving statistics lag the weights (momentum 0.99: after 60 steps 55% of their weight is still
        the initial 0 and 1); fit re-estimates them with the final weights, so that is the model to judge
        (DANN on the batch-norm CNN's fog, seed 2: 100% of target images in one class with the moving
        statistics at the first two epoch ends, 33-35% with re-estimated ones).
        """
        with self.model._reestimated_batchnorm(None, self._target_probe, batch_size=self._probe_batch_size):  # noqa: SLF001
            return self.model.classifier.predict(self._target_probe, batch_size=self._probe_batch_size, verbose=0)

    def _reset_run(self):
        self._healthy = None  # (epoch, model values, optimizer values) of the last healthy epoch end
        # (epoch, model values, optimizer values, top-class share) of the last healthy epoch end whose probed
        # target predictions were spread over classes: what the end-of-fit check restores (often _healthy itself)
        self._spread = None
        self._probe_share = None  # top-class share of the probe at the last check (None: no probe then)
        self._last_logs = {}  # the last epoch's logs (the end-of-fit check's advice reads its discriminators)
        self._largest_feature_std = 0.0
        self._best_source_accuracy = None
        self._lowest_top_class_share = None  # of the training steps' predictions (the drift rule)
        self._lowest_probe_share = None  # of the judged predictions (the uncertain pile-up rule)
        self._predictions_were_healthy = False
        self._epochs_done = 0
        self._epoch = 0
        self._steps = 0

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, logs=None):
        health = getattr(self.model, "health", None)
        if not isinstance(health, TrainingHealth):
            raise TypeError("CollapseGuard watches a da.DomainAdapter's train step; received a model without "
                            "`health` (a plain keras.Model has no strategies to back off from).")
        self.events = []
        self._reset_run()
        health.reset()
        health.adaptation_scale.assign(1.0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._healthy is None:  # after every on_train_begin, so a BackupAndRestore backup is loaded
            self._healthy = (None, *self._snapshot())

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.check_every is not None and (batch + 1) % self.check_every == 0:
            self._check(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        healthy = self._check(epoch, None, logs)
        self._epochs_done += 1
        if healthy and self.back_off:
            share = self._probe_share
            if share is None and self._target_probe is not None and self.single_class_share <= 1:
                # not judged at this epoch end (a check_every batch check read the period; or the strategies
                # are off): the end-of-fit check still needs to know whether these weights spread the target
                share = prediction_statistics(self._probe_predictions())[2]
            spread = share is not None and share < self.single_class_share
            if self._scale() > 0 or spread:  # after the switch-off, source-only epochs are restore points too
                snapshot = (epoch, *self._snapshot())
                if self._scale() > 0:
                    self._healthy = snapshot
                if spread:
                    self._spread = (*snapshot, share)
        if logs is not None:
            logs["adaptation_scale"] = self._scale()
        self._last_logs = dict(logs or {})

    def final_check(self):
        """Judge the model fit returns: one class for >= ``single_class_share`` of the probed target images is
        a collapse whatever the training steps showed; restore the last spread epoch end, or say none was.

        ``DomainAdapter.fit`` calls it after every other callback's ``on_train_end`` (an
        ``EarlyStopping(restore_best_weights=True)`` restores its epoch there), before it re-estimates
        batch-norm statistics.

        The rules above let a one-class probe pass while the training steps' predictions spread, and an
        uncertain pile-up that was there from the first judgement: early in a fit that is an unadapted model
        (the demo's rain after one epoch). At the end it is the model the user gets. A DANN variant trained
        with a confusion loss at weight 1 on the suite's fog put 100% of the probe in one class at four of
        its five epoch ends while its steps spread (37-64%), and fit returned it, 11% accurate, without a word.
        """
        if self._target_probe is None or self.single_class_share > 1 or getattr(self.model, "health", None) is None:
            return
        # The warm-up excuses an untrained model: steps of earlier fits count (a resumed fit's are few).
        if max(self._steps, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))) < self.warmup_steps:
            return
        _, _, share = prediction_statistics(self._probe_predictions())
        if share < self.single_class_share:
            return
        epoch = max(self._epoch, 0)
        message = (f"CollapseGuard: at the end of training the model puts {share:.1%} of the target images probed "
                   f"({len(self._target_probe)}) in one class")
        spread = self._spread
        if self.back_off and spread is not None:
            spread_epoch, model_values, optimizer_values, spread_share = spread
            self._restore(model_values, optimizer_values)
            message += (f". Restored the weights of epoch {spread_epoch + 1}, the last epoch end whose predictions "
                        f"spread over classes ({spread_share:.1%} in its top class).")
        else:
            message += (". back_off=False: nothing changed." if not self.back_off else
                        ". No epoch end of this fit spread them either: the shift itself may do this (a model "
                        "trained without adaptation would show it too), or the target truly holds one class "
                        "(pass single_class_share=1.01 then).")
        if spread is None or not self.back_off:
            message += self._adversarial_advice(self._last_logs)
        self.events.append({"epoch": epoch, "batch": None, "reasons": [f"at the end of training {share:.1%} of the "
                            "target images probed in one class"], "terms": {}, "scale": self._scale()})
        warnings.warn(message, CollapseWarning, stacklevel=2)

    # ------------------------------------------------------------------ rules
    def collapse_reasons(self, statistics, epochs_done):
        """The reasons (sentences) why the period of ``statistics`` (``TrainingHealth.read()``) collapsed; [] if none.

        ``epochs_done``: completed epochs of this fit before this period's end.
        Updates the running references (largest feature std, best source accuracy,
        lowest top-class share).
        """
        reasons = []
        if statistics["num_target"]:
            share = statistics["target_top_class_share"]
            reason = prediction_collapse_reason(statistics["target_mean_probabilities"],
                                                statistics["target_mean_entropy"], share,
                                                self.information_threshold, self.single_class_share)
            # Outputs that were never informative in this fit, while still spread over classes (a
            # model still learning the target), are no strategy's doing: that part of the rule judges
            # a fall from healthy predictions, as the drift rule does. One class for every image counts always
            # when the training steps saw it too; a probe alone is one snapshot, and after the first epoch
            # an unadapted model's snapshot is often one class (the demo's rain: 100% on the probe, 35% over
            # the epoch's steps, for source-only, DANN, MMD and CORAL alike).
            steps_share = statistics.get("steps_target_top_class_share", share)  # = share without a probe
            single_class = share >= self.single_class_share and steps_share >= self.single_class_share
            if reason is not None and (self._predictions_were_healthy or single_class):
                reasons.append(reason.replace("its target predictions", "target predictions"))
            self._predictions_were_healthy = self._predictions_were_healthy or reason is None
            # The drift rule reads the training steps' predictions, the statistics its thresholds were chosen on:
            # one probe is a snapshot, and snapshots swing (CORAL on the brightness-shifted digits: 61% against
            # 29% at one check, 50% accuracy at the end without a back-off, 46% with it).
            drift_share = steps_share
            lowest = self._lowest_top_class_share
            if (reason is None and self.drift_ratio is not None and lowest is not None
                    and drift_share >= max(self.drift_share, self.drift_ratio * lowest)):
                reasons.append(f"target predictions drift onto one class: {drift_share:.0%} of target images, against "
                               f"{lowest:.0%} earlier in this fit")
            self._lowest_top_class_share = drift_share if lowest is None else min(lowest, drift_share)
            lowest = self._lowest_probe_share
            num_classes = max(len(statistics["target_mean_probabilities"]), 2)
            entropy = statistics["target_mean_entropy"] / math.log(num_classes)
            if (reason is None and not reasons and lowest is not None and lowest < self.uncertain_share
                    and share >= self.uncertain_share and entropy >= self.uncertain_entropy):
                reasons.append(f"target predictions pile onto one class without confidence: {share:.0%} of target "
                               f"images at a mean entropy of {entropy:.2f} log K (against {lowest:.0%} in one class "
                               "earlier in this fit)")
            self._lowest_probe_share = share if lowest is None else min(lowest, share)
        feature_std = statistics["feature_std"]
        if feature_std is not None:
            self._largest_feature_std = max(self._largest_feature_std, feature_std)
            if feature_std < max(self.feature_std_ratio * self._largest_feature_std, 1e-6):
                reasons.append(f"pooled features vanish: std {feature_std:.2g} against {self._largest_feature_std:.2g} "
                               "earlier in this fit")
        accuracy, chance = statistics["source_accuracy"], statistics["source_chance"]
        if accuracy is not None:
            best = accuracy if self._best_source_accuracy is None else max(self._best_source_accuracy, accuracy)
            self._best_source_accuracy = best
            if epochs_done >= 1 and best <= chance + 0.02:
                reasons.append(f"source training accuracy {accuracy:.1%} never rose above chance ({chance:.1%})")
            elif best - accuracy > max(self.source_drop * (best - chance), 0.05):
                reasons.append(f"source training accuracy fell to {accuracy:.1%} from {best:.1%} (chance {chance:.1%})")
        return reasons

    def _check(self, epoch, batch, logs):
        """Judge the period since the last check; act on a collapse. True when no rule fired (a restore point)."""
        health = self.model.health
        statistics = health.read()
        health.reset()
        self._probe_share = None
        if not statistics["num_source"] or self._scale() == 0:
            return True
        if self._target_probe is not None:
            statistics = self._probe_statistics(statistics)
        reasons = self.collapse_reasons(statistics, self._epochs_done)
        if not reasons:
            return True
        if self._steps < self.warmup_steps:  # not judged yet (the references still follow), not healthy either
            return False
        terms = {name: float(logs[name]) for name in health.term_names if logs is not None and name in logs}
        terms = dict(sorted(terms.items(), key=lambda item: -abs(item[1])))
        where = f"epoch {epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
        named = ", ".join(f"{name} = {value:.4g}" for name, value in terms.items()) or "none reported"
        message = (f"CollapseGuard: training collapsed at {where}: {'; '.join(reasons)}. Adaptation loss terms "
                   f"(mean this epoch, largest first): {named}")
        if "cls_loss" in (logs or {}):
            message += f"; cls_loss = {float(logs['cls_loss']):.4g}"
        advice = self._adversarial_advice(logs)
        scale = self._scale()
        if self.back_off:
            healthy_epoch, model_values, optimizer_values = self._healthy
            self._restore(model_values, optimizer_values)
            collapses = len(self.events) + 1
            scale = 0.0 if collapses >= self.max_collapses else scale / 2
            health.adaptation_scale.assign(scale)
            restored = "the weights fit started from" if healthy_epoch is None else f"the weights of epoch {healthy_epoch + 1}"
            if scale == 0:
                message += (f". Collapse {collapses} of {self.max_collapses}: restored {restored} and switched the "
                            "adaptation terms off (adaptation_scale = 0): the rest of this fit trains source-only.")
            else:
                message += (f". Restored {restored} and halved every adaptation term (adaptation_scale = {scale:g}; "
                            f"collapse {collapses} of {self.max_collapses} before they are switched off).")
        else:
            message += ". back_off=False: nothing changed."
        message += advice
        self.events.append({"epoch": epoch, "batch": batch, "reasons": reasons, "terms": terms, "scale": scale})
        warnings.warn(message, CollapseWarning, stacklevel=2)
        return False

    def _adversarial_advice(self, logs):
        """What the adversarial strategies' discriminators did, and what to try instead, for a caught collapse.

        Adversarial alignment on domains far apart can pull the target onto a few source classes;
        a discriminator that tells the domains apart almost always also starves the features of
        reversed gradient (sigmoid saturation). Other weights rarely help: on the suite's fog shift
        DANN at weight 0.02-1 and with a larger discriminator reached 12.6-18.9% against 20.6%
        source-only, while MMD, information maximisation and histogram matching closed 72-88% of the gap.
        """
        from domadapt.strategies.base import AdversarialStrategy

        found = []
        for strategy, mapping in zip(self.model.strategies, self.model._log_names["per_strategy"]):  # noqa: SLF001
            if not isinstance(strategy, AdversarialStrategy):
                continue
            name = mapping.get(strategy.accuracy_name, strategy.accuracy_name)
            said = f"{type(strategy).__name__}'s discriminator told "
            if not logs or name not in logs:
                found.append(said + "the domains apart (accuracy not logged)")
                continue
            accuracy = float(logs[name])
            saturated = ", near-certain: its reversed gradient vanishes" if accuracy >= SATURATED_DISCRIMINATOR_ACCURACY else ""
            found.append(said + f"{accuracy:.0%} of this epoch's images' domains apart ({name}; 50% is confusion{saturated})")
        if not found:
            return ""
        return (f" {'; '.join(found)}. Adversarial alignment of domains this far apart tends to pull the target onto "
                "a few source classes, and other weights rarely help; try a distribution distance (da.MMD), an "
                "objective on the target's outputs (da.EntropyMinimization, da.BNM, da.MCC) or the target's "
                "appearance on the source first (da.MimicAugment.from_target(target_images, method='histogram')); "
                "da.select trains and compares candidates without target labels.")

    # ------------------------------------------------------------------ state
    def _scale(self):
        return float(keras.ops.convert_to_numpy(self.model.health.adaptation_scale))

    def _guarded_variables(self):
        """Model variables to restore (not the guards' own records nor the schedule clock) and optimizer slots."""
        model = self.model
        skip = {id(v) for v in model.health.weights}
        skip.update(id(v) for v in getattr(getattr(model, "nonfinite_guard", None), "weights", []))
        skip.update(id(getattr(model, name)) for name in ("planned_steps", "schedule_start") if hasattr(model, name))
        model_variables = [v for v in model.weights if id(v) not in skip]
        optimizer = model.optimizer
        optimizer_skip = {id(optimizer.iterations), id(getattr(optimizer, "_learning_rate", None))}
        optimizer_variables = [v for v in optimizer.variables if id(v) not in optimizer_skip]
        return model_variables, optimizer_variables

    def _snapshot(self):
        model_variables, optimizer_variables = self._guarded_variables()
        return ([keras.ops.convert_to_numpy(v) for v in model_variables],
                [keras.ops.convert_to_numpy(v) for v in optimizer_variables])

    def _restore(self, model_values, optimizer_values):
        model_variables, optimizer_variables = self._guarded_variables()
        if len(model_variables) != len(model_values) or len(optimizer_variables) != len(optimizer_values):
            warnings.warn("CollapseGuard: the model's variables changed since the last healthy epoch; weights not "
                          "restored.", CollapseWarning, stacklevel=3)
            return
        for variable, value in zip(model_variables + optimizer_variables, model_values + optimizer_values):
            variable.assign(value)
