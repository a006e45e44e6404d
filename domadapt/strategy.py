"""The strategy protocol: what a domain-adaptation method may contribute to training.

A strategy is a small Keras layer that the :class:`~domadapt.DomainAdapter` calls at
fixed points. It may contribute any of:

* loss terms computed from one training step's features and logits (``loss``);
* an input transform of the source or target stream, run inside ``tf.data`` on
  batches in recipe order (``transform_source`` / ``transform_target``, declared by
  ``transforms_source`` / ``transforms_target``), or inside the compiled train step
  (``augment_in_step``, declared by ``augments_in_step``);
* extra trainable sub-models (a domain discriminator): create them in ``setup``;
  they train with the adapter's optimizer;
* changes before training starts (``on_fit_start(context)``, with a
  :class:`FitContext`: freezing layers, learning-rate groups through ``context.adapter``);
* Keras callbacks (``callbacks``).

What a strategy needs is declared too (``uses_target``, ``needs_target``,
``needs_target_labeled``) and checked by ``fit`` before the first step.
Loss terms of several strategies simply add up, so the order of strategies in a
recipe does not matter except for input transforms.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from domadapt.parameter_groups import ParameterGroups

__all__ = ["AdapterView", "FitContext", "Recipe", "Step", "Strategy"]

# Capability flag -> the hook it declares.
_CAPABILITIES = {"transforms_source": "transform_source", "transforms_target": "transform_target",
                 "augments_in_step": "augment_in_step"}


class AdapterView:
    """The part of a ``DomainAdapter`` a strategy may read and change during ``fit``.

    Read: ``backbone``, ``classifier``, ``feature_extractor``, ``num_classes``
    (``None`` for regression), ``feature_dim``, ``image_shape``, ``task`` (a
    :mod:`domadapt.tasks` object) and ``output_shape_per_image`` (the head's output
    per image: ``(num_classes,)``, the regression output, or the logits'
    ``(H, W, num_classes)``) and ``reestimates_batchnorm_on_target`` (True when the
    adapter itself re-estimates every batch-norm layer on the target images at the end
    of ``fit``, as ``bn_mode="domain"`` does, so a strategy need not). Change: learning-rate groups, the weight of
    the labeled-target loss, and a retrace of the train step after changing which
    layers train. Nothing else of the adapter is a strategy's business.
    """

    def __init__(self, adapter, *, set_parameter_groups, set_target_labeled_weight, retrace):
        self.backbone = adapter.backbone
        self.classifier = adapter.classifier
        self.feature_extractor = adapter.feature_extractor
        self.num_classes = adapter.num_classes
        self.feature_dim = adapter.feature_dim
        self.image_shape = adapter.image_shape
        self.task = adapter.task
        self.output_shape_per_image = adapter.output_shape_per_image
        self.reestimates_batchnorm_on_target = bool(adapter.source_batchnorm_statistics)
        self._set_parameter_groups = set_parameter_groups
        self._set_target_labeled_weight = set_target_labeled_weight
        self._retrace = retrace

    def set_parameter_groups(self, groups):
        """Train with these learning-rate groups (a ``da.parameter_groups.ParameterGroups``, or ``None``)."""
        if groups is not None and not isinstance(groups, ParameterGroups):
            raise TypeError(
                f"Argument `groups` must be a da.parameter_groups.ParameterGroups or None; received {type(groups).__name__}."
            )
        self._set_parameter_groups(groups)

    def set_target_labeled_weight(self, weight):
        """The weight of ``target_cls_loss`` for this fit (overrides ``fit(target_labeled_weight=)``)."""
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < float("inf"):
            raise ValueError(f"Argument `weight` must be a non-negative number; received weight={weight!r}.")
        self._set_target_labeled_weight(float(weight))

    def request_retrace(self):
        """Rebuild the train function now (after ``layer.trainable`` changed); optimizer state is kept."""
        self._retrace()


@dataclass(frozen=True)
class FitContext:
    """What a strategy learns about one ``fit`` call, in :meth:`Strategy.on_fit_start`.

    Attributes:
        epochs: the ``epochs`` of ``fit`` (the last epoch, as in Keras).
        initial_epoch: the epoch this call starts at (``initial_epoch`` or the
            epoch a ``BackupAndRestore`` backup resumes at).
        steps_per_epoch: optimizer steps per epoch.
        batch_size, target_batch_size: images per step of the source and target streams.
        source_size, target_size, target_labeled_size: images of each input
            (``None`` when absent or of unknown size).
        target_images: the unlabeled target images (a numpy array, or an unbatched
            ``tf.data.Dataset`` of images), ``None`` without ``target=``.
        adapter: an :class:`AdapterView`.
    """

    epochs: int
    initial_epoch: int
    steps_per_epoch: int
    batch_size: int
    target_batch_size: int
    source_size: int | None
    target_size: int | None
    target_labeled_size: int | None
    target_images: np.ndarray | tf.data.Dataset | None
    adapter: AdapterView

    @classmethod
    def of(cls, paired, *, epochs, initial_epoch, adapter):
        """The context of a fit on ``paired`` (a ``domadapt.data.PairedData``)."""
        sizes = {name: getattr(paired, name) for name in (
            "steps_per_epoch", "batch_size", "target_batch_size", "source_size", "target_size", "target_labeled_size",
            "target_images")}
        return cls(epochs=epochs, initial_epoch=initial_epoch, adapter=adapter, **sizes)


@keras.saving.register_keras_serializable(package="domadapt")
class Strategy(keras.layers.Layer):
    """Base class of all domain-adaptation strategies.

    Subclasses override some of the hook methods below. Every name a strategy
    reports (loss terms returned by :meth:`loss` and values passed to
    :meth:`Step.report`) must be declared in ``log_names`` so the adapter can
    create a Keras metric for it before the training graph is traced.

    Class attributes (a strategy whose needs depend on its arguments sets them on
    the instance in ``__init__``):
        uses_target: whether :meth:`loss` needs the unlabeled target batch. When no
            strategy of an adapter uses it, the target stream is not read at all.
        needs_target: whether the strategy needs ``fit(target=)`` otherwise (e.g.
            to re-estimate batch norm on it); ``fit`` checks it before the first step.
        needs_target_labeled: whether it needs ``fit(target_labeled=)``.
        transforms_source, transforms_target, augments_in_step: which input hooks
            the adapter calls. A subclass that defines a hook declares it by default.
        tasks: the tasks the strategy supports, among ``"classification"``,
            ``"regression"`` and ``"segmentation"`` (default: classification only).
            In every task ``Step.*_features`` are pooled features; ``Step.*_logits``
            are the head's outputs: class logits ``(batch, classes)``, regression
            predictions, or per-pixel logits ``(batch, H, W, classes)``. Declare a
            task only where the loss is right for those shapes; ``DomainAdapter``
            raises a ValueError for any other pairing before training.
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
    needs_target: bool = False
    needs_target_labeled: bool = False
    transforms_source: bool = False
    transforms_target: bool = False
    augments_in_step: bool = False
    tasks: tuple = ("classification",)
    log_names: tuple | dict = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for flag, hook in _CAPABILITIES.items():
            if hook in cls.__dict__ and flag not in cls.__dict__:
                setattr(cls, flag, True)

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

    def transform_source(self, images, labels, step=None):
        """Transform a batch of the source stream inside ``tf.data``; returns ``(images, labels)``.

        ``step`` is the batch's int64 step number in the run (it differs every epoch
        and continues after a resume): seed random draws with it.
        """
        return images, labels

    def transform_target(self, images, step=None):
        """Transform a batch of the unlabeled target stream inside ``tf.data`` (``step`` as above)."""
        return images

    def augment_in_step(self, images, domain: str):
        """Transform a batch inside the compiled train step (on the accelerator; training
        only). ``domain`` is ``"source"`` or ``"target"``; returns images of the same
        shape. For cheap in-graph augmentation that must not wait on CPU workers."""
        return images

    def on_fit_start(self, context: FitContext):
        """Called at the start of ``fit``, after its checks, before the first step."""

    def callbacks(self) -> list:
        """Keras callbacks this strategy adds to ``fit``."""
        return []

    # --- composition -------------------------------------------------------------
    def __add__(self, other):
        return Recipe(self, other)

    def __radd__(self, other):
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:  # sum([...]) starts from 0
            return Recipe(self)
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


