"""Train candidate adaptations and pick one without target labels."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from domadapt.strategy import Recipe, Strategy, flatten_strategies
from domadapt.data import without_labels
from domadapt.validators.base import images_of
from domadapt.validators.compare import DEFAULT_VALIDATORS, ComparisonTable, compare, resolve_validators

SOURCE_ONLY = "source-only"


@dataclass
class Selection:
    """What :func:`select` returns.

    Attributes:
        name: the picked candidate (``"source-only"`` means: do not adapt).
        adapter: the picked candidate's trained ``da.DomainAdapter``.
        table: the :class:`ComparisonTable` of every candidate's validator scores.
        adapters: ``{candidate: trained adapter}``, to re-rank with ``da.compare``.
        notes: what ``select`` did on its own (a source-only candidate added, the
            source split for validation).
    """

    name: str
    adapter: keras.Model
    table: ComparisonTable
    adapters: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __str__(self):
        return "\n".join([str(self.table), *self.notes])


def select(candidates, source, target, *, build_adapter=None, validation_source=None, validation_split=0.2,
           validators=DEFAULT_VALIDATORS, **fit_kwargs):
    """Train each candidate adaptation, score them without target labels, return the pick.

    Use it when you have labeled source data and unlabeled target data and must
    choose among recipes (or weights) without a labeled target set. Each candidate
    gets a fresh model and the same training; each is scored on held-out labeled
    source and on the unlabeled target by the unsupervised validators, and
    :func:`da.compare`'s rule picks one (:func:`recommend`: set aside candidates more
    than 15 points below the best source accuracy and collapsed ones, then the best
    information maximisation (Shi & Sha 2012); chosen among 920 rules on the shifts
    of ``benchmarks/shifts.py`` and ``benchmarks/validator_selection.py``, with its
    leave-one-shift-out numbers in ``benchmarks/results/selection.md``).
    A source-only candidate is always trained (added when missing, with a
    warning), so the pick can be "do not adapt". Target labels are never read.

    Args:
        candidates: ``{name: strategies}``, where strategies is what
            ``DomainAdapter(strategies=...)`` takes (a list, a ``da.Recipe``, one
            strategy, or ``[]`` / ``None`` for source-only), or ``{name: factory}``
            with ``factory()`` returning a compiled ``da.DomainAdapter``. Strategy
            objects are copied (``from_config``), never trained themselves.
        source: labeled source ``(images, labels)`` arrays (a dataset when
            ``validation_source`` is given).
        target: unlabeled target images (an array or a dataset; labels in an
            ``(images, labels)`` pair are dropped unread). Used to train and to score.
        build_adapter: ``build_adapter(strategies) -> compiled da.DomainAdapter``
            with a fresh backbone on each call; needed for strategy candidates and
            to add the source-only candidate.
        validation_source: held-out labeled source ``(images, labels)`` for the
            validators; default: ``validation_split`` of ``source``, drawn with
            ``seed`` and not trained on.
        validators: names or ``Validator`` objects, as in :func:`da.compare`.
        **fit_kwargs: passed to every ``adapter.fit`` (``epochs``, ``batch_size``,
            ``seed``, ...). With ``seed``, Keras' global seeds are set to it before
            each candidate is built, so candidates start from the same weights.
            Callbacks passed here are the same objects for every candidate: a
            stateful one (``ModelCheckpoint(save_best_only=True)`` keeps its best
            value and its file from one candidate to the next) belongs in a
            factory candidate, which builds its own.

    Returns:
        A :class:`Selection`: ``.name``, ``.adapter`` (trained), ``.table``, ``.adapters``.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    xs, ys = np.random.rand(200, 8, 8, 1), np.random.randint(0, 2, 200)
    xt = np.random.rand(100, 8, 8, 1) + 0.3
    def build_adapter(strategies):
        backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(8)])
        adapter = da.DomainAdapter(backbone, num_classes=2, strategies=strategies)
        adapter.compile(optimizer="adam")
        return adapter
    result = da.select({"mcc": [da.MCC()], "bnm": [da.BNM()]}, (xs, ys), xt,
                       build_adapter=build_adapter, epochs=1, seed=0, verbose=0)
    print(result.name, result.table.recommended)
    ```
    """
    recipes, notes = _checked_candidates(candidates, build_adapter)
    resolve_validators(validators)  # a bad name fails now, not after every candidate has trained
    seed = fit_kwargs.get("seed")
    train_source, validation_source, split_note = _split_source(source, validation_source, validation_split, seed)
    notes += split_note
    target_images = without_labels(target)
    if not isinstance(target_images, tf.data.Dataset):  # arrays are checked before any training
        target_images = images_of(target_images, "target")
    for message in notes:
        if message.startswith("added"):
            warnings.warn(message, stacklevel=2)

    trained = {}
    for name, recipe in recipes.items():
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        if not _is_recipe(recipe):  # a factory
            adapter = _checked_adapter(recipe(), name, "its factory")
        else:
            adapter = _checked_adapter(build_adapter(_copied(recipe)), name, "build_adapter")
        adapter.fit(source=train_source, target=without_labels(target), **fit_kwargs)
        trained[name] = adapter
    if isinstance(target_images, tf.data.Dataset):
        # Read once, after a model tells batches from single images: every candidate is scored on the same
        # images (a shuffled dataset gives another order, hence another sample, at each pass).
        target_images = images_of(target_images, "target", next(iter(trained.values())))
    table = compare(trained, source=validation_source, target=target_images, validators=validators)
    return Selection(table.recommended, trained[table.recommended], table, trained, notes)


def _is_recipe(value):
    return value is None or isinstance(value, (Strategy, Recipe, list, tuple))


def _checked_candidates(candidates, build_adapter):
    if not isinstance(candidates, dict) or not candidates:
        raise TypeError("Argument `candidates` must be a non-empty dict {name: strategies or adapter factory}; "
                        f"received {type(candidates).__name__}: {candidates!r}.")
    for name, value in candidates.items():
        if not isinstance(name, str):
            raise TypeError(f"Argument `candidates`: names must be strings; received {name!r}.")
        if _is_recipe(value):
            flatten_strategies(value)  # raises a TypeError naming what came
        elif not callable(value):
            raise TypeError(f"Argument `candidates`: {name!r} must be strategies (a list, a da.Recipe, a strategy, "
                            f"None) or a factory returning a compiled da.DomainAdapter; received {value!r}.")
    needs_builder = [n for n, v in candidates.items() if _is_recipe(v)]
    if build_adapter is not None and not callable(build_adapter):
        raise TypeError(f"Argument `build_adapter` must be callable (strategies -> compiled da.DomainAdapter); "
                        f"received {build_adapter!r}.")
    if needs_builder and build_adapter is None:
        raise ValueError(f"Argument `build_adapter` is required: candidates {needs_builder} are strategies, and "
                         "select needs build_adapter(strategies) -> compiled da.DomainAdapter to train them.")
    recipes, notes = dict(candidates), []
    if not any(_is_recipe(v) and not flatten_strategies(v) for v in candidates.values()):
        if build_adapter is None:
            raise ValueError("Argument `candidates` has no source-only entry and select cannot add one without "
                             "`build_adapter`: add {'source-only': []} with build_adapter=..., or pass build_adapter.")
        name = SOURCE_ONLY if SOURCE_ONLY not in candidates else f"{SOURCE_ONLY} (added)"
        recipes[name] = []
        notes.append(f"added {name!r} (no strategies) to the candidates, so that the pick can be not to adapt")
    return recipes, notes


def _copied(recipe):
    """Fresh strategy objects from their configs: the user's are never set up or trained.

    Functions the user passed (a ``schedule``, FineTune's ``trainable``) are handed over as they are: their
    serialised form needs a registered name to load, and an in-memory copy does not (a lambda schedule failed).
    """
    copies = []
    for strategy in flatten_strategies(recipe):
        config = strategy.get_config()
        for key in config:
            original = getattr(strategy, f"{key}_spec", getattr(strategy, key, None))
            if callable(original) and not isinstance(original, (type, keras.layers.Layer)):
                config[key] = original
        copies.append(type(strategy).from_config(config))
    return copies


def _checked_adapter(adapter, name, made_by):
    from domadapt.adapter import DomainAdapter

    if not isinstance(adapter, DomainAdapter):
        raise TypeError(f"Candidate {name!r}: {made_by} must return a da.DomainAdapter; "
                        f"received {type(adapter).__name__}.")
    if getattr(adapter, "optimizer", None) is None:
        raise ValueError(f"Candidate {name!r}: {made_by} returned an adapter that is not compiled; "
                         "call adapter.compile(optimizer=...) before returning it.")
    return adapter


def _split_source(source, validation_source, validation_split, seed):
    if validation_source is not None:
        if not (isinstance(validation_source, (tuple, list)) and len(validation_source) == 2):
            raise TypeError("Argument `validation_source` must be held-out labeled source (images, labels); "
                            f"received {type(validation_source).__name__}.")
        return source, validation_source, []
    if isinstance(source, tf.data.Dataset) or not (isinstance(source, (tuple, list)) and len(source) == 2):
        raise TypeError("Argument `source` must be (images, labels) arrays to hold part of it out for validation; "
                        f"received {type(source).__name__}. Pass validation_source=(images, labels) with a dataset.")
    if not (isinstance(validation_split, float) and 0.0 < validation_split < 1.0):
        raise ValueError(f"Argument `validation_split` must be a float in (0, 1); received {validation_split!r}.")
    images, labels = np.asarray(source[0]), np.asarray(source[1])
    if len(images) != len(labels):
        raise ValueError(f"Argument `source`: {len(images)} images but {len(labels)} labels.")
    num_validation = int(round(validation_split * len(images)))
    if num_validation < 2 or len(images) - num_validation < 1:
        raise ValueError(f"Argument `validation_split`: {validation_split} of {len(images)} source images leaves "
                         f"{num_validation} for validation (at least 2) and {len(images) - num_validation} to train.")
    order = np.random.default_rng(0 if seed is None else int(seed)).permutation(len(images))
    held, kept = np.sort(order[:num_validation]), np.sort(order[num_validation:])
    note = (f"held out {num_validation} of {len(images)} labeled source images for validation "
            f"(validation_split={validation_split})")
    return (images[kept], labels[kept]), (images[held], labels[held]), [note]


__all__ = ["Selection", "select"]
