"""Reverse validation on frozen features."""

import numpy as np

from domadapt import ops
from domadapt.validators.base import Validator, check_max_samples, images_of, labeled, outputs


class ReverseValidation(Validator):
    """Reverse validation (Zhong et al. 2010; Ganin et al. 2016, section 5.1.2). Higher is better.

    The model labels the target; a *reverse* classifier is trained on the target
    features with those pseudo-labels and scored on the labeled source. If the
    model's target labels are right and its features carry the classes across
    domains, the reverse classifier transfers back well.

    The paper retrains the whole network in reverse; to stay affordable this one
    keeps the model's features frozen and fits an L2-regularised softmax regression
    on them (standardised), so it costs two predictions and one L-BFGS fit.

    Args:
        max_samples: target samples used for the reverse fit (a seeded subsample).
        l2: regularisation of the softmax regression.

    Example:

    ```python
    score = da.validators.ReverseValidation()(adapter, source=(xs_val, ys_val), target=xt_val)
    ```
    """

    name = "reverse"
    requires = ("labeled_source", "target")
    higher_is_better = True

    def __init__(self, max_samples=2000, l2=1e-2, seed=0):
        self.max_samples = check_max_samples(max_samples)
        self.l2 = float(l2)
        self.seed = seed

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        source_images, source_labels = labeled(source, "source", model)
        target_images = images_of(target, "target", model)
        if len(target_images) > self.max_samples:
            chosen = np.random.default_rng(self.seed).choice(len(target_images), self.max_samples, replace=False)
            target_images = target_images[chosen]
        target_probabilities, target_features = outputs(model, target_images, feature_extractor)
        _, source_features = outputs(model, source_images, feature_extractor, domain="source")
        pseudo_labels = np.argmax(target_probabilities, axis=1)
        mean, scale = target_features.mean(axis=0), target_features.std(axis=0)
        scale[scale == 0] = 1.0
        weights, bias = ops.fit_logistic_regression((target_features - mean) / scale, pseudo_labels,
                                                    num_classes=target_probabilities.shape[1], l2=self.l2,
                                                    max_iterations=300)
        predicted = np.argmax(((source_features - mean) / scale) @ weights + bias, axis=1)
        return float(np.mean(predicted == source_labels))
