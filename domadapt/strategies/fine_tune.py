"""Target fine-tuning: which backbone layers train, when they unfreeze, at what learning rate."""

from __future__ import annotations

import math
import numbers
import re

import keras

from domadapt.batchnorm import adapt_batchnorm, batchnorm_layers
from domadapt.parameter_groups import ParameterGroups
from domadapt.strategy import Strategy

# keras.applications name their stages and blocks; these patterns find them
# (ResNet/DenseNet "conv3_block2_...", EfficientNet "block2a_...", MobileNetV2
# "block_3_...", MobileNetV3 "expanded_conv_3_...", ConvNeXt "..._stage_1_block_2_...").
_BLOCK_PATTERNS = [
    re.compile(r"^(conv\d+_block\d+)_"),
    re.compile(r"^(block\d+[a-z])_"),
    re.compile(r"^(block_\d+)_"),
    re.compile(r"^(expanded_conv(?:_\d+)?)_"),
    re.compile(r"(stage_\d+_block_\d+)_"),
]

# "auto": labeled images per class -> what trains (Yosinski et al. 2014; the usual
# practice: little data, train little).
AUTO_TABLE = (
    (10, "head", "fewer than 10 labeled images per class: feature extraction, backbone frozen"),
    (100, 0.25, "10-99 per class: the last 25% of backbone blocks"),
    (1000, 0.5, "100-999 per class: the last 50% of backbone blocks"),
    (math.inf, 1.0, "1000 or more per class: the whole backbone"),
)
_BATCHNORM = ("frozen", "train", "adapt")


