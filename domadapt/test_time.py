"""Test-time adaptation: adapt a trained Keras classifier to a new domain from unlabeled target batches alone.

No source data, no labels, no retraining: the classifier that meets rain, fog or a
new camera at deployment adapts on the images it is asked to classify. Two forms:

* :func:`adapt_at_test_time` returns an adapted **copy** of the model (a plain Keras
  classifier to save and deploy); the model you pass is never modified.
* :class:`TestTimeAdapter` adapts online: ``predict(batch)`` adapts on the batch and
  predicts it in one call, for streams of any batch size (1 included).

Methods (``method=`` a string or an object of this module, for other settings):

* ``"norm"`` / :class:`Norm`: re-estimate the BatchNormalization statistics on the
  target (AdaBN, Li et al. 2016; Schneider et al. 2020). No gradient step.
* ``"tent"`` / :class:`Tent`: minimise the prediction entropy over the scale and
  shift of the BatchNormalization / GroupNormalization / LayerNormalization layers
  only, BN normalising with the test batch statistics (TENT, Wang et al. ICLR 2021).
* ``"eata"`` / :class:`EATA`: TENT restricted to reliable, non-redundant
  samples, weighted by confidence, with an optional anchor to the source affine
  parameters (EATA, Niu et al. ICML 2022). Chosen over SAR (Niu et al. ICLR 2023) because the
  sample filters stop the drift itself, at one forward/backward per batch,
  while SAR's sharpness-aware step costs two and relies on resets; the reset on
  collapse is kept here as the guard every method runs under.
* ``"infomax"`` / :class:`InfoMax` (the default): EATA's sample filters with
  information maximisation (SHOT-IM, Liang et al. ICML 2020: entropy of each
  prediction minus the entropy of the class marginal) at a 3x learning rate, and 3
  passes in :func:`adapt_at_test_time`. Chosen on development shifts, reported on
  held-out ones (``benchmarks/results/test_time.md``).

Every gradient method runs under a collapse guard: every ``GUARD_IMAGES`` images the
recent predictions are checked with :func:`domadapt.validators.compare.collapse_reason`
(predictions the same for every image, near-uniform, or one class for almost every
image) and with the predicted-class spread (the perplexity of the predicted-class
histogram falling below half of its first value); on collapse the adapter returns to
its last healthy state and warns. :func:`adapt_at_test_time` also judges the copy it
returns, with the same two rules against the source model's predictions on up to
``FINAL_CHECK_IMAGES`` target images: the stream's checks miss a target shorter than
one window, the images after the last check and the last steps.

Small batches: a BatchNormalization layer normalises with its batch statistics mixed
with a running estimate of the target's, weighted ``prior / (prior + n)`` for a batch
of ``n`` images (the prior-weighted BN of Schneider et al. 2020, with the running
target estimate, which starts at the source statistics, as the prior).
``statistics_prior=0`` gives TENT's pure batch statistics.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from domadapt import ops as da_ops
from domadapt.batchnorm import batchnorm_layers, check_not_endless, reestimate_batchnorm_statistics
from domadapt._checks import check_seed
from domadapt.data import check_finite_images, without_labels
from domadapt.validators.compare import collapse_reason

__all__ = ["EATA", "InfoMax", "Norm", "Tent", "TestTimeAdapter", "adapt_at_test_time"]

# Images between two health checks of the recent predictions.
GUARD_IMAGES = 256
# The running target statistics move by n / STATISTICS_MEMORY per batch of n images.
STATISTICS_MEMORY = 256
# Learning rates are given for batches of this size and scaled by n / REFERENCE_BATCH below it.
REFERENCE_BATCH = 64
# A spread (perplexity of the predicted-class histogram) below this share of the first
# healthy window's counts as a collapse onto a few classes.
SPREAD_DROP = 0.5
_NORMALIZATION_LAYERS = (keras.layers.BatchNormalization, keras.layers.GroupNormalization,
                         keras.layers.LayerNormalization)
_MISSING = object()


# =========================================================================== methods

class Norm:
    """Re-estimate the BatchNormalization statistics on target images (AdaBN, Li et al. 2016).

    :func:`adapt_at_test_time` sets every BN layer's moving statistics to its
    statistics over the whole target (``da.reestimate_batchnorm_statistics``);
    :class:`TestTimeAdapter` normalises each batch with its statistics mixed with a
    running target estimate (Schneider et al. 2020). No weight other than the moving
    statistics changes.

    Args:
        statistics_prior: weight, in images, of the running statistics against a batch's own.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.test_time import Norm
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    adapted = da.adapt_at_test_time(model, np.random.rand(256, 4) + 3.0, method=Norm())
    ```
    """

    name = "norm"
    uses_gradients = False

    def __init__(self, statistics_prior=16):
        self.statistics_prior = _non_negative(statistics_prior, "statistics_prior")

    def get_config(self):
        return {"statistics_prior": self.statistics_prior}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class Tent(Norm):
    """Entropy minimisation over the normalisation layers' scale and shift (TENT, Wang et al. ICLR 2021).

    Only the ``gamma``/``beta`` of BatchNormalization, GroupNormalization and
    LayerNormalization layers change (frozen BN layers of keras.applications
    backbones included); BN normalises with the test batch statistics. One Adam step
    per batch on the mean entropy of its predictions, minus ``diversity`` times the
    entropy of the target's class marginal when ``diversity > 0`` (information
    maximisation, SHOT-IM, Liang et al. ICML 2020: confident predictions that still
    cover every class, so entropy minimisation cannot collapse onto one).

    Args:
        learning_rate: Adam's learning rate for a batch of 64 (scaled by n/64 below).
        statistics_prior: weight, in images, of the running BN statistics (0: pure batch statistics, as TENT).
        diversity: weight of the class-marginal entropy term (0: TENT). It pulls the
            predicted classes towards equal shares: leave it at 0 on targets whose
            classes are far from balanced.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.test_time import Tent
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    adapted = da.adapt_at_test_time(model, np.random.rand(256, 4), method=Tent(learning_rate=1e-3))
    ```
    """

    name = "tent"
    uses_gradients = True
    # Passes of da.adapt_at_test_time when its `epochs` is None.
    default_epochs = 1

    def __init__(self, learning_rate=1e-3, statistics_prior=16, diversity=0.0):
        super().__init__(statistics_prior)
        self.learning_rate = _positive(learning_rate, "learning_rate")
        self.diversity = _non_negative(diversity, "diversity")

    def get_config(self):
        return {"learning_rate": self.learning_rate, **super().get_config(), "diversity": self.diversity}

    def sample_weights(self, entropies, probabilities, state):
        """Per-sample weights of the entropy loss (TENT: all ones); ``state`` holds the method's variables."""
        return ops.ones_like(entropies)

    def anchor_weight_value(self):
        return 0.0


