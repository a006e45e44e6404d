"""Kernel two-sample statistics: MMD (block-wise, linear-time), permutation test, KID.

Kernel sums are computed block by block on TensorFlow's default device (a GPU
when there is one), so memory stays bounded at a few ``block_size^2`` matrices
whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from domadapt.gap._checks import as_features, check_positive, subsample

KERNELS = ("rbf", "linear", "polynomial")


@tf.function(reduce_retracing=True)
def _block_kernel(a, b, kernel_id, bandwidths, degree, coef0, gamma):
    """Kernel matrix of two blocks: rbf (mean over bandwidths), linear or polynomial."""
    if kernel_id == 1:  # linear
        return tf.matmul(a, b, transpose_b=True)
    if kernel_id == 2:  # polynomial
        return tf.pow(gamma * tf.matmul(a, b, transpose_b=True) + coef0, degree)
    distances = (
        tf.reduce_sum(a * a, axis=1, keepdims=True)
        - 2.0 * tf.matmul(a, b, transpose_b=True)
        + tf.transpose(tf.reduce_sum(b * b, axis=1, keepdims=True))
    )
    distances = tf.maximum(distances, 0.0)
    values = tf.exp(-distances[None] / bandwidths[:, None, None])
    return tf.reduce_mean(values, axis=0)


class _Kernel:
    def __init__(self, kind, bandwidths=(1.0,), degree=3, coef0=1.0, gamma=1.0):
        self.kind = kind
        self.kernel_id = KERNELS.index(kind)
        self.bandwidths = tf.constant(np.asarray(bandwidths, "float32"))
        self.degree = tf.constant(float(degree))
        self.coef0 = tf.constant(float(coef0))
        self.gamma = tf.constant(float(gamma))

    def __call__(self, a, b):
        return _block_kernel(a, b, self.kernel_id, self.bandwidths, self.degree, self.coef0, self.gamma)

    def diagonal_sum(self, x):
        """sum_i k(x_i, x_i), without forming the matrix."""
        if self.kind == "rbf":
            return float(len(x))
        squared_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        if self.kind == "linear":
            return float(squared_norms.sum())
        return float(np.sum((float(self.gamma) * squared_norms + float(self.coef0)) ** float(self.degree)))


def kernel_sum(a, b, kernel, block_size=4096, symmetric=False):
    """sum_{i, j} k(a_i, b_j) over all pairs, in blocks, accumulated in float64."""
    total = 0.0
    for i in range(0, len(a), block_size):
        a_block = tf.constant(a[i : i + block_size], tf.float32)
        start = i if symmetric else 0
        for j in range(start, len(b), block_size):
            block = kernel(a_block, tf.constant(b[j : j + block_size], tf.float32))
            value = float(tf.reduce_sum(tf.cast(tf.reduce_sum(block, axis=1), tf.float64)))
            total += value if (not symmetric or i == j) else 2.0 * value
    return total


def median_bandwidth(source, target, rng, max_samples=1000):
    """Median of pooled pairwise squared distances (the median heuristic), from a subsample."""
    pooled = subsample(np.concatenate([source, target]), max_samples, rng).astype(np.float64)
    squared = np.sum(pooled**2, axis=1)
    distances = squared[:, None] - 2 * pooled @ pooled.T + squared[None]
    upper = distances[np.triu_indices(len(pooled), k=1)]
    median = float(np.median(np.maximum(upper, 0.0)))
    # Kernels run in float32: a bandwidth that rounds to zero there would give 0/0.
    return median if median > 1e3 * np.finfo(np.float32).tiny else 1.0


def _make_kernel(kernel, bandwidth, source, target, seed):
    if kernel not in KERNELS:
        raise ValueError(f"Argument `kernel` must be one of {KERNELS}; received kernel={kernel!r}.")
    if kernel != "rbf":
        return _Kernel(kernel, gamma=1.0 / source.shape[1])
    rng = np.random.default_rng(seed)
    if isinstance(bandwidth, str):
        if bandwidth not in ("median", "multi"):
            raise ValueError(
                f"Argument `bandwidth` must be 'median', 'multi', a positive number or a list of them; "
                f"received bandwidth={bandwidth!r}."
            )
        base = median_bandwidth(source, target, rng)
        bandwidths = [base] if bandwidth == "median" else [base * m for m in (0.25, 0.5, 1.0, 2.0, 4.0)]
    else:
        bandwidths = np.atleast_1d(np.asarray(bandwidth, dtype=np.float64)).tolist()
        if not bandwidths or any(not np.isfinite(b) or b <= 0 for b in bandwidths):
            raise ValueError(f"Argument `bandwidth` must hold positive numbers; received bandwidth={bandwidth!r}.")
    return _Kernel("rbf", bandwidths=bandwidths)


def mmd(source_features, target_features, *, kernel="rbf", bandwidth="median", estimator="unbiased",
        block_size=4096, seed=0):
    """Squared maximum mean discrepancy between two feature sets. Lower means closer.

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) (Gretton et al. 2012).

    * ``estimator="unbiased"`` (default): the U-statistic, leaving out i = j pairs.
      Its expectation is 0 for identical distributions, so it can be slightly
      negative. Cost O((n + m)^2 d), memory O(block_size^2), block-wise.
    * ``"biased"``: the V-statistic (all pairs), >= 0.
    * ``"linear"``: the linear-time estimator of Gretton et al. (2012, sec. 6):
      mean over disjoint pairs of h = k(s1, s2) + k(t1, t2) - k(s1, t2) - k(s2, t1);
      unbiased, O(n d), noisier: for very large N.

    Kernels: ``"rbf"`` exp(-||x - y||^2 / b), with ``bandwidth`` b = ``"median"``
    (the median pooled pairwise squared distance, from up to 1000 samples),
    ``"multi"`` (the mean of kernels at 0.25x to 4x the median), a number or a
    list of numbers; ``"linear"`` x.y; ``"polynomial"`` (x.y/d + 1)^3.
    Symmetric in its two arguments.

    Returns:
        float.

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.mmd(rng.normal(size=(500, 8)), rng.normal(0.5, 1, size=(400, 8))))  # > 0
    ```
    """
    source, target = as_features(source_features, target_features)
    check_positive(block_size, "block_size")
    kernel_fn = _make_kernel(kernel, bandwidth, source, target, seed)
    source = source.astype(np.float32)
    target = target.astype(np.float32)
    n, m = len(source), len(target)
    if estimator == "linear":
        return _linear_time_mmd(source, target, kernel_fn)
    if estimator not in ("unbiased", "biased"):
        raise ValueError(f"Argument `estimator` must be 'unbiased', 'biased' or 'linear'; received {estimator!r}.")
    ss = kernel_sum(source, source, kernel_fn, block_size, symmetric=True)
    tt = kernel_sum(target, target, kernel_fn, block_size, symmetric=True)
    st = kernel_sum(source, target, kernel_fn, block_size)
    if estimator == "biased":
        return ss / n**2 + tt / m**2 - 2 * st / (n * m)
    ss -= kernel_fn.diagonal_sum(source)
    tt -= kernel_fn.diagonal_sum(target)
    return ss / (n * (n - 1)) + tt / (m * (m - 1)) - 2 * st / (n * m)


def _linear_time_mmd(source, target, kernel_fn, chunk=8192):
    pairs = min(len(source), len(target)) // 2
    if pairs < 1:
        raise ValueError("The linear-time MMD needs at least 2 samples per domain.")
    total = 0.0
    for start in range(0, pairs, chunk):
        stop = min(pairs, start + chunk)
        s1, s2 = source[2 * start : 2 * stop : 2], source[2 * start + 1 : 2 * stop : 2]
        t1, t2 = target[2 * start : 2 * stop : 2], target[2 * start + 1 : 2 * stop : 2]
        total += sum(
            sign * float(tf.reduce_sum(tf.cast(_paired_kernel(kernel_fn, a, b), tf.float64)))
            for sign, a, b in ((1, s1, s2), (1, t1, t2), (-1, s1, t2), (-1, s2, t1))
        )
    return total / pairs


def _paired_kernel(kernel_fn, a, b):
    """k(a_i, b_i) for each row i (no matrix)."""
    a = tf.constant(a, tf.float32)
    b = tf.constant(b, tf.float32)
    if kernel_fn.kind == "linear":
        return tf.reduce_sum(a * b, axis=1)
    if kernel_fn.kind == "polynomial":
        return tf.pow(kernel_fn.gamma * tf.reduce_sum(a * b, axis=1) + kernel_fn.coef0, kernel_fn.degree)
    distances = tf.reduce_sum(tf.square(a - b), axis=1)
    return tf.reduce_mean(tf.exp(-distances[None] / kernel_fn.bandwidths[:, None]), axis=0)


@dataclass(frozen=True)
class MMDTestResult:
    """Outcome of :func:`mmd_test`: the unbiased MMD^2, its permutation p-value and the samples used."""

    statistic: float
    p_value: float
    permutations: int
    num_source: int
    num_target: int

    def __iter__(self):  # so that `statistic, p_value = da.gap.mmd_test(...)` works
        return iter((self.statistic, self.p_value))


def mmd_test(source_features, target_features, *, permutations=1000, kernel="rbf", bandwidth="median",
             max_samples=2000, seed=0):
    """Permutation two-sample test of "both feature sets come from one distribution".

    The statistic is the unbiased MMD^2 (:func:`mmd`); its null distribution comes
    from ``permutations`` random reassignments of the pooled samples to the two
    domains; p = (1 + #{permuted >= observed}) / (1 + permutations). A small p
    (e.g. < 0.05) means the domains differ. Each domain is subsampled to
    ``max_samples`` (the test keeps one pooled kernel matrix in memory).

    Returns:
        :class:`MMDTestResult` (unpacks as ``statistic, p_value``).

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    statistic, p_value = da.gap.mmd_test(rng.normal(size=(200, 4)), rng.normal(0.3, 1, size=(200, 4)))
    ```
    """
    source, target = as_features(source_features, target_features)
    check_positive(permutations, "permutations")
    check_positive(max_samples, "max_samples")
    rng = np.random.default_rng(seed)
    source = subsample(source, max_samples, rng).astype(np.float32)
    target = subsample(target, max_samples, rng).astype(np.float32)
    kernel_fn = _make_kernel(kernel, bandwidth, source, target, seed)
    pooled = np.concatenate([source, target])
    n, m = len(source), len(target)
    matrix = kernel_fn(tf.constant(pooled), tf.constant(pooled)).numpy().astype(np.float64)
    np.fill_diagonal(matrix, 0.0)
    total = matrix.sum()

    def statistics(indicators):
        # indicators: (N, P) 1 for samples assigned to the source.
        product = matrix @ indicators
        within_source = np.einsum("ip,ip->p", indicators, product)
        cross = np.einsum("ip,ip->p", 1.0 - indicators, product)
        within_target = total - within_source - 2.0 * cross
        return within_source / (n * (n - 1)) + within_target / (m * (m - 1)) - 2.0 * cross / (n * m)

    observed = float(statistics(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    exceed = 0
    for start in range(0, permutations, 200):
        count = min(200, permutations - start)
        indicators = np.zeros((n + m, count))
        for column in range(count):
            indicators[rng.permutation(n + m)[:n], column] = 1.0
        exceed += int(np.sum(statistics(indicators) >= observed))
    return MMDTestResult(observed, (1 + exceed) / (1 + permutations), permutations, n, m)


def kid(source_features, target_features, *, subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018). Lower means closer.

    The unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
    over ``subsets`` random subsets of ``min(subset_size, n, m)`` samples per domain.
    Unbiased, so it can be slightly negative for matching domains. Symmetric.

    Returns:
        float (the mean over subsets).

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.kid(rng.normal(size=(300, 16)), rng.normal(1, 1, size=(300, 16)), subsets=10))
    ```
    """
    source, target = as_features(source_features, target_features)
    check_positive(subsets, "subsets")
    check_positive(subset_size, "subset_size")
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(source), len(target))
    values = []
    for _ in range(subsets):
        s = source[rng.choice(len(source), size, replace=False)]
        t = target[rng.choice(len(target), size, replace=False)]
        values.append(mmd(s, t, kernel="polynomial", block_size=max(size, 1)))
    return float(np.mean(values))
