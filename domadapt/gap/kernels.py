"""Kernel two-sample statistics: MMD (block-wise, linear-time), permutation test, KID.

Kernel sums are computed block by block on TensorFlow's default device (a GPU
when there is one), so memory stays bounded at a few ``block_size^2`` matrices
whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from domadapt import ops
from domadapt.gap.checks import as_features, check_positive, check_seed, subsample

# At most this many pooled samples estimate the median bandwidth (it sorts an n x n matrix).
MEDIAN_SAMPLES = 1000


_BLOCK_SIGNATURE = (tf.TensorSpec([None, None], tf.float32),) * 2 + (tf.TensorSpec([None], tf.float32),)


def _per_kernel(function):
    """One traced function per kernel kind, for blocks of any size (no retracing)."""
    return {
        kind: tf.function(lambda a, b, bandwidths, kind=kind: function(a, b, kind, bandwidths),
                          input_signature=_BLOCK_SIGNATURE, autograph=False)
        for kind in ops.KERNELS
    }


# sum_j k(a_i, b_j) per row i of one block, and k(a_i, b_i) per row (float32). The data
# arrive centred on the pooled mean (in float64, by `prepare`), so blocks are not re-centred.
def _block_row_sums(a, b, kind, bandwidths):
    if kind != "rbf":
        return tf.reduce_sum(ops.kernel_matrix(a, b, kind, bandwidths, center=0.0), 1)
    # One bandwidth at a time: ops.kernel_matrix stacks a (bandwidths, n, m) tensor, 5 block^2 matrices
    # for "multi" (~335 MB at block 4096), where this keeps two.
    distances = ops.squared_distances(a, b, center=0.0)
    row_sums = tf.foldl(lambda total, bandwidth: total + tf.reduce_sum(tf.exp(-distances / bandwidth), 1),
                        bandwidths, initializer=tf.zeros([tf.shape(a)[0]], tf.float32),
                        parallel_iterations=1)  # one exp matrix at a time (the default runs 10 at once)
    return row_sums / tf.cast(tf.size(bandwidths), tf.float32)


_BLOCK_SUMS = _per_kernel(_block_row_sums)
_PAIRED = _per_kernel(ops.paired_kernel)


class _Kernel:
    """One of :mod:`domadapt.ops`' kernels with its bandwidths fixed, on float64-centred float32 data."""

    def __init__(self, kind, bandwidths=None):
        self.kind = kind
        self.bandwidths = tf.constant([1.0]) if bandwidths is None else tf.cast(bandwidths, tf.float32)

    def matrix(self, a, b):
        return ops.kernel_matrix(a, b, self.kind, self.bandwidths, center=0.0)

    def block_sum(self, a, b):
        return _BLOCK_SUMS[self.kind](a, b, self.bandwidths)

    def paired(self, a, b):
        return _PAIRED[self.kind](tf.constant(a, tf.float32), tf.constant(b, tf.float32), self.bandwidths)

    def diagonal_sum(self, x, chunk=8192):
        """sum_i k(x_i, x_i), without forming the matrix."""
        return sum(float(tf.reduce_sum(tf.cast(self.paired(x[i : i + chunk], x[i : i + chunk]), tf.float64)))
                   for i in range(0, len(x), chunk))


def kernel_sum(a, b, kernel, block_size=4096, symmetric=False):
    """sum_{i, j} k(a_i, b_j) over all pairs, in blocks, accumulated in float64."""
    total = 0.0
    for i in range(0, len(a), block_size):
        a_block = tf.constant(a[i : i + block_size], tf.float32)
        start = i if symmetric else 0
        for j in range(start, len(b), block_size):
            rows = kernel.block_sum(a_block, tf.constant(b[j : j + block_size], tf.float32))
            value = float(tf.reduce_sum(tf.cast(rows, tf.float64)))
            total += value if (not symmetric or i == j) else 2.0 * value
    return total