class EATA(Tent):
    """TENT on reliable, non-redundant samples, optionally anchored to the source parameters (EATA, Niu et al. 2022).

    * reliable: only samples with entropy below ``entropy_margin * log(K)`` adapt,
      weighted by ``exp(-(H - margin))`` (confident samples count more);
    * non-redundant: a sample whose prediction has cosine similarity above
      ``redundancy_margin`` with the moving average of the adapted predictions is
      skipped, so no class can take over the updates (``"auto"``: 1.25/sqrt(K), EATA's
      0.4 on 10 classes and about its 0.05 on 1,000);
    * anti-forgetting: ``anchor_weight * ||theta - theta_source||^2`` on the affine
      parameters. EATA weights it by a Fisher estimate from source images; without
      source data the weight is uniform. Off by default: under Adam even 0.1 held
      the parameters at the source (no gain over "norm" on the fogged digits of
      ``tests/test_test_time.py``), while the filters alone did not decay over 20
      passes; the collapse guard's reset is the safety net instead.

    Defaults differ from EATA's in one place: ``entropy_margin=0.6`` (EATA: 0.4). On
    10 classes 0.4 log K let only 4% of the fogged digits through (53.3% after 20
    passes, as "norm"); 0.6 gave 58.5% / 58.8% (seeds 0 / 1) after 20 passes against
    53.3% / 55.3% for "norm" and 42.4% / 49.2% for TENT.

    Args:
        learning_rate: Adam's learning rate for a batch of 64 (scaled by n/64 below).
        entropy_margin: reliability threshold as a fraction of log(num_classes).
        redundancy_margin: cosine threshold, or ``"auto"``.
        anchor_weight: weight of the anchor to the source affine parameters.
        statistics_prior: weight, in images, of the running BN statistics.
        diversity: weight of the class-marginal entropy term (see :class:`Tent`; 0: EATA).

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.test_time import EATA
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    adapted = da.adapt_at_test_time(model, np.random.rand(256, 4), method=EATA(anchor_weight=1.0))
    ```
    """

    name = "eata"

    def __init__(self, learning_rate=1e-3, entropy_margin=0.6, redundancy_margin="auto", anchor_weight=0.0,
                 statistics_prior=16, diversity=0.0):
        super().__init__(learning_rate, statistics_prior, diversity)
        self.entropy_margin = _positive(entropy_margin, "entropy_margin")
        if redundancy_margin != "auto":
            redundancy_margin = _positive(redundancy_margin, "redundancy_margin")
        self.redundancy_margin = redundancy_margin
        self.anchor_weight = _non_negative(anchor_weight, "anchor_weight")

    def get_config(self):
        return {"learning_rate": self.learning_rate, "entropy_margin": self.entropy_margin,
                "redundancy_margin": self.redundancy_margin, "anchor_weight": self.anchor_weight,
                "statistics_prior": self.statistics_prior, "diversity": self.diversity}

    def anchor_weight_value(self):
        return self.anchor_weight

    def sample_weights(self, entropies, probabilities, state):
        num_classes = ops.shape(probabilities)[-1]
        margin = self.entropy_margin * math.log(int(num_classes))
        redundancy = (1.25 / math.sqrt(int(num_classes)) if self.redundancy_margin == "auto"
                      else self.redundancy_margin)
        reliable = ops.cast(entropies < margin, "float32")
        average = state["average_prediction"]
        similarity = ops.sum(probabilities * average[None, :], axis=-1) / (
            ops.norm(probabilities, axis=-1) * ops.norm(average) + 1e-8)
        # Before any sample was selected the average is all zeros: nothing is redundant.
        fresh = ops.logical_or(similarity < redundancy, ops.sum(average) == 0.0)
        selected = reliable * ops.cast(fresh, "float32")
        count = ops.sum(selected)
        selected_mean = ops.sum(probabilities * selected[:, None], axis=0) / ops.maximum(count, 1.0)
        updated = ops.where(ops.sum(average) == 0.0, selected_mean, 0.9 * average + 0.1 * selected_mean)
        state["average_prediction"].assign(ops.where(count > 0, ops.stop_gradient(updated), average))
        return selected * ops.stop_gradient(ops.exp(-(entropies - margin)))


