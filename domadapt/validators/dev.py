"""Deep embedded validation: importance-weighted source risk."""

import numpy as np

from domadapt import ops
from domadapt.validators.base import Validator, check_max_samples, images_of, labeled, outputs, task_of
from domadapt.validators.source_error import labeled_any, per_example_losses


class DeepEmbeddedValidation(Validator):
    """DEV (You et al. 2019). Lower is better (it estimates the target risk).

    A logistic-regression domain classifier on features gives density ratios
    w(x) = (n_s / n_t) p(target | x) / p(source | x) for held-out source samples; the
    target risk is estimated by the weighted source loss w_i l_i, with the paper's
    control variate: DEV = mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w).
    When source and target coincide, w is about 1 and DEV is about the plain source loss.

    The loss l is the cross-entropy for classification, the squared error (mean over
    outputs) for regression and the mean per-pixel cross-entropy of an image (ignored
    pixels left out) for segmentation.
    """

    name = "dev"
    requires = ("labeled_source", "target")
    higher_is_better = False
    tasks = ("classification", "regression", "segmentation")

    def __init__(self, max_samples=2000, seed=0):
        self.max_samples = check_max_samples(max_samples)
        self.seed = seed

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        if task_of(model) == "classification":
            source_images, source_labels = labeled(source, "source", model)
        else:
            source_images, source_labels = labeled_any(source, "source")
        target_images = images_of(target, "target", model)
        rng = np.random.default_rng(self.seed)
        if len(target_images) > self.max_samples:
            target_images = target_images[rng.choice(len(target_images), self.max_samples, replace=False)]
        source_probabilities, source_features = outputs(model, source_images, feature_extractor, domain="source")
        _, target_features = outputs(model, target_images, feature_extractor)
        losses = per_example_losses(model, source_probabilities, source_labels)

        # Half of the source trains the domain classifier; the other half is weighted.
        order = rng.permutation(len(source_features))
        fit_part, weight_part = order[: len(order) // 2], order[len(order) // 2 :]
        train = np.concatenate([source_features[fit_part], target_features])
        domains = np.r_[np.zeros(len(fit_part)), np.ones(len(target_features))]
        mean, scale = train.mean(axis=0), train.std(axis=0)
        scale[scale == 0] = 1.0
        weights, bias = ops.fit_logistic_regression((train - mean) / scale, domains, num_classes=2, l2=1e-2)
        class_logits = ((source_features[weight_part] - mean) / scale) @ weights + bias
        logits = class_logits[:, 1] - class_logits[:, 0]
        ratio = np.exp(np.clip(logits, -10, 10)) * len(fit_part) / len(target_features)
        weighted = ratio * losses[weight_part]
        variance = np.var(ratio, ddof=1)  # the same normalisation as np.cov below
        eta = 0.0 if variance < 1e-12 else -np.cov(weighted, ratio)[0, 1] / variance
        return float(np.mean(weighted) + eta * np.mean(ratio) - eta)
