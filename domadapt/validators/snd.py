"""Soft neighbourhood density on the target."""

import numbers

import numpy as np

from domadapt.validators.base import Validator, check_max_samples, images_of, outputs


class SoftNeighborhoodDensity(Validator):
    """SND (Saito et al. 2021). Higher is better.

    Target predictions are L2-normalised; their cosine similarities, diagonal left
    out, are scaled by 1/temperature and turned into a softmax over neighbours per
    sample; SND is the mean entropy of those distributions. Dense, clustered target
    outputs give many close neighbours, hence high entropy.

    Args:
        temperature: the softmax temperature (0.05 in the paper).
        use: ``"probabilities"`` (the paper's choice) or ``"features"``.
        max_samples: target samples used (a seeded subsample).
    """

    name = "snd"
    requires = ("target",)
    higher_is_better = True

    def __init__(self, temperature=0.05, use="probabilities", max_samples=2000, seed=0):
        if use not in ("probabilities", "features"):
            raise ValueError(f"Argument `use` must be 'probabilities' or 'features'; received {use!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"Argument `temperature` must be a positive number; received temperature={temperature!r}.")
        self.temperature = float(temperature)
        self.use = use
        self.max_samples = check_max_samples(max_samples)
        self.seed = seed

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        images = images_of(target, "target", model)
        if len(images) > self.max_samples:
            images = images[np.random.default_rng(self.seed).choice(len(images), self.max_samples, replace=False)]
        probabilities, features = outputs(model, images, feature_extractor)
        return snd_of(probabilities if self.use == "probabilities" else features, self.temperature)


def snd_of(vectors, temperature=0.05):
    normalised = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = normalised @ normalised.T / temperature
    np.fill_diagonal(similarity, -np.inf)
    similarity -= similarity.max(axis=1, keepdims=True)
    weights = np.exp(similarity)
    weights /= weights.sum(axis=1, keepdims=True)
    return float(np.mean(-np.sum(weights * np.log(np.clip(weights, 1e-30, 1.0)), axis=1)))