class InfoMax(EATA):
    """EATA's reliable, non-redundant samples with information maximisation, in 3 passes (the default method).

    The loss is EATA's weighted entropy of the selected samples minus ``diversity``
    times the entropy of the target's class marginal (SHOT-IM, Liang et al. ICML 2020):
    each prediction is made confident while the predictions as a whole keep covering
    every class. Plain entropy minimisation drifts towards the classes a shift already
    favours; the marginal term pushes back, which lets a larger learning rate and more
    passes help instead of hurt (on the development shifts, below).
    The marginal is the batch mean mixed with a running estimate (weight
    ``statistics_prior / (statistics_prior + n)``), so batches of 1-8 images do not
    turn the term into entropy maximisation of each image.

    Chosen on development shifts only (defocus + JPEG, sodium colour cast; Fashion-MNIST
    BN CNN, 3 seeds, one-shot, ``benchmarks/results/test_time.md``), then reported on
    fog, low light and rain: over "norm", EATA gained +0.3 points on the development
    shifts, EATA with a 3x learning rate +0.7, with 3 passes +0.5, with the marginal
    term (weight 1) +0.7; all three together +2.5, with weight 3 +3.6, 5 +4.1, 10 +4.1
    (a plateau: 5 is its start); weight 5 at EATA's learning rate 1e-3: +2.4. On the
    held-out shifts (3 seeds, one-shot): +12.4 ± 1.8 points over "norm" on average (fog
    21.4% -> 46.8%, low light 74.6% -> 78.1%, rain 68.0% -> 76.3%); over a 10-pass
    fog -> low light -> rain stream it rose from 55.7% to 66.8% (EATA 54.9% -> 56.9%).

    The marginal term assumes roughly balanced classes in the target: on a target where
    one class truly dominates, use ``"eata"`` (no marginal term) or a smaller ``diversity``
    (not measured on imbalanced targets here).

    Args:
        learning_rate: Adam's learning rate for a batch of 64 (scaled by n/64 below).
        diversity: weight of the class-marginal entropy term.
        entropy_margin: EATA's reliability threshold as a fraction of log(num_classes).
        redundancy_margin: EATA's cosine threshold, or ``"auto"``.
        statistics_prior: weight, in images, of the running BN statistics and class marginal.

    ``da.adapt_at_test_time`` takes ``default_epochs = 3`` passes with this method when
    ``epochs`` is not given; :class:`TestTimeAdapter` takes one step per batch.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    from domadapt.test_time import InfoMax
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax")])
    adapted = da.adapt_at_test_time(model, np.random.rand(256, 4) + 1.0, method=InfoMax(diversity=1.0))
    ```
    """

    name = "infomax"
    default_epochs = 3

    def __init__(self, learning_rate=3e-3, diversity=5.0, entropy_margin=0.6, redundancy_margin="auto",
                 statistics_prior=16):
        super().__init__(learning_rate, entropy_margin, redundancy_margin, 0.0, statistics_prior, diversity)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "diversity": self.diversity,
                "entropy_margin": self.entropy_margin, "redundancy_margin": self.redundancy_margin,
                "statistics_prior": self.statistics_prior}


METHODS = {"norm": Norm, "tent": Tent, "eata": EATA, "infomax": InfoMax}
DEFAULT_METHOD = "infomax"


def _method(method):
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"Argument `method` must be one of {sorted(METHODS)} or a method object "
                             f"(domadapt.test_time.Norm, Tent, EATA, InfoMax); received method={method!r}.")
        return METHODS[method]()
    if isinstance(method, Norm):
        return method
    raise TypeError(f"Argument `method` must be a string ({sorted(METHODS)}) or a domadapt.test_time.Norm, Tent, "
                    f"EATA or InfoMax object; received {type(method).__name__}.")


def _positive(value, name):
    # Finite too: an infinite learning rate or statistics prior turned every prediction into NaN.
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0
            or not np.isfinite(value)):
        raise ValueError(f"Argument `{name}` must be a finite positive number; received {name}={value!r}.")
    return float(value)


def _non_negative(value, name):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0
            or not np.isfinite(value)):
        raise ValueError(f"Argument `{name}` must be a finite number >= 0; received {name}={value!r}.")
    return float(value)


# =========================================================================== the model copy

