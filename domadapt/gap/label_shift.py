"""Label shift: estimate the target's class proportions without target labels, and correct for them.

Under label shift the classes look the same in both domains (p(x | y) is shared)
but occur in other proportions (q(y) != p(y)): a second hospital sees other
diseases more often, a partial target holds only some of the source classes.
:func:`label_shift` estimates q from a classifier's predictions; :func:`prior_corrected`
re-weights a classifier's probabilities by q / p; ``class_weights=`` of
``da.DANN``, ``da.CDAN``, ``da.MMD`` and ``da.CORAL`` keeps alignment from pulling
target images onto source classes the target lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from scipy import stats

__all__ = ["LabelShiftResult", "label_shift", "prior_corrected"]

METHODS = ("bbse", "em")
# The verdict says "class mix differs" when the test rejects at this level and the
# estimate is this far (total variation) from the source proportions.
SIGNIFICANCE = 0.01
MATERIAL_TOTAL_VARIATION = 0.1


@dataclass(frozen=True)
class LabelShiftResult:
    """What :func:`label_shift` found.

    Attributes:
        target_proportions: estimated q(y), shape ``(num_classes,)``, sums to 1.
        source_proportions: p(y) of the labeled source given, ``(num_classes,)``.
        interval: ``(num_classes, 2)`` bootstrap 95% interval of each q(y) (lower, upper).
        p_value: test of "same class mix": a chi-square test of homogeneity of the
            predicted-class counts of source and target (under label shift, q = p
            exactly when the predicted classes are equally distributed; Lipton et al.
            2018, Rabanser et al. 2019). A small value also follows a change of
            appearance that moves predictions: read it with ``total_variation``.
        total_variation: 0.5 * sum |q - p| (0: same mix, 1: disjoint classes).
        method: ``"bbse"`` or ``"em"``.
        num_source, num_target: images used.
    """

    target_proportions: np.ndarray
    source_proportions: np.ndarray
    interval: np.ndarray
    p_value: float
    total_variation: float
    method: str
    num_source: int
    num_target: int

    @property
    def importance_weights(self):
        """q(y) / p(y) per class (0 where the source lacks the class): pass as ``class_weights=``."""
        p = self.source_proportions
        return np.where(p > 0, self.target_proportions / np.maximum(p, 1e-12), 0.0)

    @property
    def differs(self):
        """True when the test rejects (p < 0.01) and the estimate is >= 0.1 total variation from the source."""
        return self.p_value < SIGNIFICANCE and self.total_variation >= MATERIAL_TOTAL_VARIATION

    @property
    def verdict(self):
        """One line: whether the class mix differs, and the classes that differ most."""
        differences = self.target_proportions - self.source_proportions
        largest = np.argsort(-np.abs(differences))[:3]
        named = "; ".join(f"class {k} ~{self.target_proportions[k]:.2f} in target vs {self.source_proportions[k]:.2f} "
                          "in source" for k in largest if abs(differences[k]) >= 0.02)
        evidence = f"total variation {self.total_variation:.2f}, p = {self.p_value:.2g}"
        if self.differs:
            return f"class mix differs: {named} ({evidence})"
        if self.p_value < SIGNIFICANCE:
            return f"class mix: small difference ({evidence}){': ' + named if named else ''}"
        return f"class mix looks the same ({evidence})"

    def __str__(self):
        lines = [self.verdict, f"{'class':>5} {'source':>8} {'target':>8}   95% interval ({self.method}, "
                 f"{self.num_source} source / {self.num_target} target images)"]
        for k, (p, q, (low, high)) in enumerate(zip(self.source_proportions, self.target_proportions, self.interval)):
            lines.append(f"{k:>5} {p:>8.3f} {q:>8.3f}   [{low:.3f}, {high:.3f}]")
        return "\n".join(lines)

    def to_dict(self):
        return {"target_proportions": self.target_proportions.tolist(),
                "source_proportions": self.source_proportions.tolist(), "interval": self.interval.tolist(),
                "p_value": self.p_value, "total_variation": self.total_variation, "method": self.method,
                "num_source": self.num_source, "num_target": self.num_target, "verdict": self.verdict}


# ----------------------------------------------------------------------------- estimators (numpy)

def _bbse(source_predicted, source_labels, target_predicted, num_classes):
    """Lipton et al. 2018: solve C q = mu, C[i, j] = P_source(prediction i | class j), mu = target prediction shares."""
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (source_predicted, source_labels), 1.0)
    confusion /= np.maximum(confusion.sum(axis=0, keepdims=True), 1.0)
    shares = np.bincount(target_predicted, minlength=num_classes) / len(target_predicted)
    solution = np.linalg.lstsq(confusion, shares, rcond=None)[0]
    solution = np.clip(solution, 0.0, None)
    solution[np.bincount(source_labels, minlength=num_classes) == 0] = 0.0  # no evidence about a class never seen
    total = solution.sum()
    return solution / total if total > 0 else np.full(num_classes, 1.0 / num_classes)


def _em(target_probabilities, source_proportions, *, iterations=1000, tolerance=1e-8):
    """Saerens et al. 2002: alternate posteriors p(y|x) q/p renormalised, and q = their mean."""
    prior = source_proportions.copy()
    ratio_base = np.where(source_proportions > 0, 1.0 / np.maximum(source_proportions, 1e-12), 0.0)
    for _ in range(iterations):
        adjusted = target_probabilities * (prior * ratio_base)
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-300)
        updated = adjusted.mean(axis=0)
        if np.abs(updated - prior).max() < tolerance:
            return updated
        prior = updated
    return prior


def _estimate(method, source_probabilities, source_labels, target_probabilities, num_classes):
    if method == "bbse":
        return _bbse(source_probabilities.argmax(axis=1), source_labels, target_probabilities.argmax(axis=1), num_classes)
    source_proportions = np.bincount(source_labels, minlength=num_classes) / len(source_labels)
    return _em(target_probabilities, source_proportions)


def _same_mix_p_value(source_predicted, target_predicted, num_classes):
    table = np.stack([np.bincount(source_predicted, minlength=num_classes),
                      np.bincount(target_predicted, minlength=num_classes)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False)[1])


# ----------------------------------------------------------------------------- inputs

def _classifier_of(model):
    from domadapt.adapter import DomainAdapter  # the gap tools load without the adapter

    if isinstance(model, DomainAdapter):
        return model.classifier
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `model` must be a da.DomainAdapter or a Keras classifier (keras.Model); "
            f"received {type(model).__name__}."
        )
    return model


def _probabilities(classifier, images, batch_size):
    outputs = np.asarray(classifier.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(
            f"Argument `model` must output one score per class, shape (batch, num_classes >= 2); it output shape "
            f"{outputs.shape}."
        )
    looks_normalised = np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)
    if not looks_normalised:  # logits
        outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        outputs /= outputs.sum(axis=1, keepdims=True)
    return outputs


def _as_labels(labels, count):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if labels.shape[0] != count or not (np.issubdtype(labels.dtype, np.integer) or np.all(labels == np.round(labels))):
        raise ValueError(
            f"Argument `source`: expected (images, labels) with one integer class per image; received "
            f"{count} images and labels of shape {np.asarray(labels).shape}, dtype {labels.dtype}."
        )
    return labels.astype(np.int64)


def label_shift(model, source, target, *, method="bbse", bootstrap=200, seed=0, batch_size=256):
    """Estimate the target's class proportions from a classifier's predictions, without target labels.

    Use it when the target may hold the classes in another mix than the source
    (some classes rarer, or absent): alignment strategies then transfer negatively
    unless weighted (``class_weights=``), and a classifier's outputs can be
    corrected (:func:`prior_corrected`).

    ``method="bbse"`` (black-box shift estimation, Lipton et al. 2018): with C[i, j] =
    P(prediction i | class j) measured on the labeled source and mu[i] the share of
    target images predicted i, solve C q = mu (least squares), clip at 0, renormalise.
    Consistent under label shift whatever the classifier's accuracy, if C is invertible.
    ``method="em"`` (Saerens et al. 2002): iterate q <- mean_x of p(y|x) q(y)/p(y),
    renormalised per image; needs calibrated probabilities.

    Both assume the classes look alike in both domains: on a target that also
    looks different, estimate with the adapted model (its features align the
    domains) and read the result as approximate.

    Args:
        model: a ``da.DomainAdapter`` or a Keras classifier (images -> class
            probabilities or logits).
        source: ``(images, labels)`` of labeled source images **not used for
            training** (held out): the confusion matrix must be that of new images.
        target: unlabeled target images.
        method: ``"bbse"`` (default) or ``"em"``.
        bootstrap: resamples of both sets for the 95% interval (0: no interval).
        seed: seed of the resampling.
        batch_size: prediction batch size.

    Returns:
        A :class:`LabelShiftResult`: ``target_proportions``, ``source_proportions``,
        ``interval``, ``p_value``, ``total_variation``, ``importance_weights``,
        ``verdict`` (e.g. "class mix differs: class 3 ~0.30 in target vs 0.10 in source ...").

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    rng = np.random.default_rng(0)
    classifier = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, activation="softmax")])
    classifier.layers[0].set_weights([np.array([[-4.0, 4.0]]), np.zeros(2)])
    source_y = rng.integers(0, 2, 2000)
    target_y = (rng.uniform(size=2000) < 0.8).astype(int)  # 80% class 1 instead of 50%
    result = da.gap.label_shift(classifier, source=(rng.normal(source_y - 0.5, 0.5)[:, None], source_y),
                                target=rng.normal(target_y - 0.5, 0.5)[:, None])
    print(result.verdict)  # class mix differs: class 1 ~0.78 in target vs 0.52 in source ...
    ```
    """
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {METHODS}; received method={method!r}.")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"Argument `bootstrap` must be a non-negative integer; received bootstrap={bootstrap!r}.")
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        raise TypeError(
            f"Argument `source` must be a tuple (images, labels) of labeled held-out source images; received "
            f"{type(source).__name__}."
        )
    classifier = _classifier_of(model)
    source_images = np.asarray(source[0])
    target_images = np.asarray(target)
    for name, images in (("source", source_images), ("target", target_images)):
        if images.ndim < 2 or len(images) < 2:
            raise ValueError(f"Argument `{name}`: expected a batch of at least 2 images; received shape {images.shape}.")
    source_labels = _as_labels(source[1], len(source_images))
    source_probabilities = _probabilities(classifier, source_images, batch_size)
    target_probabilities = _probabilities(classifier, target_images, batch_size)
    num_classes = source_probabilities.shape[1]
    if source_labels.min() < 0 or source_labels.max() >= num_classes:
        raise ValueError(
            f"Argument `source`: labels must lie in [0, {num_classes}) (the model's {num_classes} classes); received "
            f"labels from {source_labels.min()} to {source_labels.max()}."
        )
    estimate = _estimate(method, source_probabilities, source_labels, target_probabilities, num_classes)
    source_proportions = np.bincount(source_labels, minlength=num_classes) / len(source_labels)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        s = rng.integers(0, len(source_labels), len(source_labels))
        t = rng.integers(0, len(target_probabilities), len(target_probabilities))
        draws.append(_estimate(method, source_probabilities[s], source_labels[s], target_probabilities[t], num_classes))
    interval = (np.percentile(np.asarray(draws), [2.5, 97.5], axis=0).T if draws
                else np.stack([estimate, estimate], axis=1))
    return LabelShiftResult(
        target_proportions=estimate, source_proportions=source_proportions, interval=interval,
        p_value=_same_mix_p_value(source_probabilities.argmax(axis=1), target_probabilities.argmax(axis=1), num_classes),
        total_variation=float(0.5 * np.abs(estimate - source_proportions).sum()), method=method,
        num_source=len(source_labels), num_target=len(target_probabilities),
    )


# ----------------------------------------------------------------------------- correction

def _proportions(value, name, num_classes):
    array = np.asarray(value, dtype=np.float64).reshape(-1) if not isinstance(value, str) else np.zeros(0)
    if array.shape != (num_classes,) or not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise ValueError(
            f"Argument `{name}` must hold {num_classes} non-negative proportions (one per class of the model); "
            f"received {value!r}."
        )
    return array / array.sum()


def _logits_tensor(classifier):
    """The tensor the classifier's final softmax is applied to, and a layer that gives the logits from it."""
    last = classifier.layers[-1] if classifier.layers else None
    activation = getattr(last, "activation", None)
    is_softmax_layer = isinstance(last, keras.layers.Softmax)
    if last is None or not (is_softmax_layer or activation is keras.activations.softmax):
        raise ValueError(
            "Argument `model` must end in a softmax (keras.layers.Softmax, Activation('softmax') or a layer with "
            f"activation='softmax') so its logits can be adjusted; its last layer is "
            f"{type(last).__name__ if last is not None else 'missing'}."
        )
    if is_softmax_layer or isinstance(last, keras.layers.Activation):
        return last.input, None
    config = {**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"}
    logits_layer = type(last).from_config(config)
    return last.input, logits_layer


def prior_corrected(model, target_proportions, source_proportions):
    """A copy of a classifier whose probabilities are re-weighted to the target's class proportions.

    Bayes' rule under label shift (Saerens et al. 2002): p_t(y|x) is proportional to
    p_s(y|x) q(y) / p(y), i.e. logit adjustment z_y + log q(y) - log p(y) before the
    softmax. A class with q(y) = 0 is never predicted. Use it with the proportions of
    :func:`label_shift` when the target's class mix differs; the result is built of
    plain Keras layers (a bias-only Dense after the logits) and saves and loads
    without domadapt.

    Args:
        model: a ``da.DomainAdapter`` (its ``classifier`` is used) or a Keras model
            ending in a softmax.
        target_proportions: q(y), one per class (renormalised to sum to 1).
        source_proportions: p(y), the classes' shares in the training data.

    Returns:
        A new ``keras.Model`` (images -> corrected probabilities) sharing the weights of ``model``.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    classifier = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    corrected = da.gap.prior_corrected(classifier, [0.6, 0.4, 0.0], [1 / 3, 1 / 3, 1 / 3])
    print(corrected.predict(np.ones((1, 2)), verbose=0))  # class 2 has probability 0
    ```
    """
    classifier = _classifier_of(model)
    num_classes = classifier.output_shape[-1]
    q = _proportions(target_proportions, "target_proportions", num_classes)
    p = _proportions(source_proportions, "source_proportions", num_classes)
    if np.any((q > 0) & (p == 0)):
        raise ValueError(
            "Argument `source_proportions` is 0 for a class that `target_proportions` gives weight: the model never "
            f"learned it, so no re-weighting can predict it; received {p.tolist()} and {q.tolist()}."
        )
    pre_softmax, logits_layer = _logits_tensor(classifier)
    logits = pre_softmax if logits_layer is None else logits_layer(pre_softmax)
    if logits_layer is not None:
        logits_layer.set_weights(classifier.layers[-1].get_weights())
    # -1e9 rather than log 0 = -inf: a class absent from the target gets probability 0 without NaNs.
    shift = np.where(q > 0, np.log(np.maximum(q, 1e-300)) - np.log(np.maximum(p, 1e-300)), -1e9).astype("float32")
    adjust = keras.layers.Dense(num_classes, use_bias=True, trainable=False, dtype="float32", name="prior_correction",
                                kernel_initializer="identity", bias_initializer=keras.initializers.Constant(shift))
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="prior_corrected_probabilities")(
        adjust(logits))
    return keras.Model(classifier.inputs, probabilities, name=f"{classifier.name}_prior_corrected")
