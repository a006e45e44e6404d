"""DomainAdapter: a Keras model that trains a backbone + head on labeled source data
and unlabeled target data, with pluggable adaptation strategies."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import _distribute
from domadapt import data as _data
from domadapt.callbacks import StopOnNonFinite
from domadapt.strategy import Step, Strategy, flatten_strategies

__all__ = ["DomainAdapter"]

_POOLING = {
    3: keras.layers.GlobalAveragePooling1D,
    4: keras.layers.GlobalAveragePooling2D,
    5: keras.layers.GlobalAveragePooling3D,
}
_BN_MODES = ("joint", "separate")


@keras.saving.register_keras_serializable(package="domadapt")
class _LastValue(keras.metrics.Metric):
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


class _Untracked:
    """A plain holder Keras' tracker does not look into."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _image_shape_of(backbone, input_shape):
    if input_shape is not None:
        shape = tuple(None if d is None else int(d) for d in input_shape)
        return shape
    try:
        shape = backbone.input_shape
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        raise ValueError(
            "Argument `input_shape` is required: the backbone "
            f"{getattr(backbone, 'name', backbone)!r} has no defined input shape. Pass e.g. "
            "input_shape=(96, 96, 3), or build the backbone with keras.Input first."
        )
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ValueError(
                f"The backbone has {len(shape)} inputs; DomainAdapter needs a backbone with one image input."
            )
        shape = shape[0]
    return tuple(shape[1:])


def _resolve_metric(metric):
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if metric in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    resolved = keras.metrics.get(metric)
    if isinstance(resolved, keras.metrics.Metric):
        return resolved
    return keras.metrics.MeanMetricWrapper(resolved, name=getattr(resolved, "__name__", str(metric)))