def _classifier(model):
    classifier = getattr(model, "classifier", None) if not isinstance(model, keras.Sequential) else None
    if isinstance(classifier, keras.Model):
        model = classifier  # a da.DomainAdapter
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a keras.Model or a da.DomainAdapter; received {type(model).__name__}.")
    try:
        shape = model.output_shape
    except (AttributeError, ValueError) as error:  # subclassed or not yet built: no static output shape
        raise TypeError(f"Argument `model` must be a built functional or Sequential classifier (test-time "
                        f"adaptation reads its output shape and works on a copy); received a "
                        f"{type(model).__name__} without a static output shape ({error}).") from error
    if not isinstance(shape, tuple) or len(shape) != 2 or not shape[-1] or shape[-1] < 2:
        raise ValueError(f"Argument `model` must be a classifier with one output of shape (batch, num_classes >= 2); "
                         f"its output shape is {shape}.")
    return model


def _copy(model):
    """A clone of ``model`` with its weights (and BN statistics) copied: the original is never touched."""
    try:
        clone = keras.models.clone_model(model)
    except Exception as error:  # subclassed models without get_config cannot be cloned
        raise TypeError(f"Argument `model` could not be copied with keras.models.clone_model ({error}); test-time "
                        "adaptation works on a copy and never modifies your model. Use a functional or Sequential "
                        "model, or give your subclassed model a get_config().") from error
    clone.set_weights(model.get_weights())
    return clone


def _normalization_layers(model):
    return [layer for layer in model._flatten_layers(include_self=True) if isinstance(layer, _NORMALIZATION_LAYERS)]


# =========================================================================== online form

