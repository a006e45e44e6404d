"""Mean prediction entropy on the target."""

import numpy as np

from domadapt.validators.base import Validator, entropies, images_of, outputs


class Entropy(Validator):
    """Mean Shannon entropy of target predictions (Morerio et al. 2018). Lower is better.

    Confident target predictions suggest the classifier is at home on the target;
    a collapsed classifier is confident too, which is why it is one vote of several.
    """

    name = "entropy"
    requires = ("target",)
    higher_is_better = False
    tasks = ("classification", "segmentation")  # segmentation: the mean over pixels (ADVENT's entropy)

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        probabilities, _ = outputs(model, images_of(target, "target", model))
        return float(np.mean(entropies(probabilities)))