def prepare(source, target, kernel, bandwidth, seed):
    """Validate the kernel options, centre both sets on their pooled mean (float64; not for
    the polynomial kernel) and fix the bandwidths as :func:`domadapt.ops.rbf_bandwidths`
    defines them ("median" on ``MEDIAN_SAMPLES`` evenly spaced samples, shared between the domains in
    proportion to their sizes,
    "mean"/"multi" exactly on all samples). Returns float32 source, target and a kernel."""
    bandwidth = ops.check_kernel_options(kernel, bandwidth)
    if kernel != "polynomial":
        # Sums in float64 without a pooled copy, and centring block by block into float32: a whole-set
        # float64 difference held 6x one domain's features at peak (1.2 GB for 100k x 512).
        count = len(source) + len(target)
        center = (source.sum(axis=0, dtype=np.float64) + target.sum(axis=0, dtype=np.float64)) / count
        source, target = _centred(source, center), _centred(target, center)
    else:
        source, target = np.asarray(source, dtype=np.float32), np.asarray(target, dtype=np.float32)
    if kernel != "rbf":
        return source, target, _Kernel(kernel)
    if bandwidth == "median" and len(source) + len(target) > MEDIAN_SAMPLES:
        # Evenly spaced samples of each domain, in proportion to its size: the same set whichever domain
        # comes first, so mmd(a, b) == mmd(b, a).
        share = round(MEDIAN_SAMPLES * len(source) / (len(source) + len(target)))
        pooled = np.concatenate([_evenly_spaced(source, share), _evenly_spaced(target, MEDIAN_SAMPLES - share)])
    else:
        pooled = np.concatenate([source, target])
    return source, target, _Kernel("rbf", ops.rbf_bandwidths(pooled, bandwidth))


def _centred(features, center, block_size=8192):
    """``features - center`` in float32, computed in float64 one block of rows at a time."""
    centred = np.empty(features.shape, dtype=np.float32)
    for start in range(0, len(features), block_size):
        centred[start : start + block_size] = features[start : start + block_size] - center
    return centred


def _domain_rng(seed, size):
    return np.random.default_rng(None if seed is None else [seed, size])


def _evenly_spaced(features, count):
    return features[np.unique(np.linspace(0, len(features) - 1, max(count, 1)).round().astype(int))]


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

    Kernels and bandwidths are those of :mod:`domadapt.ops` (one definition shared
    with ``da.MMD``): ``"rbf"`` exp(-||x - y||^2 / b), with ``bandwidth`` b =
    ``"median"`` (the median pooled pairwise squared distance, from up to
    ``MEDIAN_SAMPLES`` samples), ``"mean"`` (the mean one, exact: 2 tr(Cov)),
    ``"multi"`` (the mean of kernels at 0.25x to 4x the mean one), a number or a
    list of numbers; ``"linear"`` x.y; ``"polynomial"`` (x.y/d + 1)^3. Distances are
    computed on features centred on the pooled mean (in float64), so a large common
    offset costs no precision, for ``"rbf"`` and ``"linear"``; ``"polynomial"`` is
    not shift-invariant, so its features stay as they are, in float32 (offset 1000:
    twice the float64 value): use :func:`kid` (float64) there. With equal options, ``da.MMD``'s loss on a batch is
    this number on that batch (up to float32 rounding; for ``"linear"``, on the same
    pairs: the loss pairs a batch's rows in order, this function draws the pairs at
    random with ``seed``). Symmetric in its two arguments.

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
    seed = check_seed(seed)
    ops.check_kernel_options(kernel, bandwidth, estimator)
    source, target, kernel_fn = prepare(source, target, kernel, bandwidth, seed)
    if estimator == "linear":
        return _finite(_linear_time_mmd(source, target, kernel_fn, seed))
    ss = kernel_sum(source, source, kernel_fn, block_size, symmetric=True)
    tt = kernel_sum(target, target, kernel_fn, block_size, symmetric=True)
    st = kernel_sum(source, target, kernel_fn, block_size)
    unbiased = estimator == "unbiased"
    diagonals = (kernel_fn.diagonal_sum(source), kernel_fn.diagonal_sum(target)) if unbiased else (0.0, 0.0)
    return _finite(float(ops.mmd_from_sums(ss, tt, st, len(source), len(target), *diagonals, unbiased=unbiased)))


def _finite(value):
    if not np.isfinite(value):
        raise ValueError("The MMD overflowed float32 (kernel values or squared distances above ~3e38): the features "
                         "are too large in magnitude; rescale them (e.g. divide by their standard deviation).")
    return value