class TestTimeAdapter:
    """Adapt a classifier online: ``predict(batch)`` adapts on the batch and predicts it, in one call.

    For a deployed model that sees a stream of unlabeled batches: each call takes one
    adaptation step on the batch (methods ``"infomax"``, ``"eata"``, ``"tent"``) or only updates the
    normalisation statistics (``"norm"``), then returns the adapted model's
    predictions for it. Works on a copy: the model passed in is never modified. Batches
    of 1-8 images are safe: BatchNormalization mixes the batch statistics with a
    running target estimate (see the module docs), and learning rates scale with the
    batch size below 64. A collapse guard checks the predictions every
    ``GUARD_IMAGES`` images and, on collapse, returns to the last healthy state with a
    warning. References: TENT (Wang et al. ICLR 2021), EATA (Niu et al. ICML 2022),
    prior-weighted BN (Schneider et al. NeurIPS 2020).

    Args:
        model: a trained Keras classifier (probabilities or logits out), or a ``da.DomainAdapter``.
        method: ``"infomax"`` (default), ``"eata"``, ``"tent"``, ``"norm"`` or a method object.
        episodic: reset to the source model before every batch (no memory between calls).

    Attributes:
        model: the adapted copy as a plain Keras model, its BN moving statistics set to the running target estimate.
        num_images: images seen since the last reset.
        num_resets: collapses caught by the guard.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, activation="softmax")])
    adapter = da.TestTimeAdapter(model, method="infomax")
    for batch in np.split(np.random.rand(64, 4).astype("float32") + 2.0, 8):
        probabilities = adapter.predict(batch)      # adapt on the batch, then predict it
    adapter.reset()                                 # back to the source model
    ```
    """

    def __init__(self, model, method=DEFAULT_METHOD, episodic=False):
        source = _classifier(model)
        self.method = _method(method)
        if not isinstance(episodic, bool):
            raise TypeError(f"Argument `episodic` must be True or False; received episodic={episodic!r}.")
        self.episodic = episodic
        self._model = _copy(source)
        self._batchnorm = batchnorm_layers(self._model)
        normalization = _normalization_layers(self._model)
        if not self._batchnorm and not self.method.uses_gradients:
            raise ValueError("Argument `model` has no BatchNormalization layers: method 'norm' re-estimates BN "
                             "statistics and has nothing to adapt. Use method='eata' or 'tent', which adapt "
                             "GroupNormalization/LayerNormalization scale and shift too.")
        self._parameters = [variable for layer in normalization for variable in (
            getattr(layer, "gamma", None), getattr(layer, "beta", None)) if variable is not None]
        if self.method.uses_gradients and not self._parameters:
            raise ValueError(f"Argument `model` has no BatchNormalization, GroupNormalization or LayerNormalization "
                             f"layer with a scale or shift: method {self.method.name!r} has no parameter to adapt.")
        # autocast=False: under mixed precision, reads of autocast variables inside a layer's call come back in
        # float16, and the patched BN call mixes them with float32 batch statistics (a raw TypeError).
        self._running = [(keras.Variable(layer.moving_mean.numpy(), trainable=False, autocast=False),
                          keras.Variable(layer.moving_variance.numpy(), trainable=False, autocast=False))
                         for layer in self._batchnorm]
        num_classes = int(source.output_shape[-1])
        self._state = {name: keras.Variable(np.zeros(num_classes, "float32"), trainable=False, autocast=False)
                       for name in ("average_prediction", "marginal")}
        self._source_parameters = [keras.Variable(v.numpy(), trainable=False) for v in self._parameters]
        self._batch_weight = keras.Variable(0.0, trainable=False, autocast=False)  # prior / (prior + n) of a batch
        self._memory_step = keras.Variable(0.0, trainable=False, autocast=False)   # n / STATISTICS_MEMORY, at most 1
        self._optimizer = None
        if self.method.uses_gradients:
            self._optimizer = keras.optimizers.Adam(learning_rate=self.method.learning_rate)
            self._optimizer.build(self._parameters)
        self._step = tf.function(self._step_fn, reduce_retracing=True)
        self._initial = self._snapshot()
        self._healthy = self._initial
        self._collapsed_from = None
        self._first_spread = None
        self._window = []
        self._window_images = 0
        self.num_images = 0
        self.num_resets = 0

    # --------------------------------------------------------------- public

    def predict(self, batch):
        """Adapt on ``batch`` (one step), then return the adapted model's outputs for it as a numpy array."""
        images = _as_batch(batch, self._model)
        if self.episodic:
            self.reset()
        count = int(images.shape[0])
        self._batch_weight.assign(self.method.statistics_prior / (self.method.statistics_prior + count))
        self._memory_step.assign(min(1.0, count / STATISTICS_MEMORY))
        if self._optimizer is not None:
            self._optimizer.learning_rate = self.method.learning_rate * min(1.0, count / REFERENCE_BATCH)
        with self._test_time_normalization():
            outputs = self._step(images)
        outputs = outputs.numpy()
        self.num_images += count
        self._guard(outputs)
        return outputs

    def reset(self):
        """Return to the source model: affine parameters, running statistics, optimizer and filters."""
        self._restore(self._initial)
        self._healthy = self._initial
        self._collapsed_from = None
        self._first_spread = None
        self._window, self._window_images = [], 0
        self.num_images = 0

    @property
    def model(self):
        """The adapted model (live: later ``predict`` calls keep adapting it; ``keras.models.clone_model`` plus
        ``set_weights`` for a snapshot). Its BN moving statistics are set to the running estimate on each access."""
        for layer, (mean, variance) in zip(self._batchnorm, self._running):
            layer.moving_mean.assign(mean.value)
            layer.moving_variance.assign(variance.value)
        return self._model

    # --------------------------------------------------------------- the step

    def _step_fn(self, images):
        if self._optimizer is None:
            return self._model(images, training=False)
        with tf.GradientTape() as tape:
            tape.watch([v.value for v in self._parameters])
            outputs = self._model(images, training=False)
            probabilities = self._probabilities(outputs)
            entropies = da_ops.entropy(probabilities)
            weights = self.method.sample_weights(entropies, ops.stop_gradient(probabilities), self._state)
            loss = ops.sum(weights * entropies) / ops.cast(ops.shape(entropies)[0], "float32")
            if self.method.diversity:
                loss = loss - self.method.diversity * da_ops.entropy(self._marginal(probabilities))
            anchor = self.method.anchor_weight_value()
            if anchor:
                loss = loss + anchor * ops.sum(ops.stack([
                    ops.sum(ops.square(v - s)) for v, s in zip(self._parameters, self._source_parameters)]))
        gradients = tape.gradient(loss, [v.value for v in self._parameters])
        self._optimizer.apply(gradients, self._parameters)
        return outputs

    def _marginal(self, probabilities):
        """The target's class marginal: the batch mean mixed with a running estimate as BN's statistics are.

        A batch of 1-8 images is no estimate of the marginal (for one image its entropy
        is the image's own, and maximising it would undo the entropy term), so it weighs
        ``prior / (prior + n)`` against the running mean of every prediction so far.
        """
        batch_mean = ops.mean(probabilities, axis=0)
        running = self._state["marginal"]
        fresh = ops.sum(running) == 0.0
        prior = ops.where(fresh, ops.stop_gradient(batch_mean), running)
        weight = ops.cast(self._batch_weight, "float32")
        step = ops.cast(self._memory_step, "float32")
        running.assign(ops.stop_gradient(prior + step * (batch_mean - prior)))
        return weight * ops.stop_gradient(prior) + (1.0 - weight) * batch_mean

    @staticmethod
    def _probabilities(outputs):
        # Rows that are non-negative and sum to 1 are probabilities already; anything else is logits. A float16
        # softmax misses 1 by up to ~2e-3 (measured 1.0e-3 to 1.6e-3), so the tolerance follows the output dtype;
        # probabilities are renormalised in float32.
        tolerance = 1e-3 if keras.backend.standardize_dtype(outputs.dtype) in ("float32", "float64") else 1e-2
        outputs = ops.cast(outputs, "float32")
        totals = ops.sum(outputs, axis=-1, keepdims=True)
        is_probability = ops.logical_and(ops.all(outputs >= 0.0), ops.all(ops.abs(totals - 1.0) < tolerance))
        return ops.where(is_probability, outputs / ops.maximum(totals, 1e-12), ops.softmax(outputs, axis=-1))

    def _test_time_normalization(self):
        adapter = self

        class _Patched:
            def __enter__(self):
                self.saved = [(layer, layer.__dict__.get("call", _MISSING)) for layer in adapter._batchnorm]
                for layer, running in zip(adapter._batchnorm, adapter._running):
                    object.__setattr__(layer, "call", _mixed_statistics_call(layer, running, adapter))

            def __exit__(self, *exc):
                for layer, call in self.saved:
                    if call is _MISSING:
                        object.__delattr__(layer, "call")
                    else:
                        object.__setattr__(layer, "call", call)

        return _Patched()

    # --------------------------------------------------------------- health

    def _guard(self, outputs):
        if self.method.uses_gradients is False or self.episodic:
            return
        self._window.append(outputs)
        self._window_images += len(outputs)
        if self._window_images < GUARD_IMAGES:
            return
        probabilities = np.asarray(self._probabilities(np.concatenate(self._window)))
        self._window, self._window_images = [], 0
        reason = collapse_reason(probabilities)
        spread = _class_spread(probabilities)
        if reason is None and self._first_spread is not None and spread < SPREAD_DROP * self._first_spread:
            reason = (f"its predictions narrow onto fewer classes (class-spread perplexity {spread:.2f}, "
                      f"{self._first_spread:.2f} at the first check)")
        if reason is None:
            if self._first_spread is None:
                self._first_spread = spread
            self._healthy = self._snapshot()
            self._collapsed_from = None
            return
        self.num_resets += 1
        # A state that collapses again before the next healthy check was already on the way down:
        # the second time, return to the source state (SAR's reset, Niu et al. 2023).
        repeated = self._healthy is self._collapsed_from
        target = self._initial if repeated else self._healthy
        self._collapsed_from = target
        self._restore(target)
        if self.num_resets == 1 or (repeated and self._healthy is not self._initial):
            warnings.warn(
                f"Test-time adaptation ({self.method.name}) stopped a collapse after {self.num_images} images: "
                f"{reason}. The adapter returned to its "
                f"{'source state' if repeated else 'last healthy state'} ({self.num_resets} collapse(s) so far; "
                "a lower learning rate or method='eata' adapts more safely).", RuntimeWarning, stacklevel=3)
            if repeated:
                self._healthy = self._initial

    def _snapshot(self):
        return {
            "parameters": [v.numpy() for v in self._parameters],
            "running": [(m.numpy(), v.numpy()) for m, v in self._running],
            "state": {k: v.numpy() for k, v in self._state.items()},
        }

    def _restore(self, snapshot):
        for variable, value in zip(self._parameters, snapshot["parameters"]):
            variable.assign(value)
        for (mean, variance), (mean_value, variance_value) in zip(self._running, snapshot["running"]):
            mean.assign(mean_value)
            variance.assign(variance_value)
        for name, value in snapshot["state"].items():
            self._state[name].assign(value)
        if self._optimizer is not None:
            for variable in self._optimizer.variables:
                variable.assign(ops.zeros_like(variable))
            self._optimizer.learning_rate = self.method.learning_rate


