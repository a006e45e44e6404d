"""Feature MMD between the domains, from the gap tools."""

import numpy as np

from domadapt import ops
from domadapt.gap.kernels import mmd
from domadapt.validators.base import Validator, check_max_samples, images_of, outputs


class FeatureMMD(Validator):
    """MMD^2 between source and target features (``da.gap.mmd``). Lower is better.

    Aligned features are what adaptation aims for; alone, it also rewards features
    that collapsed to a point, so read it beside source accuracy.

    Args:
        max_samples: images per domain (a seeded subsample).
        kernel, bandwidth, estimator: the kernel options of :mod:`domadapt.ops`
            (default: rbf, median bandwidth, unbiased, as ``da.gap.mmd``); pass
            ``da.MMD``'s options (``bandwidth="multi", estimator="biased"``) to score
            the number that strategy minimises.
    """

    name = "mmd"
    requires = ("source", "target")
    higher_is_better = False
    tasks = ("classification", "regression", "segmentation")  # pooled features in every task

    def __init__(self, max_samples=1000, seed=0, *, kernel="rbf", bandwidth="median", estimator="unbiased"):
        ops.check_kernel_options(kernel, bandwidth, estimator)
        self.max_samples = check_max_samples(max_samples)
        self.seed = seed
        self.kernel, self.bandwidth, self.estimator = kernel, bandwidth, estimator

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        rng = np.random.default_rng(self.seed)
        sampled = []
        for value, argument in ((source, "source"), (target, "target")):
            images = images_of(value, argument, model)
            if len(images) > self.max_samples:
                images = images[rng.choice(len(images), self.max_samples, replace=False)]
            sampled.append(outputs(model, images, feature_extractor, domain=argument)[1])
        return float(mmd(*sampled, kernel=self.kernel, bandwidth=self.bandwidth, estimator=self.estimator,
                         seed=self.seed))
