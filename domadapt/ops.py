"""Tensor maths shared by training losses, the gap tools and the validators.

One definition of each discrepancy: the strategies (``da.MMD``, ``da.CORAL``,
``da.EntropyMinimization``) use these functions as their losses on a batch, and
``da.gap`` runs the same kernels block by block for large feature sets.

Everything but :func:`fit_logistic_regression` is written with ``keras.ops``:
differentiable, traceable inside a compiled (and XLA-compiled) train step, float32
out whatever floating dtype comes in (float16 features are cast first, so squared
distances cannot overflow).

Kernel options, the same everywhere (``da.MMD``, ``da.gap.mmd``, ``da.gap.mmd_test``):

* ``kernel="rbf"``: k(x, y) = exp(-||x - y||^2 / b), b = 2 sigma^2; with several
  bandwidths, the mean of those kernels (so k(x, x) = 1). ``"linear"``: x . y.
  ``"polynomial"``: (x . y / d + 1)^3 (the KID kernel).
* ``bandwidth=`` (rbf only), computed on the pooled source + target samples:
  ``"median"``: the median of the pairwise squared distances ||x_i - x_j||^2 over
  pairs i < j (Gretton et al. 2012's median heuristic); ``"mean"``: their mean,
  which equals 2 tr(Cov) (unbiased covariance), so it is exact and O(n d) at any
  scale; ``"multi"``: the mean of five kernels at 0.25, 0.5, 1, 2 and 4 times the
  ``"mean"`` bandwidth (the multi-kernel MMD of DAN, Long et al. 2015, with the
  mean base of its reference code); a positive number, or a list of them (the
  mean of those kernels). Data-driven bandwidths carry no gradient and are
  floored at ``MIN_BANDWIDTH``.
* ``estimator=``: ``"biased"`` (the V-statistic, all pairs, >= 0), ``"unbiased"``
  (the U-statistic, i = j pairs left out; can be slightly negative) or
  ``"linear"`` (the linear-time statistic of Gretton et al. 2012, sec. 6, on
  disjoint pairs; for very large n).

Distances are computed on features centred on the pooled mean: the expansion
||a||^2 - 2 a.b + ||b||^2 cancels catastrophically when features share a large
offset (offset 1000 in float32 lost all precision), and centring changes no
distance.
"""

from __future__ import annotations

import numpy as np
from keras import ops
from scipy import optimize

KERNELS = ("rbf", "linear", "polynomial")
BANDWIDTHS = ("median", "mean", "multi")
ESTIMATORS = ("biased", "unbiased", "linear")
# Bandwidth multipliers of bandwidth="multi" (DAN, Long et al. 2015).
MULTI_KERNEL_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Floor of a data-driven bandwidth: features that collapsed to a point give 0.
MIN_BANDWIDTH = 1e-6
POLYNOMIAL_DEGREE = 3


def check_kernel_options(kernel="rbf", bandwidth="multi", estimator="biased"):
    """Validate the kernel options shared by every MMD; returns ``bandwidth`` as a str or a tuple of floats.

    Raises ValueError naming the argument, what is accepted and what came.

    Example:

    ```python
    from domadapt import ops
    print(ops.check_kernel_options("rbf", [1.0, 2.0], "unbiased"))  # (1.0, 2.0)
    ```
    """
    if kernel not in KERNELS:
        raise ValueError(f"Argument `kernel` must be one of {KERNELS}; received kernel={kernel!r}.")
    if estimator not in ESTIMATORS:
        raise ValueError(f"Argument `estimator` must be one of {ESTIMATORS}; received estimator={estimator!r}.")
    if isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTHS:
            raise ValueError(
                f"Argument `bandwidth` must be one of {BANDWIDTHS}, a positive number or a list of them; "
                f"received bandwidth={bandwidth!r}."
            )
        return bandwidth
    try:
        values = tuple(float(b) for b in np.atleast_1d(np.asarray(bandwidth, dtype=np.float64)))
    except (TypeError, ValueError):
        values = ()
    if not values or isinstance(bandwidth, bool) or any(not np.isfinite(b) or b <= 0 for b in values):
        raise ValueError(
            f"Argument `bandwidth` must be one of {BANDWIDTHS}, a positive number or a list of them; "
            f"received bandwidth={bandwidth!r}."
        )
    return values


def _float32(x):
    return ops.cast(x, "float32")