def _mixed_statistics_call(layer, running, adapter):
    """BN call normalising with ``w * running + (1 - w) * batch`` statistics, updating the running estimate."""
    running_mean, running_variance = running

    def call(inputs, training=None, mask=None):
        inputs = ops.cast(inputs, "float32")
        mean, variance = layer._moments(inputs, mask)
        weight = ops.cast(adapter._batch_weight, "float32")
        prior_mean, prior_variance = ops.stop_gradient(running_mean.value), ops.stop_gradient(running_variance.value)
        mixed_mean = weight * prior_mean + (1.0 - weight) * mean
        mixed_variance = weight * prior_variance + (1.0 - weight) * variance
        step = ops.cast(adapter._memory_step, "float32")
        running_mean.assign(prior_mean + step * (ops.stop_gradient(mean) - prior_mean))
        running_variance.assign(prior_variance + step * (ops.stop_gradient(variance) - prior_variance))
        outputs = ops.batch_normalization(
            inputs, mixed_mean, mixed_variance, axis=layer.axis,
            offset=ops.cast(layer.beta, "float32") if layer.center else None,
            scale=ops.cast(layer.gamma, "float32") if layer.scale else None, epsilon=layer.epsilon)
        return ops.cast(outputs, layer.compute_dtype)

    return call


