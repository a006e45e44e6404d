"""Base classes for writing strategies: a weighted loss term, or an adversarial discriminator.

``Strategy`` (the protocol every strategy follows) is re-exported here so one import
serves whoever writes a strategy:

```python
from domadapt.strategies.base import AdversarialStrategy, Strategy, WeightedStrategy
```
"""

from __future__ import annotations

import numbers

import keras
from keras import ops

from domadapt import _distribute
from domadapt.layers.gradient_reversal import GradientReversal as ReversalLayer
from domadapt.strategies._class_weights import ClassWeightedAlignment
from domadapt.strategies._schedule import (
    check_schedule,
    check_units,
    check_weight,
    deserialize_schedule,
    scheduled,
    serialize_schedule,
)
from domadapt.strategy import Strategy

__all__ = ["AdversarialStrategy", "Strategy", "WeightedStrategy"]


class WeightedStrategy(Strategy):
    """A strategy whose loss term is ``scheduled(weight) * value(step)``.

    Subclass it for a discrepancy or regulariser that only needs a weight and,
    optionally, a ramp: call ``self.current_weight(step)`` in :meth:`loss`.

    Args:
        weight: the loss weight (its largest value under a schedule).
        schedule: ``"constant"``, ``"ganin"`` (ramp from 0 to weight over training,
            2 / (1 + exp(-10 p)) - 1 at progress p, so the classifier learns before
            alignment dominates), or a callable ``progress -> multiplier`` written
            with keras.ops. Default: the class attribute ``default_schedule``.

    Example:

    ```python
    import keras, domadapt as da
    from domadapt.strategies.base import WeightedStrategy

    class FeatureNorm(WeightedStrategy):
        log_names = ("norm_loss",)

        def loss(self, step):
            value = keras.ops.mean(keras.ops.square(step.target_features))
            return {"norm_loss": self.current_weight(step) * value}

    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8)])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[FeatureNorm(0.01, schedule="ganin")])
    ```
    """

    default_schedule = "constant"

    def __init__(self, weight=1.0, schedule=None, **kwargs):
        super().__init__(**kwargs)
        self.weight = check_weight(weight)
        self.schedule = check_schedule(self.default_schedule if schedule is None else schedule)

    def current_weight(self, step):
        """The weight at this step's training progress (a float32 tensor)."""
        return scheduled(self.weight, self.schedule, step.progress)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "schedule": serialize_schedule(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_schedule(config))


def deserialize_discriminator_config(config):
    """A config with its schedule and its ``discriminator`` (a serialised Keras model, or None) rebuilt.

    Shared by the strategies that own a discriminator (here and in ``output_adversarial``).
    """
    config = deserialize_schedule(config)
    if config.get("discriminator") is not None:
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
    return config