def squared_distances(a, b, center=None):
    """Pairwise squared Euclidean distances ``(n, d), (m, d) -> (n, m)``, clipped at 0.

    ||a_i - b_j||^2 = ||a_i - c||^2 - 2 (a_i - c).(b_j - c) + ||b_j - c||^2 with ``c`` the
    ``center`` (default: the mean of a and b pooled), which keeps the precision of
    features with a large common offset.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    a = np.array([[1000.0, 0.0], [1001.0, 0.0]], "float32")
    print(ops.squared_distances(a, a))  # [[0, 1], [1, 0]]
    ```
    """
    a, b = _float32(a), _float32(b)
    if center is None:
        center = ops.mean(ops.concatenate([a, b], axis=0), axis=0, keepdims=True)
    a, b = a - center, b - center
    a_norms = ops.sum(ops.square(a), axis=1, keepdims=True)
    b_norms = ops.sum(ops.square(b), axis=1, keepdims=True)
    distances = a_norms - 2.0 * ops.matmul(a, ops.transpose(b)) + ops.transpose(b_norms)
    return ops.maximum(distances, 0.0)


def median_pairwise_squared_distance(features):
    """Median of ||x_i - x_j||^2 over pairs i < j (the median heuristic), as a float32 scalar.

    Sorts the n x n distance matrix: meant for batches and subsamples (up to a few
    thousand rows).

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    print(ops.median_pairwise_squared_distance(np.array([[0.0], [1.0], [3.0]])))  # 4
    ```
    """
    features = _float32(features)
    n = ops.shape(features)[0]
    distances = squared_distances(features, features)
    # The n diagonal entries become -1, the smallest; off-diagonal values follow, each twice.
    distances = ops.where(ops.eye(n, dtype="bool"), -1.0, distances)
    ordered = ops.sort(ops.reshape(distances, (-1,)))
    pairs = (n * n - n) // 2
    return 0.5 * (ordered[n + pairs - 1] + ordered[n + pairs])


def mean_pairwise_squared_distance(features):
    """Mean of ||x_i - x_j||^2 over pairs i != j, = 2 tr(Cov) (unbiased), in O(n d), float32 scalar.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    print(ops.mean_pairwise_squared_distance(np.array([[0.0], [1.0], [3.0]])))  # (1 + 9 + 4) / 3
    ```
    """
    features = _float32(features)
    n = ops.cast(ops.shape(features)[0], "float32")
    centred = features - ops.mean(features, axis=0, keepdims=True)
    return 2.0 * ops.sum(ops.square(centred)) / ops.maximum(n - 1.0, 1.0)


def rbf_bandwidths(pooled, bandwidth):
    """The Gaussian bandwidths b (float32 vector) that ``bandwidth`` gives on ``pooled`` features.

    ``"median"`` and ``"mean"``: one data-driven bandwidth; ``"multi"``: 0.25x to 4x
    the mean one; numbers: as given. Data-driven values carry no gradient and are
    floored at ``MIN_BANDWIDTH``.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    print(ops.rbf_bandwidths(np.array([[0.0], [1.0], [3.0]]), "multi"))
    ```
    """
    bandwidth = check_kernel_options(bandwidth=bandwidth)
    if not isinstance(bandwidth, str):
        return ops.convert_to_tensor(np.asarray(bandwidth, "float32"))
    if bandwidth == "median":
        base = median_pairwise_squared_distance(pooled)
    else:
        base = mean_pairwise_squared_distance(pooled)
    base = ops.maximum(ops.stop_gradient(base), MIN_BANDWIDTH)
    multipliers = MULTI_KERNEL_MULTIPLIERS if bandwidth == "multi" else (1.0,)
    return base * ops.convert_to_tensor(np.asarray(multipliers, "float32"))


def kernel_matrix(a, b, kernel="rbf", bandwidths=None, center=None):
    """k(a_i, b_j) for all pairs, ``(n, d), (m, d) -> (n, m)``, float32.

    ``bandwidths`` (rbf): a vector of b values (see :func:`rbf_bandwidths`); the
    kernel is the mean of exp(-||x - y||^2 / b) over them. ``center`` is the point
    distances are computed around (any point gives the same distances; the pooled
    mean gives the most precise ones).

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    x = np.random.default_rng(0).normal(size=(4, 2))
    print(ops.kernel_matrix(x, x, "rbf", bandwidths=[1.0]))  # ones on the diagonal
    ```
    """
    check_kernel_options(kernel=kernel)
    a, b = _float32(a), _float32(b)
    if kernel == "linear":
        if center is not None:
            a, b = a - center, b - center
        return ops.matmul(a, ops.transpose(b))
    if kernel == "polynomial":
        d = ops.cast(ops.shape(a)[1], "float32")
        return ops.power(ops.matmul(a, ops.transpose(b)) / d + 1.0, POLYNOMIAL_DEGREE)
    distances = squared_distances(a, b, center)
    bandwidths = _float32(bandwidths)
    return ops.mean(ops.exp(-distances[None] / bandwidths[:, None, None]), axis=0)