def check_requirements(strategies, *, target, target_labeled):
    """A ValueError naming the strategies whose declared needs ``fit``'s data do not meet (before any step)."""
    for argument, given, needs, what in (
        ("target", target, lambda s: s.uses_target or s.needs_target, "unlabeled target images"),
        ("target_labeled", target_labeled, lambda s: s.needs_target_labeled, "labeled target images"),
    ):
        users = [type(s).__name__ for s in strategies if needs(s)]
        if users and given is None:
            raise ValueError(f"Argument `{argument}` is required: strategies {users} need {what}.")


def loss_terms_of(strategy, step, mapping):
    """``(terms, reports)`` of ``strategy`` for one step, under their shown names ``mapping[declared]``."""
    step._reports = {}
    returned = strategy.loss(step) or {}
    if not isinstance(returned, dict):
        raise TypeError(
            f"{type(strategy).__name__}.loss must return a dict {{name: scalar}}; returned {type(returned).__name__}."
        )
    shown = ({}, {})
    for values, target in ((returned, shown[0]), (step._reports, shown[1])):
        for declared, value in values.items():
            if declared not in mapping:
                raise ValueError(
                    f"{type(strategy).__name__} reported {declared!r}, which is not declared in its "
                    f"log_names {tuple(mapping)}: add it there so it can be tracked."
                )
            target[mapping[declared]] = keras.ops.cast(value, "float32")
    return shown


def call_on_fit_start(strategy, context: FitContext):
    """Call ``strategy.on_fit_start(context)``; the 0.1 form ``on_fit_start(adapter, fit_info)`` still works."""
    parameters = inspect.signature(strategy.on_fit_start).parameters
    if len(parameters) == 2:
        warnings.warn(
            f"{type(strategy).__name__}.on_fit_start(adapter, fit_info) is deprecated: define "
            "on_fit_start(self, context) and use the domadapt.strategy.FitContext it receives.", DeprecationWarning, stacklevel=2)
        info = {"epochs": context.epochs, "steps_per_epoch": context.steps_per_epoch, "batch_size": context.batch_size}
        strategy.on_fit_start(context.adapter, info)
    else:
        strategy.on_fit_start(context)


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
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:  # sum([...]) starts from 0
            return Recipe(self)
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
        source_logits, target_logits: head outputs, float32, ``(batch, num_classes)``;
            ``(batch, H, W, num_classes)`` for segmentation, predictions for regression.
        target_labeled_*: the few labeled target images, when ``target_labeled`` is given.
        progress: training progress in [0, 1]: steps of this run / (epochs *
            steps_per_epoch), from 0 at each ``fit`` call (a resumed run continues
            where it was); a float32 scalar tensor, so schedules need no Python per step.
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