@keras.saving.register_keras_serializable(package="domadapt")
class DomainAdapter(keras.Model):
    """A classifier (backbone + head) trained on labeled source and unlabeled target data.

    The backbone maps images to a feature map (pooled automatically by global
    average pooling) or to a feature vector; a dense head (or ``head=``) maps the
    features to class logits. Each strategy adds its loss terms to the source
    classification loss; the sum is minimised with one optimizer, in one compiled
    train step:

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
        bn_mode: ``"joint"`` (default) runs source and target batches through the
            backbone in one concatenated forward pass: one pass, and batch-norm
            layers normalise with statistics of the mixed batch. ``"separate"``
            runs each domain on its own, so batch-norm statistics are per domain
            during training (as in AdaBN-style training); it costs one extra
            backbone call per step.
        input_shape: image shape, needed only when the backbone does not define one.

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

    def __init__(
        self,
        backbone,
        num_classes=None,
        strategies=None,
        *,
        head=None,
        preprocess=None,
        bn_mode="joint",
        input_shape=None,
        name="domain_adapter",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(backbone, keras.layers.Layer):
            raise TypeError(
                "Argument `backbone` must be a keras.Model or keras.layers.Layer; received "
                f"{type(backbone).__name__}."
            )
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2
        ):
            raise ValueError(f"Argument `num_classes` must be an integer >= 2; received num_classes={num_classes!r}.")
        if num_classes is None and head is None:
            raise ValueError("Pass `num_classes=` to build a classification head, or your own `head=` layer.")
        if bn_mode not in _BN_MODES:
            raise ValueError(f"Argument `bn_mode` must be one of {_BN_MODES}; received bn_mode={bn_mode!r}.")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"Argument `preprocess` must be a Keras layer or a callable; received {preprocess!r}.")
        if head is not None and not callable(head):
            raise TypeError(f"Argument `head` must be a Keras layer or model; received {head!r}.")

        self.backbone = backbone
        self.bn_mode = bn_mode
        self.image_shape = _image_shape_of(backbone, input_shape)
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)

        # === Functional models ===
        images = keras.Input(shape=self.image_shape, name="images")
        if preprocess is not None and not isinstance(preprocess, keras.layers.Layer):
            preprocess = keras.layers.Lambda(preprocess, name="preprocess")
        self.preprocess = preprocess
        inputs = preprocess(images) if preprocess is not None else images
        try:
            feature_map = backbone(inputs)
        except Exception as error:
            raise ValueError(
                f"The backbone could not be called on images of shape {self.image_shape}: {error}"
            ) from error
        if not isinstance(feature_map, keras.KerasTensor):
            raise ValueError(
                "The backbone must return one tensor (a feature map or a feature vector); it returns "
                f"{type(feature_map).__name__} of {len(feature_map)} outputs. Wrap it in a keras.Model "
                "that selects one output."
            )
        rank = len(feature_map.shape)
        if rank == 2:
            self.pooling = None
            features = feature_map
        elif rank in _POOLING:
            self.pooling = _POOLING[rank](name="feature_pooling")
            features = self.pooling(feature_map)
        else:
            raise ValueError(
                f"The backbone's output of shape {feature_map.shape} cannot be pooled to a feature "
                "vector: expected (batch, features) or a channels-last feature map of rank 3 to 5."
            )
        if features.shape[-1] is None:
            raise ValueError(f"The backbone's feature width is undefined (output shape {feature_map.shape}).")
        self.feature_dim = int(features.shape[-1])

        self._default_head = head is None
        self.head = head if head is not None else keras.layers.Dense(num_classes, name="classifier_head")
        if getattr(self.head, "activation", None) is keras.activations.softmax:
            raise ValueError("Argument `head` must output logits; remove its softmax activation.")
        logits = self.head(features)
        if not isinstance(logits, keras.KerasTensor) or len(logits.shape) != 2:
            raise ValueError(
                f"Argument `head` must map features of shape (batch, {self.feature_dim}) to logits "
                f"of shape (batch, num_classes); it returns {getattr(logits, 'shape', logits)}."
            )
        if num_classes is not None and logits.shape[-1] != num_classes:
            raise ValueError(
                f"Argument `head` returns {logits.shape[-1]} logits but num_classes={num_classes}."
            )
        self.num_classes = int(logits.shape[-1])
        probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
        # Held outside Keras' attribute tracking: their layers are tracked above
        # already, and tracking them again would count every weight twice.
        self._functional = _Untracked(
            feature_extractor=keras.Model(images, features, name="feature_extractor"),
            classifier=keras.Model(images, probabilities, name="classifier"),
        )

        # === Strategies ===
        self.strategies = flatten_strategies(strategies)
        if len({id(s) for s in self.strategies}) != len(self.strategies):
            raise ValueError("Argument `strategies`: the same strategy object appears twice.")
        for strategy in self.strategies:
            strategy.setup(self)
            strategy.built = True

        # === Training state ===
        # Progress p in [0, 1] is computed in the graph from the optimizer's step
        # counter, so schedules need no per-step Python and resume with it.
        self.planned_steps = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="planned_steps", dtype="float32"
        )
        # The first optimizer step (1-based; 0: none) whose loss terms were not all
        # finite, and a bit mask of those terms: written in the graph, read by
        # da.callbacks.StopOnNonFinite every few batches (no per-step host sync).
        self.first_nonfinite_step = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="first_nonfinite_step", dtype="int64",
            aggregation="only_first_replica",
        )
        self.nonfinite_terms = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="nonfinite_terms", dtype="int64",
            aggregation="only_first_replica",
        )
        self.loss_term_names = ()
        self._log_names = self._make_log_names()
        self._trackers = {
            name: (_LastValue(name=name) if kind == "last" else keras.metrics.Mean(name=name))
            for name, kind in self._log_names["kinds"].items()
        }
        self._user_metrics = []
        self._classification_loss = None
        self._compile_arguments = {"loss": None, "metrics": []}
        self._structure_key = None
        # id(variable) -> learning-rate multiplier, set by strategies (FineTune) at fit start.
        self.learning_rate_multipliers = {}
        self.built = True

    @property
    def classifier(self):
        """The deployable model: images -> class probabilities (a plain functional keras.Model)."""
        return self._functional.classifier

    @property
    def feature_extractor(self):
        """Images -> pooled backbone features (a functional keras.Model sharing the weights)."""
        return self._functional.feature_extractor

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "strategies": [keras.saving.serialize_keras_object(s) for s in self.strategies],
            "head": None if self._default_head else keras.saving.serialize_keras_object(self.head),
            "preprocess": keras.saving.serialize_keras_object(self.preprocess),
            "bn_mode": self.bn_mode,
            "input_shape": self._input_shape_arg,
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("backbone", "head", "preprocess"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        config["strategies"] = [
            keras.saving.deserialize_keras_object(s, custom_objects=custom_objects) for s in config["strategies"]
        ]
        return cls(**config)

    # ------------------------------------------------------------------ logs
    def _make_log_names(self):
        """Map every (strategy index, declared name) to a unique progress-bar name."""
        kinds = {"cls_loss": "mean", "target_cls_loss": "mean"}
        taken = {"loss", "cls_loss", "target_cls_loss"}
        per_strategy = []
        for strategy in self.strategies:
            mapping = {}
            for declared, kind in strategy._declared_logs().items():
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
            loss: classification loss. ``None`` (default) is sparse categorical
                cross-entropy computed from logits (numerically stable). Anything
                else is applied to ``(labels, probabilities)``, as with a Keras model
                ending in softmax, and must return per-example losses.
            metrics: metrics of the classifier, on ``(labels, probabilities)``;
                ``"accuracy"`` means sparse categorical accuracy.
            **kwargs: passed to ``keras.Model.compile`` (``jit_compile``,
                ``steps_per_execution``, ``run_eagerly``...). ``loss_weights`` and
                ``weighted_metrics`` are not supported: weight strategies with their
                ``weight=`` argument instead.
        """
        for unsupported in ("loss_weights", "weighted_metrics"):
            if kwargs.get(unsupported) is not None:
                raise TypeError(
                    f"DomainAdapter.compile does not support `{unsupported}`: each strategy takes a `weight=`."
                )
        if loss is not None:
            loss = keras.losses.get(loss)
            if loss is None:
                raise ValueError(f"Argument `loss`: unknown loss {loss!r}.")
        self._classification_loss = loss
        self._compile_arguments = {"loss": loss, "metrics": list(metrics or [])}
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise TypeError(f"Argument `metrics` must be a list; received {metrics!r}.")
        self._user_metrics = [_resolve_metric(m) for m in (metrics or [])]
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
        for unsupported in ("loss_weights", "weighted_metrics"):
            config.pop(unsupported, None)
        self.compile(**config)
        if self.optimizer is not None:
            # Build now so the saved optimizer state can be loaded into it.
            self.optimizer.build(trainable_in_principle(self))

    # ------------------------------------------------------------------ forward
    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def _classification_terms(self, labels, logits):
        labels = ops.cast(labels, "int32")
        if self._classification_loss is None:
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        else:
            probabilities = ops.softmax(logits, axis=-1)
            loss = self._classification_loss
            per_example = loss.call(labels, probabilities) if isinstance(loss, keras.losses.Loss) else loss(
                labels, probabilities
            )
        return ops.mean(ops.cast(per_example, "float32"))

    def _features_and_logits(self, batches, training):
        """Pooled features and logits for each batch, in one backbone pass if bn_mode='joint'."""
        batches = [ops.cast(b, "float32") for b in batches]
        if self.bn_mode == "joint" and len(batches) > 1:
            sizes = [ops.shape(b)[0] for b in batches]
            features = self.feature_extractor(ops.concatenate(batches, axis=0), training=training)
            logits = self.head(features, training=training)
            features = tf.split(features, sizes, axis=0)
            logits = tf.split(logits, sizes, axis=0)
        else:
            features = [self.feature_extractor(b, training=training) for b in batches]
            logits = [self.head(f, training=training) for f in features]
        return [ops.cast(f, "float32") for f in features], [ops.cast(z, "float32") for z in logits]

    def _make_step(self, data, training):
        source_images, source_labels = data["source"]
        target_images = data.get("target")
        if training:
            for strategy in self.strategies:
                if strategy._overrides("augment_in_step"):
                    source_images = strategy.augment_in_step(source_images, "source")
                    if target_images is not None:
                        target_images = strategy.augment_in_step(target_images, "target")
        batches = [source_images]
        if target_images is not None:
            batches.append(target_images)
        if "target_labeled" in data:
            batches.append(data["target_labeled"][0])
        features, logits = self._features_and_logits(batches, training)
        step = Step(
            source_images=source_images,
            source_labels=source_labels,
            source_features=features[0],
            source_logits=logits[0],
            training=training,
            progress=ops.clip(
                ops.cast(self.optimizer.iterations, "float32") / ops.maximum(self.planned_steps, 1.0), 0.0, 1.0
            ),
        )
        position = 1
        if target_images is not None:
            step.target_images = target_images
            step.target_features, step.target_logits = features[1], logits[1]
            position = 2
        if "target_labeled" in data:
            step.target_labeled_images, step.target_labeled_labels = data["target_labeled"]
            step.target_labeled_features, step.target_labeled_logits = features[position], logits[position]
        return step

    def _loss_terms(self, step, data):
        """All named loss terms and reported values of one step (Python runs at trace time only)."""
        terms = {"cls_loss": self._classification_terms(step.source_labels, step.source_logits)}
        if "target_labeled" in data:
            terms["target_cls_loss"] = self._target_labeled_weight * self._classification_terms(
                step.target_labeled_labels, step.target_labeled_logits
            )
        reports = {}
        for strategy, mapping in zip(self.strategies, self._log_names["per_strategy"]):
            step._reports = {}
            returned = strategy.loss(step) or {}
            if not isinstance(returned, dict):
                raise TypeError(
                    f"{type(strategy).__name__}.loss must return a dict {{name: scalar}}; returned {type(returned).__name__}."
                )
            for source_dict, target_dict in ((returned, terms), (step._reports, reports)):
                for declared, value in source_dict.items():
                    if declared not in mapping:
                        raise ValueError(
                            f"{type(strategy).__name__} reported {declared!r}, which is not declared in its "
                            f"log_names {tuple(mapping)}: add it there so it can be tracked."
                        )
                    target_dict[mapping[declared]] = ops.cast(value, "float32")
        return terms, reports

    # ------------------------------------------------------------------ steps
    def train_step(self, data):
        with tf.GradientTape() as tape:
            step = self._make_step(data, training=True)
            terms, reports = self._loss_terms(step, data)
            total = ops.sum(ops.stack(list(terms.values())))
            # Gradients are summed over replicas, so each replica's loss is divided
            # by their number (what keras.losses do for built-in training).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = total / replicas if replicas > 1 else total
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        # A step whose loss terms are not all finite (on any replica) changes nothing:
        # its gradients are dropped and the step and terms are recorded for
        # StopOnNonFinite, so the weights never turn NaN.
        self.loss_term_names = tuple(terms)
        bad = ops.stack([ops.cast(ops.logical_not(ops.all(ops.isfinite(t))), "float32") for t in terms.values()])
        bad = _distribute.replica_sum(bad)
        mask = sum(ops.where(bad[index] > 0, 1 << index, 0) for index in range(len(terms)))
        mask = ops.cast(mask, "int64")
        finite = ops.equal(mask, 0)
        gradients = [g if g is None or isinstance(g, tf.IndexedSlices) else ops.where(finite, g, ops.zeros_like(g))
                     for g in gradients]
        record = ops.logical_and(ops.logical_not(finite), ops.equal(self.first_nonfinite_step, 0))
        self.first_nonfinite_step.assign(
            ops.where(record, ops.cast(self.optimizer.iterations, "int64") + 1, self.first_nonfinite_step)
        )
        self.nonfinite_terms.assign(ops.where(record, mask, self.nonfinite_terms))
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        if pairs:
            self._apply_gradients(pairs)

        self._loss_tracker.update_state(total)
        for name, value in {**terms, **reports}.items():
            self._trackers[name].update_state(value)
        probabilities = ops.softmax(step.source_logits, axis=-1)
        for metric in self._user_metrics:
            metric.update_state(step.source_labels, probabilities)
        logs = {"loss": self._loss_tracker.result()}
        logs.update({name: self._trackers[name].result() for name in {**terms, **reports}})
        logs.update({m.name: m.result() for m in self._user_metrics})
        return _reducible(logs)

    def _apply_gradients(self, pairs):
        """One optimizer step; variables with a learning-rate multiplier m move m times as far.

        For optimizers whose update is proportional to the learning rate (SGD,
        momentum, Adam, AdamW, RMSprop, ...) scaling the step equals scaling that
        variable's learning rate; the optimizer's slots are updated as usual.
        """
        scaled = [(v, self.learning_rate_multipliers[id(v)]) for _, v in pairs
                  if self.learning_rate_multipliers.get(id(v), 1.0) != 1.0]
        before = [tf.identity(v) for v, _ in scaled]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        for (variable, multiplier), old in zip(scaled, before):
            variable.assign(old + multiplier * (variable - old))

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        features = self.feature_extractor(ops.cast(images, "float32"), training=False)
        logits = ops.cast(self.head(features, training=False), "float32")
        loss = self._classification_terms(labels, logits)
        self._loss_tracker.update_state(loss)
        probabilities = ops.softmax(logits, axis=-1)
        for metric in self._user_metrics:
            metric.update_state(ops.cast(labels, "int32"), probabilities)
        logs = {"loss": self._loss_tracker.result()}
        logs.update({m.name: m.result() for m in self._user_metrics})
        return _reducible(logs)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        source=None,
        target=None,
        *,
        target_labeled=None,
        epochs=1,
        batch_size=None,
        target_batch_size=None,
        steps_per_epoch=None,
        validation_data=None,
        callbacks=None,
        verbose="auto",
        initial_epoch=0,
        shuffle=True,
        seed=None,
        shuffle_buffer=10_000,
        target_labeled_weight=1.0,
        stop_on_nonfinite=True,
        **kwargs,
    ):
        """Train on labeled source data and unlabeled target data with Keras' own ``fit``.

        Args:
            source: ``(images, labels)`` arrays or a ``tf.data.Dataset`` of
                ``(images, labels)``, batched or not.
            target: unlabeled target images: an array or a dataset of images, batched
                or not. A dataset of ``(images, labels)`` is accepted: its labels are
                dropped before anything else and never used. Required when a strategy
                uses target data; ignored (never read) otherwise.
            target_labeled: optional few labeled target images ``(images, labels)``,
                added to the loss as ``target_cls_loss`` times ``target_labeled_weight``.
            epochs, callbacks, verbose, initial_epoch: as in ``keras.Model.fit``.
            batch_size: source images per step (default 32; for a batched dataset
                and no ``batch_size``, the dataset's own batch size).
            target_batch_size: target images per step (default: ``batch_size``).
            steps_per_epoch: default: one pass over the source (the epoch is defined
                by the source; the target stream is repeated independently).
                Required when the source's size is unknown (e.g. after ``filter``).
            validation_data: ``(images, labels)`` or a dataset of them, usually a
                labeled target slice: reported as ``val_loss`` and ``val_<metric>``.
            shuffle: shuffle each stream every pass (datasets: with a buffer of
                ``shuffle_buffer`` images).
            seed: seed of the shuffles, for reproducible runs.
            stop_on_nonfinite: stop with ``da.callbacks.NonFiniteLossError`` naming the
                term and step when a loss term becomes NaN or inf (adds a
                ``da.callbacks.StopOnNonFinite`` unless one is passed).
            **kwargs: passed to ``keras.Model.fit`` (``validation_freq``, ...).

        Returns:
            A ``keras.callbacks.History``.
        """
        if getattr(self, "optimizer", None) is None:
            raise RuntimeError("Call adapter.compile(optimizer=...) before adapter.fit(...).")
        if source is None:
            raise ValueError("Argument `source` is required: labeled source data (images, labels) or a dataset of them.")
        if isinstance(source, (np.ndarray, tf.Tensor)):
            raise TypeError(
                "Argument `source` must be (images, labels) or a dataset of them; received "
                f"{_data._describe(source)}. Did you mean adapter.fit(source=(x, y), target=x_target)?"
            )
        for unsupported in ("x", "y", "sample_weight", "class_weight", "validation_split"):
            if unsupported in kwargs:
                raise TypeError(
                    f"DomainAdapter.fit does not take `{unsupported}`: pass source=(images, labels) "
                    "and target=images" + (" and validation_data=" if unsupported == "validation_split" else "") + "."
                )
        _data.check_positive_int(epochs, "epochs")
        batch_size = _data.check_positive_int(batch_size, "batch_size", allow_none=True)
        target_batch_size = _data.check_positive_int(target_batch_size, "target_batch_size", allow_none=True)
        steps_per_epoch = _data.check_positive_int(steps_per_epoch, "steps_per_epoch", allow_none=True)
        shuffle_buffer = _data.check_positive_int(shuffle_buffer, "shuffle_buffer")
        if not isinstance(target_labeled_weight, (int, float)) or target_labeled_weight < 0:
            raise ValueError(
                f"Argument `target_labeled_weight` must be a non-negative number; received {target_labeled_weight!r}."
            )

        callbacks = list(callbacks or [])
        # Resuming (initial_epoch, or a BackupAndRestore backup from a killed run):
        # every stream starts where an uninterrupted run would be at that epoch.
        start_epoch = max(int(initial_epoch), _restored_epoch(callbacks))
        dataset, steps_per_epoch, info = self._training_data(
            source,
            target,
            target_labeled,
            start_epoch=start_epoch,
            batch_size=batch_size,
            target_batch_size=target_batch_size,
            steps_per_epoch=steps_per_epoch,
            shuffle=shuffle,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
        )
        shape = dict(image_shape=self.image_shape, num_classes=self.num_classes)
        if validation_data is not None:
            validation_data = _data.evaluation_dataset(
                validation_data, argument="validation_data", batch_size=info["batch_size"], **shape
            )

        self._target_labeled_weight = float(target_labeled_weight)
        self.planned_steps.assign(float(epochs * steps_per_epoch))
        fit_info = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, **info}
        # Variables made here (optimizer slots, strategy state) belong to the
        # tf.distribute strategy the adapter was built under, if any.
        with self.distribute_strategy.scope():
            for strategy in self.strategies:
                strategy.on_fit_start(self, fit_info)
            if not self.optimizer.built:
                # Built on every variable that may train, frozen ones included, so that
                # unfreezing later (gradual fine-tuning) keeps the state of the others.
                self.optimizer.build(trainable_in_principle(self))
        structure = (info["streams"], self._target_labeled_weight, tuple(id(v) for v in self.trainable_variables),
                     tuple(sorted(self.learning_rate_multipliers.items())))
        if structure != self._structure_key:
            # Different data, trainable variables or multipliers need a new train function.
            self.train_function = None
            self._structure_key = structure
        if stop_on_nonfinite and not any(isinstance(c, StopOnNonFinite) for c in callbacks):
            callbacks.append(StopOnNonFinite())
        for strategy in self.strategies:
            callbacks.extend(strategy.callbacks())
        try:
            return super().fit(
                dataset,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=validation_data,
                callbacks=callbacks,
                verbose=verbose,
                initial_epoch=initial_epoch,
                shuffle=False,  # the streams above shuffle themselves
                **kwargs,
            )
        except tf.errors.InvalidArgumentError as error:
            _reraise_input_error(error)
            raise

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer builds a distributed model by averaging one input batch
        # across replicas, which MultiWorkerMirroredStrategy cannot do for our dict of
        # streams. Nothing needs it: the adapter, its metrics and the optimizer are
        # built in __init__ and fit.
        if getattr(self, "_distribute_strategy", None) is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        return None

    def _training_data(
        self, source, target, target_labeled, *, batch_size, start_epoch=0, target_batch_size, steps_per_epoch, shuffle, seed, shuffle_buffer
    ):
        """Check the inputs and pair them: returns (dataset of dicts, steps_per_epoch, info)."""
        shape = dict(image_shape=self.image_shape, num_classes=self.num_classes)
        source_stream = _data.make_stream(source, argument="source", labeled=True, **shape)
        users = [type(s).__name__ for s in self.strategies if s.uses_target]
        if users and target is None:
            raise ValueError(f"Argument `target` is required: strategies {users} train on unlabeled target images.")
        # Checked even when no strategy pairs it into the steps (a wrong target fails
        # now, not when a strategy is added), and offered to strategies at fit start.
        target_stream = None
        if target is not None:
            target_stream = _data.make_stream(target, argument="target", labeled=False, **shape)
        labeled_stream = None
        if target_labeled is not None:
            labeled_stream = _data.make_stream(target_labeled, argument="target_labeled", labeled=True, **shape)

        if batch_size is None:
            batch_size = source_stream.user_batch_size or 32
        target_batch_size = target_batch_size or batch_size
        if steps_per_epoch is None:
            steps_per_epoch = _data.steps_for(source_stream, batch_size)
            if steps_per_epoch is None:
                raise ValueError(
                    "Argument `steps_per_epoch` is required: the size of the `source` dataset is unknown "
                    "(e.g. after filter() or repeat())."
                )

        def stream(s, size, offset):
            stream_seed = None if seed is None else int(seed) + offset
            batches = _data.batched_forever(s, size, shuffle=shuffle, seed=stream_seed, shuffle_buffer=shuffle_buffer)
            # Before any augmentation: for arrays, skipping only walks over indices.
            return batches.skip(start_epoch * steps_per_epoch) if start_epoch else batches

        source_ds = stream(source_stream, batch_size, 0)
        for strategy in self.strategies:
            if strategy._overrides("transform_source"):
                source_ds = source_ds.map(strategy.transform_source, num_parallel_calls=tf.data.AUTOTUNE)
        streams = {"source": source_ds}
        if users:
            target_ds = stream(target_stream, target_batch_size, 1)
            for strategy in self.strategies:
                if strategy._overrides("transform_target"):
                    target_ds = target_ds.map(strategy.transform_target, num_parallel_calls=tf.data.AUTOTUNE)
            streams["target"] = target_ds
        if labeled_stream is not None:
            labeled_size = min(batch_size, labeled_stream.size or batch_size)
            streams["target_labeled"] = stream(labeled_stream, labeled_size, 2)
        dataset = tf.data.Dataset.zip(streams).prefetch(tf.data.AUTOTUNE)

        info = {
            "source_stream": source_stream,
            "batch_size": batch_size,
            "target_batch_size": target_batch_size,
            "target_stream": target_stream,
            "target_labeled_stream": labeled_stream,
            "streams": tuple(sorted(streams)),
        }
        return dataset, steps_per_epoch, info

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", **kwargs):
        """Evaluate the classifier on labeled images: ``(x, y)`` arrays or a dataset of ``(x, y)``."""
        batch_size = _data.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        data = x if isinstance(x, tf.data.Dataset) else (x, y)
        if isinstance(x, tf.data.Dataset) and y is not None:
            raise ValueError("Argument `y` must be None when `x` is a dataset of (images, labels).")
        dataset = _data.evaluation_dataset(
            data, argument="x, y", image_shape=self.image_shape, num_classes=self.num_classes, batch_size=batch_size
        )
        try:
            return super().evaluate(dataset, verbose=verbose, **kwargs)
        except tf.errors.InvalidArgumentError as error:
            _reraise_input_error(error)
            raise

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """Class probabilities for images ``x`` (an array or a dataset of images)."""
        if not isinstance(x, tf.data.Dataset):
            images = _data._to_numpy(x, "x")
            _data._check_images(images, "x", self.image_shape)
        return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)