def _default_discriminator(hidden_units, dropout, name):
    layers = []
    for units in hidden_units:
        layers.append(keras.layers.Dense(units, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(1, dtype="float32"))
    return keras.Sequential(layers, name=name)


class AdversarialStrategy(ClassWeightedAlignment, Strategy):
    """A domain discriminator trained through a gradient reversal layer (Ganin et al. 2016).

    The discriminator D learns to tell source (domain 0) from target (domain 1)
    inputs by binary cross-entropy; the reversal layer between the backbone and D
    multiplies the gradient by -lambda, so the backbone learns to fool D:

        loss = mean_i w_i BCE(D(R_lambda(z_i)), domain_i)

    With ``class_weights``, each source example's w_i is multiplied by gamma[y_i]
    (its class's weight) and the source weights rescaled to their unweighted total,
    so target classes are aligned with the source restricted to them (PADA, Cao et
    al. 2018) and both domains keep their share of the loss.

    Subclasses define :meth:`discriminator_inputs` (the z of each domain) and,
    optionally, :meth:`discriminator_input_dim` and :meth:`example_weights` (w).
    Subclasses that report under other names set the class attributes
    ``log_names``, ``loss_name``, ``accuracy_name`` and ``lambda_name``.

    Args:
        weight: the largest lambda.
        schedule: ``"ganin"`` ramps lambda = weight * (2 / (1 + exp(-10 p)) - 1)
            over training progress p in [0, 1]; ``"constant"`` keeps lambda = weight;
            or a callable ``progress -> multiplier`` written with keras.ops.
        discriminator: a Keras layer/model mapping ``(batch, width)`` to one logit;
            default: an MLP with ``hidden_units`` ReLU layers and ``dropout``.
        hidden_units, dropout: shape of the default discriminator.
        class_weights: per-class weights of the source examples, for a target whose
            class mix differs (some classes rare or absent): ``None`` (default, all
            1), ``"auto"`` (estimated during training from the mean target prediction,
            an exponential moving average over about one epoch, normalised by its
            maximum; PADA) or one weight per class (e.g.
            ``da.gap.label_shift(...).importance_weights``).

    Example:

    ```python
    import keras, domadapt as da
    from domadapt.strategies.base import AdversarialStrategy

    class NormAdversary(AdversarialStrategy):  # aligns the feature norms only
        def discriminator_input_dim(self, adapter):
            return 1

        def discriminator_inputs(self, step):
            norm = lambda f: keras.ops.norm(f, axis=1, keepdims=True)
            return norm(step.source_features), norm(step.target_features)

    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8)])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[NormAdversary(hidden_units=(8,))])
    ```
    """

    log_names = {"domain_loss": "mean", "domain_acc": "mean", "grl_lambda": "last"}
    loss_name = "domain_loss"
    accuracy_name = "domain_acc"
    lambda_name = "grl_lambda"

    def __init__(self, weight=1.0, schedule="ganin", discriminator=None, hidden_units=(1024, 1024), dropout=0.5,
                 class_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.init_class_weights(class_weights)
        self.weight = check_weight(weight)
        check_schedule(schedule)
        if discriminator is not None and not isinstance(discriminator, keras.layers.Layer):
            raise TypeError(
                f"Argument `discriminator` must be a Keras layer/model mapping features to one logit; "
                f"received {type(discriminator).__name__}."
            )
        hidden_units = check_units(hidden_units, "hidden_units")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"Argument `dropout` must be a number in [0, 1); received dropout={dropout!r}.")
        self.schedule = schedule
        self.hidden_units = hidden_units
        self.dropout = float(dropout)
        # The reversal is tracked before the discriminator, as in a strategy whose discriminator setup creates:
        # get_weights() of an adapter and of its from_config copy then line up.
        self.reversal = ReversalLayer(scale=0.0 if schedule == "ganin" else self.weight, name=f"{self.name}_reversal")
        self.discriminator = discriminator

    def discriminator_input_dim(self, adapter) -> int:
        """Width of the discriminator's input (default: the backbone's feature width)."""
        return adapter.feature_dim

    def setup(self, adapter):
        self.setup_class_weights(adapter)
        if self.discriminator is None:
            self.discriminator = _default_discriminator(self.hidden_units, self.dropout, f"{self.name}_discriminator")
        width = self.discriminator_input_dim(adapter)
        try:
            output = keras.ops.shape(self.discriminator(keras.KerasTensor((None, width))))
        except (ValueError, TypeError) as error:  # a given discriminator built for another width
            raise ValueError(f"Argument `discriminator` must take inputs of shape (batch, {width}) (the "
                             f"{type(self).__name__} features it classifies); calling it on them failed: {error}") from None
        if len(output) != 2 or output[-1] != 1:
            raise ValueError(
                f"Argument `discriminator` must output one logit per example; it outputs shape {tuple(output)}."
            )

    def discriminator_inputs(self, step):
        """Return ``(source_inputs, target_inputs)`` fed to the discriminator."""
        raise NotImplementedError(f"{type(self).__name__} must define discriminator_inputs(step).")

    def example_weights(self, step):
        """Optional ``(source_weights, target_weights)`` of the domain loss; ``None`` for uniform."""
        return None

    def loss(self, step):
        lam = scheduled(self.weight, self.schedule, step.progress)
        self.reversal.scale.assign(lam)
        source_inputs, target_inputs = self.discriminator_inputs(step)
        inputs = ops.concatenate([source_inputs, target_inputs], axis=0)
        logits = ops.cast(self.discriminator(self.reversal(inputs), training=step.training), "float32")[:, 0]
        domain = ops.concatenate(
            [ops.zeros_like(source_inputs[:, 0]), ops.ones_like(target_inputs[:, 0])], axis=0
        )
        per_example = ops.binary_crossentropy(domain, logits, from_logits=True)
        weights = self._with_class_weights(self.example_weights(step), source_inputs, target_inputs, step)
        if weights is None:
            domain_loss = ops.mean(per_example)
        else:
            weights = ops.stop_gradient(ops.concatenate(weights, axis=0))
            # Normalised by the global batch's total weight: summed over replicas (each
            # divided by their number in the train step) this is the one-device loss.
            total_weight = _distribute.replica_sum(ops.sum(weights)) / _distribute.replica_count()
            domain_loss = ops.sum(weights * per_example) / ops.maximum(total_weight, 1e-6)
        accuracy = ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), domain), "float32"))
        step.report(self.accuracy_name, accuracy)
        step.report(self.lambda_name, lam)
        return {self.loss_name: domain_loss}

    def _with_class_weights(self, weights, source_inputs, target_inputs, step):
        class_weights = self.source_class_weights(step)
        if class_weights is None:
            return weights
        if weights is None:
            weights = (ops.ones_like(source_inputs[:, 0]), ops.ones_like(target_inputs[:, 0]))
        source_weights, target_weights = (ops.cast(w, "float32") for w in weights)
        weighted = source_weights * class_weights
        # The source keeps its share of the loss: its weights are rescaled to their unweighted (global) total.
        scale = _distribute.replica_sum(ops.sum(source_weights)) / ops.maximum(
            _distribute.replica_sum(ops.sum(weighted)), 1e-12)
        return weighted * scale, target_weights

    def get_config(self):
        return {
            **super().get_config(),
            **self.class_weights_config(),
            "weight": self.weight,
            "schedule": serialize_schedule(self.schedule),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "hidden_units": list(self.hidden_units),
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_discriminator_config(config))