def weighted_layers(model):
    """Leaf layers that own trainable weights, in the model's order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if not layer._layers and getattr(layer, "_trainable_variables", None)]


def block_of(layer_name):
    for pattern in _BLOCK_PATTERNS:
        match = pattern.search(layer_name)
        if match:
            return match.group(1)
    return layer_name


def find_blocks(model):
    """``[(block name, [layers])]`` from input to output: named stages of keras.applications
    models, otherwise one block per layer with weights."""
    blocks = {}
    for layer in weighted_layers(model):
        blocks.setdefault(block_of(layer.name), []).append(layer)
    return list(blocks.items())


def auto_choice(labeled_per_class):
    for limit, choice, _ in AUTO_TABLE:
        if labeled_per_class < limit:
            return choice
    return 1.0


@keras.saving.register_keras_serializable(package="domadapt")
class FineTune(Strategy):
    """Fine-tune a pretrained backbone without destroying what it knows.

    Args:
        trainable: what may train in the backbone (the head always trains):
            ``"auto"`` (from labeled images per class, see ``AUTO_TABLE``: < 10 head
            only; < 100 last 25% of blocks; < 1000 last 50%; else all), ``"head"``,
            ``"all"``, ``"last:N"`` (last N layers with weights), ``"last:0.3"`` (a
            fraction of them), a regular expression matched against layer names, or a
            callable ``layer -> bool``. "Labeled images" are ``target_labeled`` when
            given, else the source.
        unfreeze: ``None`` (all of ``trainable`` from the start) or ``"gradual"``:
            epochs [0, every) train the head only, then one more block of
            ``trainable`` (from the top) unfreezes every ``every`` epochs.
        every: epochs between two unfreezing steps.
        backbone_lr: learning-rate multiplier of the top backbone block (head: 1).
        decay: each block below gets another factor ``decay`` (layer-wise rates).
        batchnorm: ``"frozen"`` (BN layers in inference mode, statistics kept: the
            usual choice for small data), ``"train"`` (BN layers train with their
            block), ``"adapt"`` (frozen while training, then AdaBN: statistics
            re-estimated on the target images when ``fit`` ends).
        target_weight: weight of the labeled-target classification loss (overrides
            ``fit(target_labeled_weight=)``).
        verbose: print the split once when ``fit`` starts.

    Blocks come from the backbone's structure: keras.applications stage names, else
    one block per layer with weights. At each ``fit`` the learning-rate multipliers
    are installed as ``da.parameter_groups.ParameterGroups`` (also kept in
    ``self.parameter_groups``), applied inside the optimizer step; unfreezing
    rebuilds only the train function, not the optimizer state.
    ``batchnorm="adapt"`` needs ``fit(target=)``: checked before the first step.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 3)])
    adapter = da.DomainAdapter(backbone, num_classes=3,
                               strategies=[da.FineTune(trainable="last:1", backbone_lr=0.1)])
    ```
    """

    uses_target = False

    def __init__(self, trainable="auto", unfreeze=None, every=1, backbone_lr=1.0, decay=1.0, batchnorm="frozen",
                 target_weight=None, verbose=True, **kwargs):
        super().__init__(**kwargs)
        self.trainable_spec = self._check_spec(trainable)
        if unfreeze not in (None, "gradual"):
            raise ValueError(f"Argument `unfreeze` must be None or 'gradual'; received unfreeze={unfreeze!r}.")
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"Argument `every` must be a positive integer; received every={every!r}.")
        for name, value in (("backbone_lr", backbone_lr), ("decay", decay)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 10:
                raise ValueError(f"Argument `{name}` must be a number in (0, 10]; received {name}={value!r}.")
        if batchnorm not in _BATCHNORM:
            raise ValueError(f"Argument `batchnorm` must be one of {_BATCHNORM}; received batchnorm={batchnorm!r}.")
        if target_weight is not None and (isinstance(target_weight, bool) or not isinstance(target_weight, numbers.Real)
                                          or not math.isfinite(target_weight) or target_weight < 0):
            raise ValueError(f"Argument `target_weight` must be a non-negative number; received {target_weight!r}.")
        self.unfreeze = unfreeze
        self.every = int(every)
        self.backbone_lr = float(backbone_lr)
        self.decay = float(decay)
        self.batchnorm = batchnorm
        self.target_weight = None if target_weight is None else float(target_weight)
        if not isinstance(verbose, bool):  # bool("no") is True
            raise TypeError(f"Argument `verbose` must be True or False; received verbose={verbose!r}.")
        self.verbose = verbose
        self.schedule = []  # [(epoch, [layer names unfrozen then])] for gradual unfreezing
        self.parameter_groups = None
        self._callbacks = []

    @property
    def needs_target(self):
        return self.batchnorm == "adapt"  # AdaBN re-estimates statistics on the target images

    @staticmethod
    def _check_spec(spec):
        if callable(spec) or spec in ("auto", "head", "all"):
            return spec
        if isinstance(spec, str):
            if spec.startswith("last:"):
                amount = spec[5:]
                try:
                    value = float(amount) if "." in amount else int(amount)
                except ValueError:
                    value = -1
                if not (isinstance(value, int) and value >= 0) and not (isinstance(value, float) and 0 < value <= 1):
                    raise ValueError(
                        f"Argument `trainable`: 'last:N' takes a count (last:20) or a fraction in (0, 1] "
                        f"(last:0.3); received {spec!r}."
                    )
                return spec
            try:
                re.compile(spec)
            except re.error as error:
                raise ValueError(f"Argument `trainable`: {spec!r} is not a valid regular expression ({error}).") from None
            return spec
        raise TypeError(
            "Argument `trainable` must be 'auto', 'head', 'all', 'last:N', 'last:F', a regular expression or a "
            f"callable layer -> bool; received {spec!r}."
        )

    # ------------------------------------------------------------------ choosing layers
    def _candidate_layers(self, backbone, labeled_per_class):
        layers = weighted_layers(backbone)
        blocks = find_blocks(backbone)
        spec = self.trainable_spec
        if spec == "auto":
            choice = auto_choice(labeled_per_class)
            if choice == "head":
                return []
            count = math.ceil(choice * len(blocks))
            return [layer for _, members in blocks[len(blocks) - count:] for layer in members]
        if spec == "head":
            return []
        if spec == "all":
            return layers
        if callable(spec):
            return [layer for layer in layers if spec(layer)]
        if spec.startswith("last:"):
            amount = spec[5:]
            count = math.ceil(float(amount) * len(layers)) if "." in amount else int(amount)
            return layers[len(layers) - min(count, len(layers)):]
        return [layer for layer in layers if re.search(spec, layer.name)]

    def on_fit_start(self, context):
        view = context.adapter
        backbone = view.backbone
        counted = context.target_labeled_size if context.target_labeled_size is not None else context.source_size
        per_class = (counted or 0) / view.num_classes
        candidates = self._candidate_layers(backbone, per_class)
        blocks = find_blocks(backbone)
        candidate_ids = {id(layer) for layer in candidates}
        candidate_blocks = [(name, [l for l in members if id(l) in candidate_ids]) for name, members in blocks]
        candidate_blocks = [(name, members) for name, members in candidate_blocks if members]

        backbone.trainable = True  # leaf flags below decide; a frozen container would hide them
        for layer in weighted_layers(backbone):
            layer.trainable = False
        self._callbacks = []
        if self.unfreeze == "gradual":
            self.schedule = [
                (self.every * (position + 1), [layer.name for layer in members])
                for position, (_, members) in enumerate(reversed(candidate_blocks))
            ]
            self._callbacks.append(_GradualUnfreezing(self, view))
        else:
            self.schedule = []
            self.set_trainable(backbone, {layer.name for layer in candidates})

        # Layer-wise learning rates: the top block gets backbone_lr, each one below another factor decay.
        self.parameter_groups = ParameterGroups(
            ([v for layer in members for v in layer._trainable_variables], self.backbone_lr * self.decay**depth)
            for depth, (_, members) in enumerate(reversed(candidate_blocks))
        )
        view.set_parameter_groups(self.parameter_groups)
        if self.target_weight is not None and context.target_labeled_size is not None:
            view.set_target_labeled_weight(self.target_weight)
        # Under bn_mode="domain" the adapter re-estimates every BN layer on the target at
        # the end of fit; doing it here too would only repeat the pass.
        if self.batchnorm == "adapt" and not getattr(view, "reestimates_batchnorm_on_target", False):
            self._callbacks.append(_AdaptAtEnd(view.classifier, view.backbone, context.target_images))
        if self.verbose:
            self._print_split(blocks, candidate_blocks, per_class)

    def set_trainable(self, backbone, names):
        """Train exactly the weighted layers named (BN layers only with batchnorm='train')."""
        for layer in weighted_layers(backbone):
            is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = layer.name in names and (self.batchnorm == "train" or not is_batchnorm)
        if self.batchnorm != "train":
            for layer in batchnorm_layers(backbone):  # also BN layers without weights (center=scale=False)
                layer.trainable = False

    def _print_split(self, blocks, candidate_blocks, per_class):
        names = [name for name, _ in candidate_blocks]
        shown = ", ".join(names[-6:]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        how = "gradually, one block every %d epoch(s) from the top" % self.every if self.unfreeze else "from the start"
        spec = self.trainable_spec if isinstance(self.trainable_spec, str) else "callable"
        print(
            f"FineTune: backbone has {len(blocks)} blocks; trainable={spec!r} "
            f"({per_class:.0f} labeled images per class) -> head + {len(candidate_blocks)} blocks train "
            f"{how}{': ' + shown if names else ''}; {len(blocks) - len(candidate_blocks)} blocks frozen; "
            f"batch norm {self.batchnorm}; backbone lr x{self.backbone_lr:g}, decay {self.decay:g}."
        )

    def callbacks(self):
        return list(self._callbacks)

    def get_config(self):
        spec = self.trainable_spec
        if callable(spec):
            spec = keras.saving.serialize_keras_object(spec)
        return {**super().get_config(), "trainable": spec, "unfreeze": self.unfreeze, "every": self.every,
                "backbone_lr": self.backbone_lr, "decay": self.decay, "batchnorm": self.batchnorm,
                "target_weight": self.target_weight, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("trainable"), dict):
            config["trainable"] = keras.saving.deserialize_keras_object(config["trainable"])
        return cls(**config)


class _GradualUnfreezing(keras.callbacks.Callback):
    """At the start of each epoch, unfreeze the blocks whose time has come (resumes by epoch number)."""

    def __init__(self, strategy, view):
        super().__init__()
        self.strategy = strategy
        self.view = view
        self.unfrozen = set()

    def on_epoch_begin(self, epoch, logs=None):
        due = {name for start, names in self.strategy.schedule if epoch >= start for name in names}
        if due == self.unfrozen:
            return
        self.strategy.set_trainable(self.view.backbone, due)
        self.unfrozen = due
        # Trainable variables changed: retrace the step. The optimizer was built on
        # every variable at fit start, so the state of layers already training stays.
        self.view.request_retrace()


class _AdaptAtEnd(keras.callbacks.Callback):
    """AdaBN when training ends: batch-norm statistics re-estimated on the target images."""

    def __init__(self, classifier, backbone, target_images):
        super().__init__()
        self.classifier, self.backbone, self.target_images = classifier, backbone, target_images

    def on_train_end(self, logs=None):
        if batchnorm_layers(self.backbone):  # else there are no statistics to re-estimate
            adapt_batchnorm(self.classifier, self.target_images)