def _linear_time_mmd(source, target, kernel_fn, seed, chunk=8192):
    """Gretton et al.'s linear-time statistic over disjoint pairs, in chunks (float64 sums).

    The pairs are drawn at random (seeded), not in row order: the larger domain's unused rows are then a
    random remainder, not its tail, and data sorted by class give no bias. Each domain's order depends on the
    seed and its own size only, so swapping the domains gives the same pairs (the statistic stays symmetric)."""
    pairs = min(len(source), len(target)) // 2
    if pairs < 1:
        raise ValueError("The linear-time MMD needs at least 2 samples per domain.")
    source_rows = _domain_rng(seed, len(source)).permutation(len(source))[: 2 * pairs]
    target_rows = _domain_rng(seed, len(target)).permutation(len(target))[: 2 * pairs]
    total = 0.0
    for start in range(0, pairs, chunk):
        stop = min(pairs, start + chunk)
        source_chunk, target_chunk = source[source_rows[2 * start : 2 * stop]], target[target_rows[2 * start : 2 * stop]]
        s1, s2 = source_chunk[0::2], source_chunk[1::2]
        t1, t2 = target_chunk[0::2], target_chunk[1::2]
        total += sum(
            sign * float(tf.reduce_sum(tf.cast(kernel_fn.paired(a, b), tf.float64)))
            for sign, a, b in ((1, s1, s2), (1, t1, t2), (-1, s1, t2), (-1, s2, t1))
        )
    return total / pairs


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


# Memory the permutation test may take for its pooled kernel matrix.
MMD_TEST_MAX_BYTES = 4 * 2**30


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
    if max_samples < 2:  # the unbiased statistic divides by n (n - 1): NaN, with a p-value that looked significant
        raise ValueError(f"Argument `max_samples` must be at least 2 (the unbiased MMD needs two samples per domain); "
                         f"received max_samples={max_samples!r}.")
    rng = np.random.default_rng(check_seed(seed))
    source = subsample(source, max_samples, rng)
    target = subsample(target, max_samples, rng)
    pooled_count = len(source) + len(target)
    # The test holds the pooled kernel matrix: float32 from the kernel plus a float64 copy (x5 for "multi").
    needed = pooled_count**2 * (12 + (32 if bandwidth == "multi" else 0))
    if needed > MMD_TEST_MAX_BYTES:
        raise ValueError(f"Argument `max_samples`: {pooled_count} pooled samples need ~{needed / 2**30:.0f} GiB for "
                         f"the permutation test's kernel matrix (limit {MMD_TEST_MAX_BYTES / 2**30:.0f} GiB); use "
                         "max_samples <= 5000 (the test's power is high long before that), or da.gap.mmd for the "
                         "statistic on every sample.")
    source, target, kernel_fn = prepare(source, target, kernel, bandwidth, seed)
    pooled = np.concatenate([source, target])
    n, m = len(source), len(target)
    matrix = np.asarray(kernel_fn.matrix(pooled, pooled), dtype=np.float64)
    # The float32 kernel is symmetric only to ~1e-7: a permutation that mirrors the observed split (n = m)
    # then scored a hair below it and went uncounted (p 0.055 where exact enumeration gives 0.10).
    matrix = (matrix + matrix.T) / 2.0
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
        exceed += int(np.sum(statistics(indicators) >= observed - 1e-10 * max(1.0, abs(observed))))
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
    if subset_size < 2:
        raise ValueError(f"Argument `subset_size` must be at least 2 (the unbiased estimate leaves out i = j pairs); "
                         f"received subset_size={subset_size!r}.")
    seed = check_seed(seed)
    # One generator per domain, keyed by its size: kid(a, b) == kid(b, a) (one shared generator paired other
    # subsets when the arguments were swapped).
    source_rng, target_rng = _domain_rng(seed, len(source)), _domain_rng(seed, len(target))
    size = min(subset_size, len(source), len(target))
    values = []
    for _ in range(subsets):
        # float64 per subset, not the whole sets (50k x 2048 features would double to ~800 MB each)
        s = np.asarray(source[source_rng.choice(len(source), size, replace=False)], dtype=np.float64)
        t = np.asarray(target[target_rng.choice(len(target), size, replace=False)], dtype=np.float64)
        values.append(_polynomial_mmd(s, t))
    return _finite(float(np.mean(values)))


def _polynomial_mmd(source, target):
    """Unbiased MMD^2 with KID's kernel (x.y / d + 1)^3, in float64: the kernel is not shift-invariant, so
    features cannot be centred, and with a large offset float32 loses every digit (offset 1000: wrong sign)."""
    width, n, m = source.shape[1], len(source), len(target)
    kernel = lambda a, b: (a @ b.T / width + 1.0) ** 3  # noqa: E731
    within_source, within_target = kernel(source, source), kernel(target, target)
    return ((within_source.sum() - np.trace(within_source)) / (n * (n - 1))
            + (within_target.sum() - np.trace(within_target)) / (m * (m - 1)) - 2.0 * kernel(source, target).mean())
