"""The strategy protocol: what a domain-adaptation method may contribute to training.

A strategy is a small Keras layer that the :class:`~domadapt.DomainAdapter` calls at
fixed points. It may contribute any of:

* an input transform of the source or target stream (``transform_source`` /
  ``transform_target``), run inside ``tf.data`` on batches, in recipe order, or
  inside the compiled train step (``augment_in_step``);
* loss terms computed from one training step's features and logits (``loss``);
* extra trainable sub-models (a domain discriminator): create them in ``setup``;
  they train with the adapter's optimizer;
* changes to the adapter before training starts (``on_fit_start``: freezing layers);
* Keras callbacks (``callbacks``).

Loss terms of several strategies simply add up, so the order of strategies in a
recipe does not matter except for input transforms.
"""

from __future__ import annotations

import keras

__all__ = ["Strategy", "Recipe", "Step"]


@keras.saving.register_keras_serializable(package="domadapt")
class Strategy(keras.layers.Layer):
    """Base class of all domain-adaptation strategies.

    Subclasses override some of the hook methods below. Every name a strategy
    reports (loss terms returned by :meth:`loss` and values passed to
    :meth:`Step.report`) must be declared in ``log_names`` so the adapter can
    create a Keras metric for it before the training graph is traced.

    Class attributes:
        uses_target: whether :meth:`loss` needs the unlabeled target batch. When no
            strategy of an adapter uses it, the target stream is not read at all.
        log_names: names reported to the progress bar and ``History``. A tuple
            (each averaged over the epoch) or a dict ``{name: "mean" | "last"}``;
            "last" shows the current value (for schedules such as a lambda).

    Example:

    ```python
    import keras, domadapt as da

    class FeatureNorm(da.Strategy):
        uses_target = True
        log_names = ("norm_loss",)

        def __init__(self, weight=0.01, **kwargs):
            super().__init__(**kwargs)
            self.weight = weight

        def loss(self, step):
            norms = keras.ops.mean(keras.ops.square(step.target_features))
            return {"norm_loss": self.weight * norms}

        def get_config(self):
            return {**super().get_config(), "weight": self.weight}
    ```
    """

    uses_target: bool = True
    log_names: tuple | dict = ()

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    # --- hooks -------------------------------------------------------------------
    def setup(self, adapter):
        """Create sub-models. Called once when the adapter is constructed.

        ``adapter.feature_dim``, ``adapter.num_classes`` and ``adapter.image_shape``
        are known at this point. Sub-layers created here must be built here, so
        that their weights exist before a saved adapter's weights are loaded.
        """

    def loss(self, step: "Step") -> dict:
        """Return ``{name: scalar tensor}`` loss terms for one step (already weighted)."""
        return {}

    def transform_source(self, images, labels):
        """Transform a batch of the source stream inside ``tf.data``; returns ``(images, labels)``."""
        return images, labels

    def transform_target(self, images):
        """Transform a batch of the unlabeled target stream inside ``tf.data``."""
        return images

    def augment_in_step(self, images, domain: str):
        """Transform a batch inside the compiled train step (on the accelerator; training
        only). ``domain`` is ``"source"`` or ``"target"``; returns images of the same
        shape. For cheap in-graph augmentation that must not wait on CPU workers."""
        return images

    def on_fit_start(self, adapter, fit_info: dict):
        """Called at the start of ``fit`` with ``{"epochs", "steps_per_epoch", ...}``."""

    def callbacks(self) -> list:
        """Keras callbacks this strategy adds to ``fit``."""
        return []

    # --- composition -------------------------------------------------------------
    def __add__(self, other):
        return Recipe(self, other)

    def __radd__(self, other):
        return Recipe(other, self)

    def call(self, *args, **kwargs):  # a strategy is driven by its hooks, never called
        raise NotImplementedError(
            f"{type(self).__name__} is a domadapt strategy, not a layer to call on tensors: "
            "pass it to da.DomainAdapter(..., strategies=[...])."
        )

    # Helpers for subclasses --------------------------------------------------------
    @classmethod
    def _declared_logs(cls) -> dict:
        names = cls.log_names
        if isinstance(names, dict):
            return dict(names)
        return {name: "mean" for name in names}

    def _overrides(self, hook_name: str) -> bool:
        return getattr(type(self), hook_name) is not getattr(Strategy, hook_name)


