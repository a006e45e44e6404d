"""Information maximisation on the target."""

import numpy as np

from domadapt.validators.base import Validator, entropies, images_of, outputs


class InformationMaximization(Validator):
    """IM = H(mean_t p) - mean_t H(p) (mutual information of inputs and predicted classes;
    Shi & Sha 2012, Liang et al. 2020). Higher is better.

    Rewards confident predictions (low mean entropy) that still spread over the
    classes (high entropy of the average prediction), so it penalises collapse.
    """

    name = "information_maximization"
    requires = ("target",)
    higher_is_better = True
    tasks = ("classification", "segmentation")  # segmentation: over pixels (H of the mean pixel prediction)

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        probabilities, _ = outputs(model, images_of(target, "target", model))
        probabilities = probabilities.reshape(-1, probabilities.shape[-1])
        marginal = probabilities.mean(axis=0, keepdims=True)
        return float(entropies(marginal)[0] - np.mean(entropies(probabilities)))
