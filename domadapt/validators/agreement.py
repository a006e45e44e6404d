"""Agreement with the candidates' vote: a score that needs the other candidates (EnsV)."""

from __future__ import annotations

import numpy as np

# Fewer candidates cannot outvote one another: with two, each agrees with a vote it half makes.
MIN_CANDIDATES = 3


def ensemble_agreement(predicted_classes, voters=None):
    """Each candidate's share of target images on which it predicts the candidates' plurality vote.

    The vote of image i is the class most voters predict for it (by default every
    candidate, the scored one included; a tie goes to the lowest class index). A
    candidate that agrees with the ensemble's pseudo-labels scores high: the ensemble
    of several adaptations is usually more accurate than most of its members. That
    holds only while most voters are sound: when most candidates fail alike (the
    earlier validator suite, ``benchmarks/results/validator_selection.md``: most
    candidates near 10-20% accuracy), the vote is their common failure and agreement
    rewards it. :func:`da.compare` leaves collapsed candidates and candidates with
    non-finite outputs out of the vote (they are still scored).
    This is the ensemble-based validation EnsV of Hu et al. ("Towards Reliable Model
    Selection for Unsupervised Domain Adaptation", NeurIPS 2024 Datasets and
    Benchmarks), here with hard votes, since hard predictions are what candidates of
    any kind share.

    Unlike the other validators it scores a candidate against the set it is compared
    with: :func:`da.compare` adds it as the column ``agreement`` when it compares at
    least three candidates on target images (:data:`MIN_CANDIDATES`).

    Args:
        predicted_classes: ``{candidate: (num_images,) integer class indices}``, the
            same target images in the same order for every candidate, and the same
            classes.
        voters: the candidates whose predictions make the vote (default: all); an
            empty selection means all.

    Returns:
        ``{candidate: agreement in [0, 1]}`` (higher is better).

    Example:

    ```python
    import numpy as np
    from domadapt.validators.agreement import ensemble_agreement
    votes = {"a": np.array([0, 1, 2, 2]), "b": np.array([0, 1, 2, 1]), "c": np.array([1, 1, 1, 1])}
    print(ensemble_agreement(votes))  # {'a': 0.75, 'b': 1.0, 'c': 0.5}
    ```
    """
    if not isinstance(predicted_classes, dict) or not predicted_classes:
        raise TypeError("Argument `predicted_classes` must be a non-empty dict {candidate: class indices}; received "
                        f"{type(predicted_classes).__name__}.")
    arrays = {}
    for name, classes in predicted_classes.items():
        classes = np.asarray(classes)
        if classes.ndim != 1 or not (np.issubdtype(classes.dtype, np.integer) or classes.size == 0):
            raise ValueError(f"Argument `predicted_classes`: candidate {name!r} must give a 1-D array of integer class "
                             f"indices; received shape {classes.shape} of {classes.dtype}.")
        if classes.size and classes.min() < 0:
            raise ValueError(f"Argument `predicted_classes`: candidate {name!r} has a negative class index.")
        arrays[name] = classes.astype(np.int64)
    lengths = {len(classes) for classes in arrays.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("Argument `predicted_classes`: every candidate must predict the same, non-empty set of images; "
                         f"received lengths {sorted(lengths)}.")
    voters = list(arrays) if voters is None else list(voters)
    unknown = [name for name in voters if name not in arrays]
    if unknown:
        raise ValueError(f"Argument `voters` names {unknown}, which are not candidates of `predicted_classes`.")
    voters = voters or list(arrays)
    num_images, num_classes = lengths.pop(), max(int(classes.max()) for classes in arrays.values()) + 1
    counts = np.zeros((num_images, num_classes), dtype=np.int64)
    for name in voters:
        counts[np.arange(num_images), arrays[name]] += 1  # one vote per image and voter: no repeated index
    vote = counts.argmax(axis=1)  # the first maximum: ties go to the lowest class index
    return {name: float(np.mean(classes == vote)) for name, classes in arrays.items()}


__all__ = ["MIN_CANDIDATES", "ensemble_agreement"]
