"""Output-space adversarial alignment for segmentation (AdaptSegNet)."""

from __future__ import annotations

import keras
from keras import ops

from domadapt.layers.gradient_reversal import GradientReversal as ReversalLayer
from domadapt.strategies._schedule import check_schedule, check_units, check_weight, scheduled, serialize_schedule
from domadapt.strategies.base import Strategy, deserialize_discriminator_config


def _default_discriminator(filters, name):
    """AdaptSegNet's fully-convolutional discriminator, narrower: 4x4 stride-2 convs + LeakyReLU(0.2), 1 logit per cell."""
    layers = []
    for width in filters:
        layers += [keras.layers.Conv2D(width, 4, strides=2, padding="same"), keras.layers.LeakyReLU(negative_slope=0.2)]
    layers.append(keras.layers.Conv2D(1, 4, padding="same", dtype="float32"))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="domadapt")
class OutputAdversarial(Strategy):
    """Align the per-pixel softmax maps of the domains adversarially (AdaptSegNet, Tsai et al. 2018).

    A small fully-convolutional discriminator D reads the softmax output maps
    ``(batch, H, W, num_classes)`` and predicts, per cell of its own output map,
    whether they come from the source (0) or the target (1). A gradient reversal
    layer between the segmentation outputs and D multiplies the gradient by
    -lambda, so one optimizer step trains D to tell the domains apart and the
    segmentation network to make its target outputs look like source outputs:

        output_domain_loss = mean_cells BCE(D(R_lambda(softmax(logits_s))), 0)
                           + mean_cells BCE(D(R_lambda(softmax(logits_t))), 1)

    Structured outputs (layouts, shapes) are similar across domains even when the
    images are not, which is why the paper aligns them rather than the features.
    The paper trains D with its own optimizer and the network with a flipped-label
    loss weighted 0.001; here D shares the adapter's optimizer and the network
    receives -lambda times D's gradient (the reversal form of DANN).

    Reports ``output_domain_loss``, ``output_domain_acc`` (per cell, about 0.5 once
    D cannot tell the domains apart) and ``output_grl_lambda``. Segmentation only.

    Args:
        weight: the largest lambda (the paper's lambda_adv is 0.001 for its
            single-level output discriminator on full-size images; small synthetic
            images tolerate more).
        schedule: ``"ganin"`` (default) ramps lambda from 0; ``"constant"``; or a
            callable ``progress -> multiplier`` written with keras.ops.
        discriminator: a Keras model mapping ``(batch, H, W, num_classes)`` to
            ``(batch, h, w, 1)`` logits; default: 4x4 stride-2 convolutions of
            ``filters`` channels with LeakyReLU(0.2) and a final 4x4 convolution.
        filters: channel widths of the default discriminator (the paper: 64 to 512).

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, padding="same", activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=3, task="segmentation",
                               strategies=[da.OutputAdversarial(weight=0.01, filters=(16, 32))])
    ```
    """

    tasks = ("segmentation",)
    log_names = {"output_domain_loss": "mean", "output_domain_acc": "mean", "output_grl_lambda": "last"}

    def __init__(self, weight=0.01, schedule="ganin", discriminator=None, filters=(64, 128), **kwargs):
        super().__init__(**kwargs)
        self.weight = check_weight(weight)
        self.schedule = check_schedule(schedule)
        if discriminator is not None and not isinstance(discriminator, keras.layers.Layer):
            raise TypeError(
                "Argument `discriminator` must be a Keras layer/model mapping softmax maps to per-cell logits; "
                f"received {type(discriminator).__name__}."
            )
        self.filters = check_units(filters, "filters", allow_empty=False)
        # Tracked before the discriminator, as when setup creates it: get_weights() of copies line up.
        self.reversal = ReversalLayer(scale=0.0 if schedule == "ganin" else self.weight, name=f"{self.name}_reversal")
        self.discriminator = discriminator

    def setup(self, adapter):
        if self.discriminator is None:
            self.discriminator = _default_discriminator(self.filters, f"{self.name}_discriminator")
        height, width, num_classes = adapter.output_shape_per_image
        output = self.discriminator(keras.KerasTensor((None, height, width, num_classes)))
        if len(output.shape) != 4 or output.shape[-1] != 1:
            raise ValueError(
                f"Argument `discriminator` must output one logit per cell, (batch, h, w, 1); it outputs {output.shape}."
            )

    def loss(self, step):
        lam = scheduled(self.weight, self.schedule, step.progress)
        self.reversal.scale.assign(lam)
        maps = ops.concatenate([step.source_probabilities, step.target_probabilities], axis=0)
        logits = ops.cast(self.discriminator(self.reversal(maps), training=step.training), "float32")[..., 0]
        source_size = ops.shape(step.source_logits)[0]
        domain = ops.cast(ops.arange(ops.shape(logits)[0]) >= source_size, "float32")
        domain = ops.broadcast_to(ops.reshape(domain, (-1, 1, 1)), ops.shape(logits))
        loss = ops.mean(ops.binary_crossentropy(domain, logits, from_logits=True))
        step.report("output_domain_acc", ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), domain), "float32")))
        step.report("output_grl_lambda", lam)
        return {"output_domain_loss": loss}

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "schedule": serialize_schedule(self.schedule),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator), "filters": list(self.filters)}

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_discriminator_config(config))