def _as_batch(batch, model):
    if isinstance(batch, (tf.Tensor, np.ndarray)) or hasattr(batch, "__array__"):
        images = tf.convert_to_tensor(batch)
    else:
        raise TypeError(f"Argument `batch` must be an array or tensor of images; received {type(batch).__name__}.")
    expected = model.input_shape
    if images.shape.rank != len(expected) or any(
            e is not None and e != g for e, g in zip(expected[1:], images.shape[1:])):
        raise ValueError(f"Argument `batch` must have shape {(None,) + tuple(expected[1:])} (a batch of the model's "
                         f"inputs); received shape {tuple(images.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("Argument `batch` is empty: pass at least one image.")
    if not (images.dtype.is_floating or images.dtype.is_integer):  # strings: an UnimplementedError of the cast
        raise TypeError(f"Argument `batch` must hold numeric images; received dtype {images.dtype.name}.")
    images = tf.cast(images, tf.float32)
    # One NaN image would enter the running statistics and every later output with them.
    if not bool(tf.reduce_all(tf.math.is_finite(images))):
        raise ValueError("Argument `batch` holds non-finite values (NaN or inf); nothing was adapted on it.")
    return images


# =========================================================================== one-shot form

def _target_batches(target, batch_size, image_rank, rng):
    """One pass over ``target`` (array shuffled with ``rng``, or a dataset as it comes) in batches."""
    if isinstance(target, tf.data.Dataset):
        if isinstance(target.element_spec, tuple):
            target = target.map(lambda *element: element[0])
        if target.element_spec.shape.rank == image_rank:
            target = target.batch(batch_size)
        for batch in target:
            yield batch
        return
    order = rng.permutation(len(target))
    for start in range(0, len(target), batch_size):
        yield target[order[start : start + batch_size]]


def _read_target(target, model):
    if isinstance(target, (str, Path)):
        from domadapt.datasets import read_images

        size = model.input_shape[1:3] if len(model.input_shape) == 4 and None not in model.input_shape[1:3] else None
        target = _match_channels(read_images(target, image_size=size), model)
    if isinstance(target, tf.data.Dataset):
        # Gradient methods pass over the target `epochs` times; every method re-estimates on all of it.
        check_not_endless(target, "target")
        _check_target_spec(target.element_spec, tuple(model.input_shape[1:]))
        return target
    target = without_labels(target, len(model.input_shape) - 1)  # (images, labels): the labels are never read
    try:
        target = np.asarray(target)
    except Exception as error:
        raise TypeError(f"Argument `target` must be an array of images, a tf.data.Dataset or a folder path; "
                        f"received {type(target).__name__}.") from error
    expected = model.input_shape
    if target.ndim != len(expected) or any(e is not None and e != g for e, g in zip(expected[1:], target.shape[1:])):
        raise ValueError(f"Argument `target` must hold images of shape {tuple(expected[1:])} (the model's input); "
                         f"received an array of shape {target.shape}.")
    if len(target) == 0:
        raise ValueError("Argument `target` is empty: test-time adaptation needs unlabeled target images.")
    if target.dtype.kind not in "biuf":
        raise TypeError(f"Argument `target` must hold numeric images; received an array of dtype {target.dtype}.")
    check_finite_images(target, "target")  # else the error named the internal `images` or `batch`
    return target


def _check_target_spec(spec, expected):
    """A dataset target's elements: images (batched or not) of the model's input shape, or (images, labels) pairs."""
    if isinstance(spec, tuple) and spec:
        spec = spec[0]
    if not isinstance(spec, tf.TensorSpec) or not (spec.dtype.is_floating or spec.dtype.is_integer):
        raise TypeError(f"Argument `target`: a dataset must yield numeric image tensors (or (images, labels) pairs); "
                        f"its elements are {spec}.")
    shape = spec.shape
    images = shape[1:] if shape.rank == len(expected) + 1 else shape
    if images.rank != len(expected) or any(e is not None and g is not None and e != g
                                           for e, g in zip(expected, images.as_list())):
        raise ValueError(f"Argument `target` must hold images of shape {expected} (the model's input); the dataset "
                         f"yields elements of shape {tuple(shape.as_list())}.")


def _match_channels(images, model):
    """Folder images come as RGB: give a one-channel model their mean."""
    channels = model.input_shape[-1]
    if channels == 1 and images.shape[-1] == 3:
        return images.mean(axis=-1, keepdims=True).astype(images.dtype)
    return images


def adapt_at_test_time(model, target, method=DEFAULT_METHOD, *, epochs=None, batch_size=64, seed=0):
    """Adapt a trained classifier to unlabeled target images; returns an adapted copy.

    For a model trained elsewhere (no source data at hand) that must now classify
    another domain (rain, fog, a new camera): the returned classifier is a
    ``keras.models.clone_model`` copy with adapted normalisation; the model passed in
    is never modified. Methods (see the module docs and the method classes):
    ``"norm"`` re-estimates the BatchNormalization statistics on the target (AdaBN,
    Li et al. 2016); ``"tent"`` minimises prediction entropy over the normalisation
    layers' scale and shift (TENT, Wang et al. ICLR 2021); ``"eata"`` does
    so on reliable, non-redundant samples only (after EATA, Niu et al. 2022), which
    keeps it from drifting over many passes; ``"infomax"`` (default) adds to EATA the
    entropy of the class marginal (SHOT-IM, Liang et al. 2020), so that predictions
    grow confident without narrowing onto a few classes.
    Gradient methods take ``epochs`` passes of online steps under a collapse guard
    (on collapse: back to the last healthy state, with a warning); the copy's BN
    moving statistics are then re-estimated on the target with the final weights
    (``da.reestimate_batchnorm_statistics``), so the exported model normalises like
    the target at inference.

    Args:
        model: a trained Keras classifier (probabilities or logits out), or a ``da.DomainAdapter``.
        target: unlabeled target images: an array ``(N, ...)`` of the model's input shape,
            ``(images, labels)`` (labels unused), a ``tf.data.Dataset`` of images or
            ``(images, ...)``, batched or not, or a folder (read with ``da.datasets.read_images``,
            resized to the model's input).
        method: ``"infomax"``, ``"eata"``, ``"tent"``, ``"norm"``, or a ``domadapt.test_time`` method object.
        epochs: passes over the target for gradient methods; ``None``: the method's
            ``default_epochs`` (3 for ``"infomax"``, 1 for ``"tent"`` and ``"eata"``).
        batch_size: images per adaptation step (arrays and unbatched datasets).
        seed: order of array images in each pass.

    Returns:
        The adapted copy, a plain ``keras.Model`` with the same inputs and outputs.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, activation="softmax")])
    adapted = da.adapt_at_test_time(model, np.random.rand(256, 4) + 2.0)  # method="infomax"
    print(adapted.predict(np.random.rand(2, 4) + 2.0, verbose=0).shape)  # (2, 3)
    ```
    """
    source = _classifier(model)
    method = _method(method)
    if epochs is None:
        epochs = getattr(method, "default_epochs", 1)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"Argument `{name}` must be a positive integer; received {name}={value!r}.")
    seed = check_seed(seed)
    target = _read_target(target, source)
    if not method.uses_gradients:
        adapted = _copy(source)
        if not batchnorm_layers(adapted):
            raise ValueError("Argument `model` has no BatchNormalization layers: method 'norm' re-estimates BN "
                             "statistics and has nothing to adapt. Use method='eata' or 'tent', which adapt "
                             "GroupNormalization/LayerNormalization scale and shift too.")
        reestimate_batchnorm_statistics(adapted, target, batch_size=batch_size)
        return adapted
    adapter = TestTimeAdapter(source, method=method)
    rng = np.random.default_rng(seed)
    image_rank = len(source.input_shape) - 1
    for _ in range(epochs):
        for batch in _target_batches(target, batch_size, image_rank, rng):
            adapter.predict(batch)
    adapted = adapter.model
    if adapter._batchnorm:
        reestimate_batchnorm_statistics(adapted, target, batch_size=batch_size)
    # The stream's guard judges every GUARD_IMAGES images, on outputs predicted before each step: a
    # target shorter than that, the images after the last check and the final steps are never judged.
    # The copy returned is judged here, as it will predict, against the source model on the same images.
    probe = _probe_images(target, image_rank)
    reason = _final_collapse_reason(np.asarray(source.predict(probe, batch_size=batch_size, verbose=0)),
                                    np.asarray(adapted.predict(probe, batch_size=batch_size, verbose=0)))
    if reason is not None:
        restored = "source state" if adapter._healthy is adapter._initial else "last healthy state"
        adapter._restore(adapter._healthy)
        if adapter._batchnorm:
            reestimate_batchnorm_statistics(adapted, target, batch_size=batch_size)
        warnings.warn(f"Test-time adaptation ({method.name}) collapsed by its end: {reason}. The copy returned is "
                      f"the {restored} of the adaptation (a lower learning rate or method='eata' adapts more "
                      "safely).", RuntimeWarning, stacklevel=2)
    return adapted