def paired_kernel(a, b, kernel="rbf", bandwidths=None, center=None):
    """k(a_i, b_i) for each row i, ``(n, d), (n, d) -> (n,)`` (no matrix), float32.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    x = np.random.default_rng(0).normal(size=(4, 2))
    print(ops.paired_kernel(x, x, "rbf", bandwidths=[1.0]))  # [1, 1, 1, 1]
    ```
    """
    check_kernel_options(kernel=kernel)
    a, b = _float32(a), _float32(b)
    if kernel == "rbf":
        distances = ops.sum(ops.square(a - b), axis=1)
        bandwidths = _float32(bandwidths)
        return ops.mean(ops.exp(-distances[None] / bandwidths[:, None]), axis=0)
    if kernel == "linear" and center is not None:
        a, b = a - center, b - center
    products = ops.sum(a * b, axis=1)
    if kernel == "linear":
        return products
    return ops.power(products / ops.cast(ops.shape(a)[1], "float32") + 1.0, POLYNOMIAL_DEGREE)


def pooled_center(source, target, kernel):
    """The point kernels are centred on: the pooled mean for rbf and linear (shift-invariant
    MMD), none for the polynomial kernel (not shift-invariant: KID uses raw features)."""
    if kernel == "polynomial":
        return None
    return ops.mean(ops.concatenate([_float32(source), _float32(target)], axis=0), axis=0, keepdims=True)


def mmd_from_sums(ss, tt, st, n, m, diagonal_ss=0.0, diagonal_tt=0.0, unbiased=False):
    """MMD^2 from kernel sums: ss = sum k(s_i, s_j), tt, st likewise, over all pairs.

    Biased: ss / n^2 + tt / m^2 - 2 st / (n m); unbiased: the diagonal sums
    sum_i k(x_i, x_i) are removed and the within-domain means taken over n (n - 1).
    Works on tensors and on Python/numpy float64 numbers alike (gap's block sums).
    """
    if not unbiased:
        return ss / (n * n) + tt / (m * m) - 2.0 * st / (n * m)
    # A domain with one sample has no pair: its within-domain term is 0, not 0/0.
    return ((ss - diagonal_ss) / _at_least_one(n * (n - 1.0)) + (tt - diagonal_tt) / _at_least_one(m * (m - 1.0))
            - 2.0 * st / (n * m))


def _at_least_one(value):
    # Plain numbers stay float64 (gap's block sums); tensors stay in the graph.
    return max(value, 1.0) if isinstance(value, (int, float, np.number)) else ops.maximum(value, 1.0)


def _linear_time_mmd(source, target, kernel, bandwidths, center, source_weights=None):
    pairs = ops.minimum(ops.shape(source)[0], ops.shape(target)[0]) // 2
    d = ops.shape(source)[1]
    s = ops.reshape(source[: 2 * pairs], (-1, 2, d))
    t = ops.reshape(target[: 2 * pairs], (-1, 2, d))
    s1, s2, t1, t2 = s[:, 0], s[:, 1], t[:, 0], t[:, 1]
    if source_weights is not None:
        # Weighted means of each term over the pairs; uniform weights give mean(h) below.
        w = ops.reshape(source_weights[: 2 * pairs], (-1, 2))
        w1, w2 = w[:, 0], w[:, 1]
        within = ops.sum(w1 * w2 * paired_kernel(s1, s2, kernel, bandwidths, center)) / ops.maximum(ops.sum(w1 * w2), 1e-12)
        across = (ops.sum(w1 * paired_kernel(s1, t2, kernel, bandwidths, center))
                  + ops.sum(w2 * paired_kernel(s2, t1, kernel, bandwidths, center))) / ops.maximum(ops.sum(w1 + w2), 1e-12)
        return within + ops.mean(paired_kernel(t1, t2, kernel, bandwidths, center)) - 2.0 * across
    h = (
        paired_kernel(s1, s2, kernel, bandwidths, center)
        + paired_kernel(t1, t2, kernel, bandwidths, center)
        - paired_kernel(s1, t2, kernel, bandwidths, center)
        - paired_kernel(s2, t1, kernel, bandwidths, center)
    )
    return ops.mean(h)