def _reducible(logs):
    """Logs as Keras' TF trainer can reduce them under every tf.distribute strategy.

    Under MultiWorkerMirroredStrategy Keras reduces each log with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (also for a
    plain keras.Model in Keras 3.15); a leading axis of one makes it a plain mean.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def _restored_epoch(callbacks):
    """The epoch a ``keras.callbacks.BackupAndRestore`` in ``callbacks`` will resume at (0 if none)."""
    import json
    import os

    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            path = getattr(callback, "_training_metadata_path", None) or os.path.join(
                callback.backup_dir, "training_metadata.json"
            )
            if os.path.exists(path):
                with open(path) as file:
                    return int(json.load(file).get("epoch", 0))
    return 0


def trainable_in_principle(model):
    """Variables created trainable (kernels, biases, BN scales), whether or not their layer is frozen now."""
    seen, variables = set(), []
    for layer in model._flatten_layers(include_self=True):
        for variable in getattr(layer, "_trainable_variables", []):
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def _reraise_input_error(error):
    message = str(getattr(error, "message", error))
    if _data.PIPELINE_ERROR_MARKER in message:
        detail = message.split(_data.PIPELINE_ERROR_MARKER, 1)[1].split("\n")[0].strip()
        raise ValueError(f"Bad input found while training: {detail}.") from None