# Images of the target the returned copy is judged on (adapt_at_test_time's final check).
FINAL_CHECK_IMAGES = 1024


def _probe_images(target, image_rank):
    """Up to ``FINAL_CHECK_IMAGES`` images of ``target``: evenly spaced in an array, the first ones of a dataset."""
    if not isinstance(target, tf.data.Dataset):
        count = min(FINAL_CHECK_IMAGES, len(target))
        return target[np.unique(np.linspace(0, len(target) - 1, count).round().astype(int))]
    gathered, total = [], 0
    for batch in _target_batches(target, 256, image_rank, None):
        gathered.append(np.asarray(batch))
        total += len(gathered[-1])
        if total >= FINAL_CHECK_IMAGES:
            break
    return np.concatenate(gathered)[:FINAL_CHECK_IMAGES]


def _final_collapse_reason(source_outputs, adapted_outputs):
    """Why the adapted model's predictions collapsed where the source model's did not (the stream guard's
    two rules: :func:`collapse_reason` and the class spread falling below ``SPREAD_DROP`` of the source's), or None."""
    source = np.asarray(TestTimeAdapter._probabilities(source_outputs), dtype=np.float64)
    adapted = np.asarray(TestTimeAdapter._probabilities(adapted_outputs), dtype=np.float64)
    reason = collapse_reason(adapted)
    if reason is not None:
        return reason if collapse_reason(source) is None else None
    source_spread, adapted_spread = _class_spread(source), _class_spread(adapted)
    if adapted_spread < SPREAD_DROP * source_spread:
        return (f"its predictions narrow onto fewer classes (class-spread perplexity {adapted_spread:.2f}, "
                f"{source_spread:.2f} for the source model on the same images)")
    return None


def _class_spread(probabilities):
    """The perplexity of the predicted-class histogram: the number of classes predictions are spread over."""
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]) / len(probabilities)
    return float(np.exp(-np.sum(counts[counts > 0] * np.log(counts[counts > 0]))))


# =========================================================================== command line

def add_arguments(parser):
    """Arguments of ``domadapt adapt-at-test-time classifier.keras TARGET_DIR --out DIR [--method] [--eval DIR]``."""
    parser.add_argument("classifier", help="a saved Keras classifier (.keras)")
    parser.add_argument("target", help="unlabeled target images: a folder (searched recursively), .npy or .npz")
    parser.add_argument("--out", required=True, help="output folder for classifier.keras and summary.json")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS),
                        help=f"adaptation method (default {DEFAULT_METHOD})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the target (gradient methods; default: 3 for infomax, 1 for tent and eata)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per adaptation step (default 64)")
    parser.add_argument("--max-images", type=int, default=None, help="read at most this many target images")
    parser.add_argument("--eval", help="labeled target images, one sub-folder per class: accuracy before/after")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in --out")
