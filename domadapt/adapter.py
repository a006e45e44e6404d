"""DomainAdapter: a Keras model that trains a backbone + head on labeled source data
and unlabeled target data, with pluggable adaptation strategies."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import _construction, _distribute, _training, data
from domadapt import tasks as _tasks
from domadapt.batchnorm import batchnorm_layers, reestimate, warn_if_few
from domadapt.health import TrainingHealth
from domadapt.nonfinite import NonFiniteGuard
from domadapt.strategy import (
    AdapterView, FitContext, Step, call_on_fit_start, check_requirements, flatten_strategies, loss_terms_of,
)

__all__ = ["DomainAdapter"]

# Images of each domain the batch-norm statistics are re-estimated on at the end of fit (bn_mode="domain").
REESTIMATION_IMAGES = 4096


@keras.saving.register_keras_serializable(package="domadapt")
class DomainAdapter(keras.Model):
    """A classifier, regressor or segmentation model (backbone + head) trained on labeled
    source and unlabeled target data.

    The backbone maps images to a feature map (global-average pooled) or a feature
    vector; a dense head (or ``head=``) maps features to logits. Each strategy adds
    its loss terms; the sum is minimised with one optimizer in one compiled step:

        loss = cls_loss(source) [+ target_cls_loss(target_labeled)] + sum_s strategy_s.loss(step)

    ``adapter.classifier`` is a plain functional ``keras.Model`` (images ->
    probabilities) sharing the trained weights, for deployment: it loads with
    ``keras.saving.load_model`` without domadapt.

    Args:
        backbone: any ``keras.Model``/layer mapping images (channels last) to a
            ``(batch, H, W, C)``-like feature map or a ``(batch, D)`` feature vector.
        num_classes: number of classes; builds a ``Dense(num_classes)`` head.
            May be omitted when ``head`` is given.
        strategies: a list of strategies, a ``da.Recipe`` or a single strategy.
            ``None`` or ``[]`` trains source-only.
        head: optional layer/model mapping features to **logits** (no softmax).
        preprocess: optional layer (or callable, wrapped in a Lambda layer) applied
            to images inside the model, e.g. ``keras.layers.Rescaling(1 / 255)``, so
            the exported classifier takes raw images.
        bn_mode: how BatchNormalization layers see the two domains.
            ``"domain"`` (default): each domain goes through the backbone on its own
            and keeps its own moving statistics (domain-specific batch norm, Chang et
            al. 2019): the model's track the target, the source's are kept in adapter
            weights. When ``fit`` ends, both are re-estimated with the final weights
            (:func:`domadapt.reestimate_batchnorm_statistics`, on up to
            ``REESTIMATION_IMAGES`` images each): ``classifier`` then carries the
            target's statistics (AdaBN, Li et al. 2016) and ``source_classifier`` the
            source's. Without ``fit(target=)`` the model keeps source statistics.
            ``"domain_affine"``: as ``"domain"``, and each domain also has its own
            scale and shift (gamma, beta) as in DSBN: the model's are trained on target
            batches (by the strategies' losses only, since target labels are absent),
            the source's are adapter weights trained on source batches;
            ``source_classifier`` carries them. Frozen BN layers share theirs.
            ``"joint"`` (before 0.2): one concatenated pass, statistics of the mixed
            batch, no re-estimation. ``"separate"``: one pass per domain through the
            same moving statistics, no re-estimation. Backbones without batch norm
            (GroupNorm, LayerNorm) behave the same in every mode.
        input_shape: image shape, needed only when the backbone does not define one.
        task: ``"classification"`` (default), ``"regression"``, ``"segmentation"`` or a
            :mod:`domadapt.tasks` object with options (``da.tasks.Segmentation(ignore_index=255,
            upsample_logits=True)``). Regression: float labels shaped like the head's
            output (default head ``Dense(1)``), no output activation, default loss mean
            squared error. Segmentation: the feature map goes unpooled into the head
            (default ``Conv2D(num_classes, 1)``), which outputs per-pixel logits; labels
            are masks ``(N, H, W)``; ``evaluate`` reports ``mean_iou``. Strategies always
            see pooled features; each strategy declares the tasks it supports
            (``Strategy.tasks``) and an unsupported pairing is a ValueError here.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3)])
    adapter = da.DomainAdapter(backbone, num_classes=3)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    xs, ys = np.random.rand(64, 8, 8, 1), np.random.randint(0, 3, 64)
    adapter.fit(source=(xs, ys), target=np.random.rand(32, 8, 8, 1), epochs=1, verbose=0)
    probabilities = adapter.predict(xs, verbose=0)
    ```
    """

    def __init__(self, backbone, num_classes=None, strategies=None, *, head=None, preprocess=None, bn_mode="domain",
                 input_shape=None, task="classification", name="domain_adapter", **kwargs):
        super().__init__(name=name, **kwargs)
        self.task = _tasks.get(task)
        self._default_head = head is None
        if self.task.name == "regression":
            # Dense(1); a ValueError if num_classes is given, with a head of your own too (it would be ignored).
            default_head = self.task.default_head(num_classes)
            head = default_head if head is None else head
        _construction.check_arguments(backbone, num_classes, head, preprocess, bn_mode)
        # === Layers ===
        self.backbone = backbone
        self.bn_mode = bn_mode
        self.image_shape = _construction.image_shape_of(backbone, input_shape)
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        if preprocess is not None and not isinstance(preprocess, keras.layers.Layer):
            preprocess = keras.layers.Lambda(preprocess, name="preprocess")
        self.preprocess = preprocess
        self.head = head if head is not None else self.task.default_head(num_classes)

        # === Functional models ===
        images = keras.Input(shape=self.image_shape, name="images")
        inputs = preprocess(images) if preprocess is not None else images
        self.logit_resizing = None
        if self.task.name == "segmentation":
            self.pooling, features, feature_map, logits, self.logit_resizing = self.task.build(
                backbone, inputs, self.head, num_classes, self.image_shape)
        else:
            self.pooling, features = _construction.pooled_features(backbone, inputs, self.image_shape)
            if self.task.name == "regression":
                logits = self.head(features)
                if not isinstance(logits, keras.KerasTensor) or len(logits.shape) < 1:
                    raise ValueError(f"Argument `head` must return one tensor (batch, ...) of predictions; it "
                                     f"returns {logits!r}.")
            else:
                logits = _construction.checked_logits(self.head, features, num_classes)
        self.feature_dim = int(features.shape[-1])
        # Per image: the head's output (regression) or the logits' (H, W, C) (segmentation); labels are checked on it.
        self.output_shape_per_image = tuple(logits.shape[1:])
        self.num_classes = None if self.task.name == "regression" else int(logits.shape[-1])
        if self.task.name == "regression":
            outputs = keras.layers.Activation("linear", dtype="float32", name="predictions")(logits)
        else:
            outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
        # Held outside Keras' attribute tracking: their layers are tracked above
        # already, and tracking them again would count every weight twice.
        self._functional = _construction.Untracked(
            feature_extractor=keras.Model(images, features, name="feature_extractor"),
            classifier=keras.Model(images, outputs, name="classifier"),
            # Validators read both outputs: one backbone pass (domadapt.validators.base.outputs).
            scorer=keras.Model(images, [outputs, features], name="scorer"),
            # Segmentation: images -> (pooled features, feature map), the head's input, in one backbone pass.
            encoder=keras.Model(images, [features, feature_map], name="encoder")
            if self.task.name == "segmentation" else None,
        )
        self._batchnorm = _construction.Untracked(layers=batchnorm_layers(self._functional.classifier))
        # Per-domain statistics: the source's moving mean and variance of every BN layer (saved with the adapter).
        self.source_batchnorm_statistics = []
        # bn_mode="domain_affine": the source's own scale (gamma) and shift (beta) too, trained on source batches;
        # one dict per BN layer, {"gamma": variable, "beta": variable} for the parameters the layer has.
        self.source_batchnorm_affine = []
        if bn_mode in ("domain", "domain_affine"):
            for index, layer in enumerate(self._batchnorm.layers):
                for statistic in (layer.moving_mean, layer.moving_variance):
                    variable = self.add_weight(shape=statistic.shape, initializer="zeros", trainable=False,
                                               dtype="float32", aggregation="mean",
                                               name=f"source_{statistic.name}_{index}")
                    variable.assign(ops.cast(statistic, "float32"))
                    self.source_batchnorm_statistics.append(variable)
                if bn_mode == "domain_affine":
                    affine = {}
                    for parameter in ("gamma", "beta"):
                        original = getattr(layer, parameter)
                        if original is not None:  # scale=False / center=False layers have none
                            affine[parameter] = self.add_weight(
                                shape=original.shape, initializer="zeros", trainable=True, dtype=original.dtype,
                                constraint=original.constraint, name=f"source_{parameter}_{index}")
                            affine[parameter].assign(original)
                    self.source_batchnorm_affine.append(affine)

        # === Strategies ===
        self.strategies = flatten_strategies(strategies)
        if len({id(s) for s in self.strategies}) != len(self.strategies):
            raise ValueError("Argument `strategies`: the same strategy object appears twice.")
        _tasks.check_strategies(self.strategies, self.task)
        for strategy in self.strategies:
            # A strategy holds the sub-models and state of its adapter (a discriminator, variables): in a second
            # adapter it trained the first one's models or shared its discriminator, and neither saved right.
            if getattr(strategy, "_domadapt_set_up", False):
                raise ValueError(f"Argument `strategies`: {type(strategy).__name__} {strategy.name!r} already belongs "
                                 "to another DomainAdapter (a strategy holds the sub-models and state its adapter "
                                 "trains). Give each adapter its own, e.g. a copy: "
                                 "type(strategy).from_config(strategy.get_config()).")
        for strategy in self.strategies:
            strategy.setup(self)
            strategy.built = True
            strategy._domadapt_set_up = True

        # === Training state ===
        # Schedules read progress p = (iterations - schedule_start) / planned_steps in
        # the graph, so they need no per-step Python; fit sets both (see its docstring).
        scalar = dict(shape=(), trainable=False, dtype="float32")
        self.planned_steps = self.add_weight(initializer="ones", name="planned_steps", **scalar)
        self.schedule_start = self.add_weight(initializer="zeros", name="schedule_start", **scalar)
        self.nonfinite_guard = NonFiniteGuard()
        # Collapse statistics (classification only) + adaptation_scale (every task); see da.health.
        self.health = TrainingHealth(self.num_classes or 1)
        self._log_names = _training.log_names_of(self.strategies)
        self._trackers = {name: (_training.LastValue(name=name) if kind == "last" else keras.metrics.Mean(name=name))
                          for name, kind in self._log_names["kinds"].items()}
        self._user_metrics, self._classification_loss, self._compile_arguments = [], None, {"loss": None, "metrics": []}
        self._structure_key, self._target_labeled_weight = None, 1.0
        self._parameter_groups = None  # installed by strategies (FineTune) for one fit
        self.built = True

    @property
    def classifier(self):
        """The deployable model (a plain functional keras.Model): images -> class probabilities;
        per-pixel probabilities ``(N, H, W, C)`` for segmentation; predictions for regression."""
        return self._functional.classifier

    @property
    def source_classifier(self):
        """The classifier with the source domain's batch-norm statistics (``bn_mode="domain"``).

        A new functional ``keras.Model`` on each access: it shares the adapter's layers
        except the BatchNormalization ones, which are copies carrying the source's
        moving statistics. Without separate source statistics (another ``bn_mode``, or
        no batch norm in the model) this is ``classifier`` itself.
        """
        if not self.source_batchnorm_statistics:
            return self.classifier
        originals = {id(layer) for layer in self._batchnorm.layers}

        def copy_batchnorm(layer):
            if id(layer) in originals:
                return layer.__class__.from_config(layer.get_config())
            return layer

        copy = keras.models.clone_model(self.classifier, clone_function=copy_batchnorm, recursive=True)
        copies = {layer.name: layer for layer in batchnorm_layers(copy) if id(layer) not in originals}
        if sorted(copies) != sorted(layer.name for layer in self._batchnorm.layers):
            raise RuntimeError("source_classifier: the batch-norm layers could not be copied (one sits inside a "
                               "subclassed model, or two share a name); use a functional backbone"
                               " with unique layer names.")
        with self._source_statistics():
            for original in self._batchnorm.layers:
                copies[original.name].set_weights(original.get_weights())
        return copy

    @contextlib.contextmanager
    def _source_statistics(self):
        """Within the block, the model's batch-norm layers carry the source statistics (and, with
        bn_mode='domain_affine', the source's scale and shift): validators use it. Values are swapped,
        so already-compiled predict functions see them."""
        if not self.source_batchnorm_statistics:
            yield
            return
        model_variables = self._batchnorm_statistics() + [v for v, _ in self._affine_pairs()]
        source_variables = self.source_batchnorm_statistics + [s for _, s in self._affine_pairs()]
        saved = [tf.identity(variable.value) for variable in model_variables]
        try:
            for variable, source in zip(model_variables, source_variables):
                variable.assign(ops.cast(source, variable.dtype))
            yield
        finally:
            for variable, value in zip(model_variables, saved):
                variable.assign(value)

    @contextlib.contextmanager
    def _reestimated_batchnorm(self, source, target_images, batch_size=64):
        """Within the block, the batch-norm statistics (the model's, the source's copies) are those of the current
        weights, re-estimated on ``source`` / ``target_images`` as fit's end exports them; put back afterwards.
        For callbacks that score the model during fit: the moving statistics lag the weights (bn_mode='domain')."""
        if not self.source_batchnorm_statistics or target_images is None:
            yield
            return
        variables = self._batchnorm_statistics() + list(self.source_batchnorm_statistics)
        saved = [tf.identity(variable.value) for variable in variables]
        try:
            if source is not None:
                self._reestimate_batchnorm(source, target_images)
            else:
                reestimate(self.classifier, self._batchnorm.layers, target_images, batch_size=batch_size,
                           max_images=REESTIMATION_IMAGES, argument="target")
            yield
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    def _batchnorm_statistics(self):
        return [s for layer in self._batchnorm.layers for s in (layer.moving_mean, layer.moving_variance)]

    def _affine_pairs(self, include_frozen=False):
        """(the layer's gamma/beta, the source's copy) of every trainable BN layer for bn_mode='domain_affine';
        empty otherwise. Frozen layers share their own parameters between the domains (as in the train step)."""
        return [(getattr(layer, parameter), variable)
                for layer, affine in zip(self._batchnorm.layers, self.source_batchnorm_affine)
                if layer.trainable or include_frozen
                for parameter, variable in affine.items()]

    def _share_frozen_affine(self):
        """Set the source copies of frozen BN layers to the layers' own gamma/beta (what both domains use while
        frozen), so a layer unfrozen later starts its source copy from them, not from stale values."""
        for layer, affine in zip(self._batchnorm.layers, self.source_batchnorm_affine):
            if not layer.trainable:
                for parameter, variable in affine.items():
                    variable.assign(ops.cast(getattr(layer, parameter), variable.dtype))

    @contextlib.contextmanager
    def _source_affine_in_graph(self):
        """While a train step is traced, every trainable BN layer reads the source's gamma/beta variables,
        so the source pass trains them (value swaps would send the gradients to the target's). Layers
        frozen now share the layer's own (pretrained) parameters."""
        swapped = []
        try:
            for layer, affine in zip(self._batchnorm.layers, self.source_batchnorm_affine):
                if not layer.trainable:
                    continue
                for parameter, variable in affine.items():
                    swapped.append((layer, parameter, getattr(layer, parameter)))
                    object.__setattr__(layer, parameter, variable)  # bypass Keras' tracking: a temporary alias
            yield
        finally:
            for layer, parameter, original in swapped:
                object.__setattr__(layer, parameter, original)

    @property
    def feature_extractor(self):
        """Images -> pooled backbone features (a functional keras.Model sharing the weights)."""
        return self._functional.feature_extractor

    # ------------------------------------------------------------------ config
    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {"name": self.name, "trainable": self.trainable, "backbone": serialize(self.backbone),
                "num_classes": self.num_classes, "strategies": [serialize(s) for s in self.strategies],
                "head": None if self._default_head else serialize(self.head), "preprocess": serialize(self.preprocess),
                "bn_mode": self.bn_mode, "input_shape": self._input_shape_arg,
                "task": keras.saving.serialize_keras_object(self.task)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        def deserialize(value):
            return keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)

        config = {key: deserialize(value) if key in ("backbone", "head", "preprocess") and value is not None else value
                  for key, value in config.items()}
        return cls(**{**config, "strategies": [deserialize(s) for s in config["strategies"]]})

    @property
    def metrics(self):
        metrics = []
        if self.compiled and self._loss_tracker is not None:
            metrics.append(self._loss_tracker)
        metrics.extend(self._trackers.values())
        metrics.extend(self._user_metrics)
        return metrics

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configure training, as ``keras.Model.compile``.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: the task's loss. ``None`` (default): sparse categorical
                cross-entropy from logits (per pixel for segmentation, ignored
                pixels left out), mean squared error for regression. Anything else
                is applied to ``(labels, probabilities)`` (``(labels, predictions)``
                for regression, e.g. ``"mae"``, ``"huber"``) and must return
                per-example (per-pixel) losses.
            metrics: metrics on ``(labels, probabilities)`` (``predictions`` for
                regression); ``"accuracy"`` means sparse categorical accuracy (per
                pixel for segmentation, which always adds ``mean_iou``).
            **kwargs: passed to ``keras.Model.compile`` (``jit_compile``, ...);
                not ``loss_weights``/``weighted_metrics`` (strategies take ``weight=``).
        """
        self._classification_loss, _ = _training.compile_arguments(loss, metrics, kwargs)
        self._user_metrics = self.task.resolve_metrics(list(metrics or []), self.num_classes)
        self._compile_arguments = {"loss": self._classification_loss, "metrics": list(metrics or [])}
        super().compile(optimizer=optimizer, loss=None, metrics=None, **kwargs)
        self._structure_key = None

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            config = dict(config)
            config["loss"] = keras.saving.serialize_keras_object(self._compile_arguments["loss"])
            config["metrics"] = keras.saving.serialize_keras_object(self._compile_arguments["metrics"])
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**{k: v for k, v in config.items() if k not in ("loss_weights", "weighted_metrics")})
        if self.optimizer is not None:
            # Build now so the saved optimizer state can be loaded into it.
            self.optimizer.build(_training.trainable_in_principle(self))

    # ------------------------------------------------------------------ forward
    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def _features_and_logits(self, batches, training):
        """Pooled features and head outputs (logits; per pixel for segmentation) for each batch (source
        first), in one backbone pass if bn_mode='joint'.

        With bn_mode='domain' in training, the source batch is normalised by its own
        statistics and updates the source's moving statistics; the model's own track
        the target batches (in a step without them, the source's). Stateful ops on one
        variable run in program order in a tf.function (also under XLA), so the swaps
        below are ordered.
        """
        batches = [ops.cast(b, "float32") for b in batches]
        if training and self.source_batchnorm_statistics:
            model_statistics = self._batchnorm_statistics()
            target_statistics = [tf.identity(variable.value) for variable in model_statistics]
            for variable, source in zip(model_statistics, self.source_batchnorm_statistics):
                variable.assign(source)
            with self._source_affine_in_graph():
                source_features, head_input = self._encode(batches[0], training)
                source_logits = self._decode(head_input, training)
            for variable, source in zip(model_statistics, self.source_batchnorm_statistics):
                source.assign(variable)
            for variable, value in zip(model_statistics, target_statistics if len(batches) > 1 else ()):
                variable.assign(value)
            encoded = [self._encode(b, training) for b in batches[1:]]
            features = [source_features] + [f for f, _ in encoded]
            logits = [source_logits] + [self._decode(h, training) for _, h in encoded]
        elif self.bn_mode == "joint" and len(batches) > 1:
            sizes = [ops.shape(b)[0] for b in batches]
            features, head_input = self._encode(ops.concatenate(batches, axis=0), training)
            logits = self._decode(head_input, training)
            features = tf.split(features, sizes, axis=0)
            logits = tf.split(logits, sizes, axis=0)
        else:
            encoded = [self._encode(b, training) for b in batches]
            features = [f for f, _ in encoded]
            logits = [self._decode(h, training) for _, h in encoded]
        return [ops.cast(f, "float32") for f in features], [ops.cast(z, "float32") for z in logits]

    def _encode(self, images, training):
        """``(pooled features, the head's input)``: the same tensor, except the feature map for segmentation."""
        if self._functional.encoder is not None:
            features, feature_map = self._functional.encoder(images, training=training)
            return features, feature_map
        features = self.feature_extractor(images, training=training)
        return features, features

    def _decode(self, head_input, training):
        """The head's outputs (logits, resized to the image size with ``upsample_logits``)."""
        logits = self.head(head_input, training=training)
        return logits if self.logit_resizing is None else self.logit_resizing(logits)

    def _forward(self, batch, training):
        """The batches of one step through the model: a :class:`Step` for the strategies."""
        source_images, source_labels = batch["source"]
        target_images = batch.get("target")
        for strategy in self.strategies if training else ():
            if strategy.augments_in_step:
                source_images = strategy.augment_in_step(source_images, "source")
                if target_images is not None:
                    target_images = strategy.augment_in_step(target_images, "target")
        labeled = batch.get("target_labeled")
        batches = [b for b in (source_images, target_images, None if labeled is None else labeled[0]) if b is not None]
        features, logits = self._features_and_logits(batches, training)
        elapsed = ops.cast(self.optimizer.iterations, "float32") - self.schedule_start
        step = Step(source_images=source_images, source_labels=source_labels, source_features=features[0],
                    source_logits=logits[0], training=training,
                    progress=ops.clip(elapsed / ops.maximum(self.planned_steps, 1.0), 0.0, 1.0))
        if target_images is not None:
            step.target_images, step.target_features, step.target_logits = target_images, features[1], logits[1]
        if labeled is not None:
            step.target_labeled_images, step.target_labeled_labels = labeled
            step.target_labeled_features, step.target_labeled_logits = features[-1], logits[-1]
        return step

    def compute_loss_terms(self, step):
        """All named loss terms and reported values of one step: ``({name: scalar}, {name: scalar})``."""
        # "cls_loss" is the task's supervised loss in every task (the name History keys and the guards read).
        terms = {"cls_loss": self.task.loss(self._classification_loss, step.source_labels, step.source_logits)}
        if step.target_labeled_labels is not None:
            terms["target_cls_loss"] = self._target_labeled_weight * self.task.loss(
                self._classification_loss, step.target_labeled_labels, step.target_labeled_logits)
        reports, strategy_names = {}, []
        for strategy, mapping in zip(self.strategies, self._log_names["per_strategy"]):
            strategy_terms, strategy_reports = loss_terms_of(strategy, step, mapping)
            # adaptation_scale (1 unless da.callbacks.CollapseGuard backed off) scales every strategy term.
            terms.update({name: self.health.adaptation_scale * value for name, value in strategy_terms.items()})
            strategy_names.extend(strategy_terms)
            reports.update(strategy_reports)
        self.health.term_names = tuple(strategy_names)
        return terms, reports

    # ------------------------------------------------------------------ steps
    def train_step(self, batch):
        """forward -> loss terms -> non-finite guard -> optimizer step -> metrics."""
        with tf.GradientTape() as tape:
            step = self._forward(batch, training=True)
            terms, reports = self.compute_loss_terms(step)
            total = ops.sum(ops.stack(list(terms.values())))
            # Gradients are summed over replicas, so each replica's loss is divided
            # by their number (what keras.losses do for built-in training).
            scaled = self.optimizer.scale_loss(total / _distribute.replica_count())
        variables = self.trainable_variables
        gradients = self.nonfinite_guard.filter(tape.gradient(scaled, variables), terms, self.optimizer.iterations)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        if pairs:
            gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
            if self._parameter_groups is None:
                self.optimizer.apply(gradients, variables)
            else:
                self._parameter_groups.apply(self.optimizer, gradients, variables)
        if self.task.name == "classification":  # the collapse statistics read class predictions
            self.health.update(step)
        return self._update_metrics(total, {**terms, **reports}, step.source_labels, step.source_logits)

    def _update_metrics(self, total, values, labels, logits):
        self._loss_tracker.update_state(total)
        for name, value in values.items():
            self._trackers[name].update_state(value)
        self.task.update_metrics(self._user_metrics, labels, self.task.activate(logits))
        logs = {"loss": self._loss_tracker.result()}
        logs.update({name: self._trackers[name].result() for name in values})
        logs.update({m.name: m.result() for m in self._user_metrics})
        return _training.reducible(logs)

    def test_step(self, batch):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(batch)
        features, logits = self._features_and_logits([images], training=False)
        loss = self.task.loss(self._classification_loss, labels, logits[0])
        return self._update_metrics(loss, {}, labels, logits[0])

    # ------------------------------------------------------------------ fit
    def fit(self, source=None, target=None, *, target_labeled=None, epochs=1, batch_size=None, target_batch_size=None,
            steps_per_epoch=None, validation_data=None, callbacks=None, verbose="auto", initial_epoch=0, shuffle=True,
            seed=None, shuffle_buffer=10_000, target_labeled_weight=1.0, stop_on_nonfinite=True, collapse_guard=True,
            **kwargs):
        """Train on labeled source data and unlabeled target data with Keras' own ``fit``.

        The data are paired by :func:`domadapt.data.pair` (see there for ``source``,
        ``target``, ``target_labeled``, ``batch_size``, ``target_batch_size``,
        ``steps_per_epoch``, ``shuffle``, ``seed`` and ``shuffle_buffer``). Target
        labels are never read. Every input and every strategy's requirement is
        checked before the first step.

        Schedules (a ramped weight, a lambda) follow progress p = steps of this run /
        ``epochs * steps_per_epoch``: each ``fit(epochs=E)`` call, a second one too, runs
        its own schedule from 0 over its E epochs; resuming (``initial_epoch > 0`` or a
        ``BackupAndRestore`` backup) continues the interrupted run's schedule.

        Args:
            source, target, target_labeled: labeled source, unlabeled target (required
                when a strategy uses or needs it) and optional few labeled target data;
                the last adds ``target_cls_loss`` times ``target_labeled_weight``. Labels
                follow the task: class indices ``(N,)``, regression targets shaped like
                the head's output, or masks ``(N, H, W)`` (``cls_loss`` is the task's
                supervised loss in every task).
            epochs, callbacks, verbose, initial_epoch: as in ``keras.Model.fit``. With
                ``bn_mode="domain"`` and a target, your callbacks' ``on_epoch_end`` and
                ``on_train_end`` run with the batch-norm statistics fit would export for the
                current weights (re-estimated on the target), put back afterwards: a
                ModelCheckpoint saves, and an evaluation scores, the model fit returns
                (``keras.callbacks.BackupAndRestore`` keeps the training state as it is).
                Cost: one inference pass over up to 4,096 target images per epoch end for
                each run of such callbacks (those with neither hook cost nothing).
            validation_data: ``(images, labels)`` or a dataset of them (usually a
                labeled target slice): reported as ``val_loss`` and ``val_<metric>``; with
                ``bn_mode="domain"`` evaluated with target batch-norm statistics re-estimated
                for the epoch's weights, as ``fit`` exports them (the moving ones lag).
            stop_on_nonfinite: stop with ``da.callbacks.NonFiniteLossError`` naming the
                term and step when a loss term becomes NaN or inf.
            collapse_guard: ``True`` (default): a ``da.callbacks.CollapseGuard()`` watches
                for collapse (target predictions on one class or uninformative, vanishing
                features, source accuracy at chance) when a strategy adds a loss term,
                warns naming the terms, restores the last healthy weights and halves
                the adaptation terms (``adaptation_scale`` in the History); ``False``:
                off; or your own ``CollapseGuard`` (other thresholds).
            **kwargs: passed to ``keras.Model.fit`` (``validation_freq``, ...).

        Returns:
            A ``keras.callbacks.History``.
        """
        if getattr(self, "optimizer", None) is None:
            raise RuntimeError("Call adapter.compile(optimizer=...) before adapter.fit(...).")
        _training.check_fit_arguments(source, epochs, target_labeled_weight, kwargs, seed=seed,
                                      initial_epoch=initial_epoch)
        try:
            local_devices = len(self.distribute_strategy.extended.worker_devices)
        except RuntimeError:  # the default (no-op) strategy has no device list: one device
            local_devices = 1
        if self.source_batchnorm_affine and local_devices > 1:
            # The source pass re-points each BN layer at the source's gamma/beta while the step is traced;
            # tf.distribute traces one replica per thread on the same layer objects, so they would interleave.
            raise ValueError(
                "bn_mode='domain_affine' trains on one device per worker only; this adapter's tf.distribute "
                f"strategy has {local_devices} local devices. Use "
                "bn_mode='domain' (per-domain statistics, shared scale/shift), which supports several devices.")
        check_requirements(self.strategies, target=target, target_labeled=target_labeled)
        callbacks = _training.flat_callbacks(callbacks)  # nested lists and CallbackLists, as keras.Model.fit takes them
        # Resuming: every stream starts where an uninterrupted run would be at that epoch.
        start_epoch = max(int(initial_epoch), _training.restored_epoch(callbacks))
        paired = self._pair(
            source, target, target_labeled, image_shape=self.image_shape,
            batch_size=batch_size, target_batch_size=target_batch_size, steps_per_epoch=steps_per_epoch,
            shuffle=shuffle, seed=seed, shuffle_buffer=data.check_positive_int(shuffle_buffer, "shuffle_buffer"),
            start_epoch=start_epoch, pair_target=any(s.uses_target for s in self.strategies),
        )
        if validation_data is not None:
            data.check_scale_like_source(source, validation_data, "validation_data")
            validation_data = self._evaluation_dataset(validation_data, "validation_data", paired.batch_size)
        self._start_strategies(paired, epochs, start_epoch, float(target_labeled_weight))
        dataset = _training.with_input_transforms(paired.dataset, self.strategies)
        structure = (tuple(sorted(paired.dataset.element_spec)), self._target_labeled_weight,
                     tuple(id(v) for v in self.trainable_variables),
                     None if self._parameter_groups is None else self._parameter_groups.key())
        if structure != self._structure_key:  # other streams, variables or groups: a new train function
            self.train_function, self._structure_key = None, structure
        callbacks = _training.fit_callbacks(self, callbacks, epochs * paired.steps_per_epoch,
                                            start_epoch * paired.steps_per_epoch, stop_on_nonfinite=stop_on_nonfinite,
                                            collapse_guard=collapse_guard,
                                            # the probe judges a target that enters the steps, nothing else
                                            target_images=paired.target_images if "target" in paired.dataset.element_spec
                                            else None, probe_batch_size=paired.target_batch_size or paired.batch_size,
                                            exported_target=paired.target_images)  # what _reestimate_batchnorm uses
        # validation_data is evaluated with the statistics fit would export for the epoch's weights (see evaluate).
        object.__setattr__(self, "_validation_target", paired.target_images if validation_data is not None else None)
        try:
            history = super().fit(dataset, epochs=epochs, steps_per_epoch=paired.steps_per_epoch,
                                  validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                                  initial_epoch=initial_epoch, shuffle=False, **kwargs)  # the streams shuffle themselves
        except tf.errors.InvalidArgumentError as error:
            data.raise_input_error(error)
            raise
        finally:
            object.__setattr__(self, "_validation_target", None)
        self._reestimate_batchnorm(source, paired.target_images)
        return history

    def _pair(self, source, target, target_labeled, **kwargs):
        """The paired training streams (:func:`domadapt.data.pair`), labels checked for the task."""
        if self.task.name == "classification":
            return data.pair(source, target, target_labeled, num_classes=self.num_classes, **kwargs)
        return _tasks.pair(self.task, source, target, target_labeled, output_shape=self.output_shape_per_image, **kwargs)

    def _evaluation_dataset(self, value, argument, batch_size):
        if self.task.name == "classification":
            return data.evaluation_dataset(value, argument=argument, image_shape=self.image_shape,
                                           num_classes=self.num_classes, batch_size=batch_size)
        return _tasks.evaluation_dataset(self.task, value, argument=argument, image_shape=self.image_shape,
                                         output_shape=self.output_shape_per_image, batch_size=batch_size)

    def _reestimate_batchnorm(self, source, target_images):
        """bn_mode='domain', after training (and callbacks restoring weights): statistics of the final weights.

        Source statistics are re-estimated on source images (frozen BN layers keep the
        statistics they trained with) and stored in ``source_batchnorm_statistics``;
        then the model's are re-estimated on the target images, every BN layer included.
        Without a target the model keeps the source statistics.
        """
        if not self.source_batchnorm_statistics:
            return
        classifier = self.classifier
        for variable, source_statistic in zip(self._batchnorm_statistics(), self.source_batchnorm_statistics):
            variable.assign(ops.cast(source_statistic, variable.dtype))
        source_images = source.map(lambda *element: element[0]) if isinstance(source, tf.data.Dataset) else source[0]
        trained = [layer for layer in self._batchnorm.layers if layer.trainable]
        # A layer's statistics depend on the scale and shift of the layers before it: the source's here.
        # The target's trained gamma/beta live only in `target_affine` meanwhile: restored whatever happens.
        pairs = self._affine_pairs()
        target_affine = [tf.identity(variable.value) for variable, _ in pairs]
        try:
            for variable, source_parameter in pairs:
                variable.assign(source_parameter)
            reestimate(classifier, trained, source_images, max_images=REESTIMATION_IMAGES)
        finally:
            for (variable, _), value in zip(pairs, target_affine):
                variable.assign(value)
        for source_statistic, variable in zip(self.source_batchnorm_statistics, self._batchnorm_statistics()):
            source_statistic.assign(ops.cast(variable, "float32"))
        if target_images is not None:
            used = reestimate(classifier, self._batchnorm.layers, target_images, max_images=REESTIMATION_IMAGES)
            warn_if_few(used, "target images at the end of fit")

    def _start_strategies(self, paired, epochs, start_epoch, target_labeled_weight):
        """Give each strategy its FitContext; build the optimizer on every variable that may train."""
        self._target_labeled_weight = target_labeled_weight
        self._parameter_groups = None
        def set_parameter_groups(groups):
            # The source's gamma/beta copies (bn_mode='domain_affine') train at their layer's rate.
            pairs = self._affine_pairs(include_frozen=True)
            self._parameter_groups = groups.with_aliases(pairs) if groups is not None and pairs else groups

        view = AdapterView(self, set_parameter_groups=set_parameter_groups,
                           set_target_labeled_weight=lambda weight: setattr(self, "_target_labeled_weight", weight),
                           retrace=lambda: self.make_train_function(force=True))
        context = FitContext.of(paired, epochs=epochs, initial_epoch=start_epoch, adapter=view)
        with self.distribute_strategy.scope():  # variables made here belong to the adapter's tf.distribute strategy
            for strategy in self.strategies:
                call_on_fit_start(strategy, context)
            self._share_frozen_affine()  # after the strategies: FineTune decides which layers train
            if not self.optimizer.built:  # on frozen variables too: unfreezing later keeps the others' state
                self.optimizer.build(_training.trainable_in_principle(self))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer builds a distributed model from one averaged input batch, which
        # MultiWorkerMirroredStrategy cannot do for our dict of streams; nothing needs it here.
        if getattr(self, "_distribute_strategy", None) is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        return None

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", **kwargs):
        """Evaluate the model on labeled images: ``(x, y)`` arrays or a dataset of ``(x, y)`` (masks for segmentation)."""
        batch_size = data.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        if isinstance(x, tf.data.Dataset) and y is not None:
            raise ValueError("Argument `y` must be None when `x` is a dataset of (images, labels).")
        dataset = self._evaluation_dataset(x if isinstance(x, tf.data.Dataset) else (x, y), "x, y", batch_size)
        # During fit (validation_data), bn_mode='domain': the moving statistics lag the weights (a 4-step fit
        # reported them); the epoch's weights are evaluated with target statistics re-estimated on fit's target.
        with self._reestimated_batchnorm(None, self.__dict__.get("_validation_target")):
            try:
                return super().evaluate(dataset, verbose=verbose, **kwargs)
            except tf.errors.InvalidArgumentError as error:
                data.raise_input_error(error)
                raise

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """Class probabilities for images ``x`` (an array or a dataset of images); per pixel for segmentation,
        predictions for regression."""
        if not isinstance(x, tf.data.Dataset):
            data.check_images(data.to_numpy(x, "x"), "x", self.image_shape)
        return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)