def mmd(source, target, kernel="rbf", bandwidth="multi", estimator="biased", source_weights=None):
    """Squared maximum mean discrepancy between two batches of features (float32 scalar).

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) (Gretton et al. 2012), with the
    kernel, bandwidth and estimator options of this module's docstring. The loss
    of ``da.MMD``; ``da.gap.mmd`` computes the same number block by block.

    ``source_weights`` (n,), non-negative: the source expectations become weighted
    means, a_i = w_i / sum w: E k(s, s') = sum_ij a_i a_j k(s_i, s_j) (unbiased: the
    i = j terms removed and divided by 1 - sum a_i^2), E k(s, t) = sum_i a_i mean_j
    k(s_i, t_j): the MMD to a source re-weighted to the target's class mix (class
    weights, importance-weighted MMD). Uniform weights give the unweighted value;
    bandwidths are computed unweighted.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    rng = np.random.default_rng(0)
    print(ops.mmd(rng.normal(size=(64, 8)), rng.normal(0.5, 1, size=(64, 8)), bandwidth="median"))
    ```
    """
    bandwidth = check_kernel_options(kernel, bandwidth, estimator)
    source, target = _float32(source), _float32(target)
    center = pooled_center(source, target, kernel)
    bandwidths = rbf_bandwidths(ops.concatenate([source, target], axis=0), bandwidth) if kernel == "rbf" else None
    if source_weights is not None:
        source_weights = _float32(source_weights)
        source_weights = source_weights / ops.maximum(ops.sum(source_weights), 1e-12)
    if estimator == "linear":
        return _linear_time_mmd(source, target, kernel, bandwidths, center, source_weights)
    pooled = ops.concatenate([source, target], axis=0)
    matrix = kernel_matrix(pooled, pooled, kernel, bandwidths, center)
    ns = ops.shape(source)[0]
    n = ops.cast(ns, "float32")
    m = ops.cast(ops.shape(target)[0], "float32")
    if source_weights is not None:
        a = source_weights
        ss = ops.sum(a[:, None] * matrix[:ns, :ns] * a[None, :])
        st = ops.sum(a[:, None] * matrix[:ns, ns:]) / m
        tt = ops.sum(matrix[ns:, ns:])
        if estimator == "unbiased":
            squares = ops.sum(ops.square(a))
            ss = (ss - ops.sum(ops.square(a) * paired_kernel(source, source, kernel, bandwidths, center))) / ops.maximum(
                1.0 - squares, 1e-12)
            tt = (tt - ops.sum(paired_kernel(target, target, kernel, bandwidths, center))) / ops.maximum(m * (m - 1.0), 1.0)
        else:
            tt = tt / (m * m)
        return ss + tt - 2.0 * st
    return mmd_from_sums(
        ops.sum(matrix[:ns, :ns]), ops.sum(matrix[ns:, ns:]), ops.sum(matrix[:ns, ns:]), n, m,
        ops.sum(paired_kernel(source, source, kernel, bandwidths, center)),
        ops.sum(paired_kernel(target, target, kernel, bandwidths, center)),
        unbiased=estimator == "unbiased",
    )


def covariance(features, weights=None):
    """Unbiased covariance matrix of ``(n, d)`` features, ``(d, d)`` float32.

    With ``weights`` (n,), non-negative, a_i = w_i / sum w: mean mu = sum a_i x_i and
    C = sum a_i (x_i - mu)(x_i - mu)^T / (1 - sum a_i^2) (unbiased for reliability
    weights; uniform weights give the unweighted matrix).

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    print(ops.covariance(np.random.default_rng(0).normal(size=(100, 3))))  # about the identity
    ```
    """
    features = _float32(features)
    if weights is not None:
        a = _float32(weights)
        a = a / ops.maximum(ops.sum(a), 1e-12)
        centred = features - ops.sum(a[:, None] * features, axis=0, keepdims=True)
        scatter = ops.matmul(ops.transpose(centred * a[:, None]), centred)
        return scatter / ops.maximum(1.0 - ops.sum(ops.square(a)), 1e-6)
    n = ops.cast(ops.shape(features)[0], "float32")
    centred = features - ops.mean(features, axis=0, keepdims=True)
    return ops.matmul(ops.transpose(centred), centred) / ops.maximum(n - 1.0, 1.0)


