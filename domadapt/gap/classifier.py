"""Gap measured by how well a held-out domain classifier separates the domains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from domadapt import ops
from domadapt.gap.checks import as_features, check_positive, check_seed, subsample


@dataclass(frozen=True)
class DomainClassification:
    """Held-out predictions of a logistic-regression domain classifier."""

    error: float  # misclassification rate on the held-out half
    auc: float  # ROC AUC on the held-out half (0.5: indistinguishable)
    num_train: int
    num_test: int


def domain_classification(source_features, target_features, *, max_samples=5000, l2=1e-3, seed=0):
    """Train a linear domain classifier on half of each domain, score it on the other half.

    Features are standardised with the training half's statistics. Each domain is
    subsampled to ``max_samples`` and the classes are balanced to the smaller domain.
    """
    source, target = as_features(source_features, target_features, minimum=4)
    check_positive(max_samples, "max_samples")
    if max_samples < 4:
        raise ValueError("Argument `max_samples` must be at least 4 (two per domain to train, two to test); "
                         f"received max_samples={max_samples!r}.")
    rng = np.random.default_rng(check_seed(seed))
    size = min(len(source), len(target), max_samples)
    source = subsample(source, size, rng).astype(np.float64)
    target = subsample(target, size, rng).astype(np.float64)
    train, test = [], []
    for domain, features in enumerate((source, target)):
        order = rng.permutation(len(features))
        half = len(features) // 2
        train.append((features[order[:half]], np.full(half, domain)))
        test.append((features[order[half:]], np.full(len(features) - half, domain)))
    train_x = np.concatenate([t[0] for t in train])
    train_y = np.concatenate([t[1] for t in train]).astype(np.float64)
    test_x = np.concatenate([t[0] for t in test])
    test_y = np.concatenate([t[1] for t in test])
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0)
    scale[scale == 0] = 1.0
    weights, bias = ops.fit_logistic_regression((train_x - mean) / scale, train_y, num_classes=2, l2=l2)
    logits = ((test_x - mean) / scale) @ weights + bias
    scores = logits[:, 1] - logits[:, 0]
    error = float(np.mean((scores > 0) != (test_y == 1)))
    positives = test_y == 1
    ranks = stats.rankdata(scores)
    auc = (ranks[positives].sum() - positives.sum() * (positives.sum() + 1) / 2) / (positives.sum() * (~positives).sum())
    return DomainClassification(error, float(auc), len(train_x), len(test_x))


def proxy_a_distance(source_features, target_features, *, max_samples=5000, seed=0):
    """Proxy A-distance 2 (1 - 2 eps) (Ben-David et al. 2007, 2010). Higher means farther apart.

    eps is the held-out error of a linear (logistic-regression) domain classifier
    trained on half of each domain. Range [0, 2]: 0 when the classifier is at chance
    (clipped there when it does worse), 2 when it separates the domains perfectly.
    Symmetric up to the random split.

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(2, 1, size=(400, 8))))  # ~2
    ```
    """
    result = domain_classification(source_features, target_features, max_samples=max_samples, seed=seed)
    return max(0.0, 2.0 * (1.0 - 2.0 * result.error))


def domain_classifier_auc(source_features, target_features, *, max_samples=5000, seed=0):
    """Held-out ROC AUC of a linear domain classifier. 0.5: indistinguishable; 1: separable.

    Same classifier as :func:`proxy_a_distance`; AUC does not depend on a threshold.

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.domain_classifier_auc(rng.normal(size=(400, 8)), rng.normal(size=(400, 8))))  # ~0.5
    ```
    """
    return domain_classification(source_features, target_features, max_samples=max_samples, seed=seed).auc