class Recipe:
    """An ordered combination of strategies. ``Recipe(a, b)``, ``[a, b]`` and ``a + b`` are equivalent.

    Nested recipes and lists are flattened. Loss terms add up; input transforms run
    in the order given.

    Example:

    ```python
    import domadapt as da
    recipe = da.Recipe(da.GradientReversal(), da.EntropyMinimization(weight=0.1))
    same = da.GradientReversal() + da.EntropyMinimization(weight=0.1)
    print(recipe, len(same))  # Recipe(GradientReversal, EntropyMinimization) 2
    ```
    """

    def __init__(self, *strategies):
        self.strategies = tuple(_flatten(strategies, "Recipe"))

    def __iter__(self):
        return iter(self.strategies)

    def __len__(self):
        return len(self.strategies)

    def __getitem__(self, index):
        return self.strategies[index]

    def __add__(self, other):
        return Recipe(self, other)

    def __radd__(self, other):
        return Recipe(other, self)

    def __repr__(self):
        inner = ", ".join(type(s).__name__ for s in self.strategies)
        return f"Recipe({inner})"

    def get_config(self):
        return {"strategies": [keras.saving.serialize_keras_object(s) for s in self.strategies]}

    @classmethod
    def from_config(cls, config):
        return cls(*[keras.saving.deserialize_keras_object(s) for s in config["strategies"]])


def _flatten(items, where: str):
    """Yield strategies from nested lists/tuples/recipes, rejecting anything else."""
    for position, item in enumerate(items):
        if isinstance(item, Strategy):
            yield item
        elif isinstance(item, (Recipe, list, tuple)):
            yield from _flatten(list(item), where)
        else:
            raise TypeError(
                f"{where}: expected domadapt strategies (e.g. da.GradientReversal()), "
                f"lists of them or a da.Recipe; item {position} is {item!r} "
                f"of type {type(item).__name__}."
            )


def flatten_strategies(strategies) -> list:
    """Turn ``None``, a strategy, a list or a Recipe into a flat list of strategies."""
    if strategies is None:
        return []
    if isinstance(strategies, Strategy):
        return [strategies]
    if isinstance(strategies, (Recipe, list, tuple)):
        return list(_flatten(list(strategies), "strategies"))
    raise TypeError(
        "Argument `strategies` must be a list of domadapt strategies or a da.Recipe; "
        f"received: strategies={strategies!r} of type {type(strategies).__name__}."
    )


class Step:
    """What one training step hands to each strategy's :meth:`Strategy.loss`.

    Attributes (tensors; ``None`` where the stream is absent):
        source_images, source_labels: the labeled source batch (images as fed to
            the model, after input transforms).
        target_images: the unlabeled target batch.
        source_features, target_features: pooled backbone features, float32,
            shape ``(batch, feature_dim)``.
        source_logits, target_logits: head outputs, float32, ``(batch, num_classes)``.
        target_labeled_*: the few labeled target images, when ``target_labeled`` is given.
        progress: training progress in [0, 1] (optimizer steps / planned steps),
            a float32 scalar tensor, so schedules need no Python work per step.
        training: Python bool.
    """

    def __init__(self, **fields):
        self._reports = {}
        self.source_images = None
        self.source_labels = None
        self.target_images = None
        self.source_features = None
        self.target_features = None
        self.source_logits = None
        self.target_logits = None
        self.target_labeled_images = None
        self.target_labeled_labels = None
        self.target_labeled_features = None
        self.target_labeled_logits = None
        self.progress = None
        self.training = True
        for key, value in fields.items():
            if not hasattr(self, key):
                raise AttributeError(f"Step has no field {key!r}")
            setattr(self, key, value)

    @property
    def source_probabilities(self):
        return keras.ops.softmax(self.source_logits, axis=-1)

    @property
    def target_probabilities(self):
        return keras.ops.softmax(self.target_logits, axis=-1)

    def report(self, name: str, value):
        """Show ``value`` (a scalar) in the progress bar under ``name`` without adding it to the loss."""
        self._reports[name] = value