def coral_from_covariances(source_covariance, target_covariance):
    """||C_s - C_t||_F^2 / (4 d^2) from two covariance matrices (numpy or tensors, any float dtype)."""
    difference = source_covariance - target_covariance
    if isinstance(difference, np.ndarray):
        d = difference.shape[-1]
        return (difference**2).sum() / (4.0 * d * d)
    # The static width can be unknown (after all_gather under tf.distribute): read it in the graph.
    d = ops.cast(ops.shape(difference)[-1], difference.dtype)
    return ops.sum(ops.square(difference)) / (4.0 * d * d)


def coral(source, target, source_weights=None):
    """Deep CORAL distance ||Cov_s - Cov_t||_F^2 / (4 d^2) (Sun & Saenko 2016), float32 scalar.

    Covariances are unbiased (n - 1); means are ignored. The loss of ``da.CORAL``;
    ``da.gap.coral`` computes the same number with float64 block-wise moments.
    ``source_weights`` (n,): Cov_s is the weighted covariance (see :func:`covariance`).

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    rng = np.random.default_rng(0)
    print(ops.coral(rng.normal(size=(64, 4)), 2 * rng.normal(size=(64, 4))))
    ```
    """
    return coral_from_covariances(covariance(source, source_weights), covariance(target))


def entropy(probabilities, axis=-1):
    """Shannon entropy H(p) = -sum_k p_k log p_k per row, in nats, float32.

    p is clipped at 1e-7 inside the log so the gradient stays finite at p = 0. The
    loss of ``da.EntropyMinimization`` (its mean) and of the entropy-based validators.

    Example:

    ```python
    from domadapt import ops
    print(ops.entropy([[0.5, 0.5], [1.0, 0.0]]))  # [0.693, 0]
    ```
    """
    probabilities = _float32(probabilities)
    return -ops.sum(probabilities * ops.log(ops.clip(probabilities, 1e-7, 1.0)), axis=axis)


def fit_logistic_regression(features, labels, *, num_classes=None, l2=1e-2, max_iterations=500):
    """L2-regularised multinomial logistic regression by L-BFGS (numpy/scipy, float64).

    Minimises mean_i -log softmax(x_i W + c)_{y_i} + (l2 / 2) ||W||_F^2 (the bias c
    is not penalised). With two classes the decision score is x @ (W[:, 1] - W[:, 0]) +
    (c[1] - c[0]): at the optimum W[:, 0] = -W[:, 1], so this is the binary logistic
    regression with penalty (l2 / 4) ||w||^2 on w = W[:, 1] - W[:, 0].

    Args:
        features: ``(n, d)`` array (standardise it first).
        labels: ``(n,)`` integer classes in ``[0, num_classes)``.
        num_classes: default ``max(labels) + 1``, at least 2.
        l2: penalty on the weights.

    Returns:
        ``(weights, bias)`` of shapes ``(d, k)`` and ``(k,)``; logits = x @ weights + bias.

    Example:

    ```python
    import numpy as np
    from domadapt import ops
    x = np.r_[np.zeros((10, 1)), np.ones((10, 1))]
    weights, bias = ops.fit_logistic_regression(x, np.r_[np.zeros(10), np.ones(10)].astype(int))
    print(np.argmax(x @ weights + bias, axis=1))
    ```
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    count, dimension = features.shape
    num_classes = max(int(num_classes or labels.max() + 1), 2)
    one_hot = np.eye(num_classes)[labels]

    def loss_and_gradient(flat):
        weights = flat.reshape(dimension + 1, num_classes)
        logits = features @ weights[:-1] + weights[-1]
        logits -= logits.max(axis=1, keepdims=True)
        log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -np.sum(one_hot * log_probabilities) / count + 0.5 * l2 * np.sum(weights[:-1] ** 2)
        residual = (np.exp(log_probabilities) - one_hot) / count
        gradient = np.vstack([features.T @ residual + l2 * weights[:-1], residual.sum(axis=0)])
        return loss, gradient.ravel()

    start = np.zeros((dimension + 1) * num_classes)
    result = optimize.minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B",
                               options={"maxiter": max_iterations})
    weights = result.x.reshape(dimension + 1, num_classes)
    return weights[:-1], weights[-1]


__all__ = [
    "BANDWIDTHS", "ESTIMATORS", "KERNELS", "MIN_BANDWIDTH", "MULTI_KERNEL_MULTIPLIERS", "check_kernel_options",
    "coral", "coral_from_covariances", "covariance", "entropy", "fit_logistic_regression", "kernel_matrix",
    "mean_pairwise_squared_distance", "median_pairwise_squared_distance", "mmd", "mmd_from_sums", "paired_kernel",
    "pooled_center", "rbf_bandwidths", "squared_distances",
]
