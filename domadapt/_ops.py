"""Tensor maths shared by training losses and the gap tools (keras.ops, differentiable).

Everything here works on float32 feature batches of shape ``(n, d)`` and is
traceable inside a compiled (and XLA-compiled) train step.
"""

from __future__ import annotations

from keras import ops

# Bandwidth multipliers of the multi-kernel MMD (DAN, Long et al. 2015: a family of
# Gaussian kernels around a data-driven base bandwidth).
MULTI_KERNEL_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def squared_distances(a, b):
    """Pairwise squared Euclidean distances, ``(n, d), (m, d) -> (n, m)``, clipped at 0."""
    a_norms = ops.sum(ops.square(a), axis=1, keepdims=True)
    b_norms = ops.sum(ops.square(b), axis=1, keepdims=True)
    distances = a_norms - 2.0 * ops.matmul(a, ops.transpose(b)) + ops.transpose(b_norms)
    return ops.maximum(distances, 0.0)


def gaussian_kernel_mean(distances, bandwidths):
    """Mean over bandwidths s of exp(-distances / s) (s is 2 sigma^2): a kernel with k(x, x) = 1."""
    return sum(ops.exp(-distances / bandwidth) for bandwidth in bandwidths) / len(bandwidths)


def mmd_squared(source, target, multipliers=MULTI_KERNEL_MULTIPLIERS, unbiased=False):
    """Squared maximum mean discrepancy between two batches with a mean of Gaussian kernels.

    MMD^2 = E[k(s, s')] + E[k(t, t')] - 2 E[k(s, t)] (Gretton et al. 2012). The base
    bandwidth is the mean pairwise squared distance of the pooled batch (gradient
    stopped), scaled by each multiplier. ``unbiased=True`` leaves out the diagonal
    terms of the within-domain sums.
    """
    source = ops.cast(source, "float32")
    target = ops.cast(target, "float32")
    pooled = ops.concatenate([source, target], axis=0)
    distances = squared_distances(pooled, pooled)
    n = ops.cast(ops.shape(source)[0], "float32")
    m = ops.cast(ops.shape(target)[0], "float32")
    total = n + m
    base = ops.stop_gradient(ops.sum(distances) / ops.maximum(total * total - total, 1.0))
    base = ops.maximum(base, 1e-6)
    kernel = gaussian_kernel_mean(distances, [base * multiplier for multiplier in multipliers])
    ns = ops.shape(source)[0]
    k_ss = kernel[:ns, :ns]
    k_tt = kernel[ns:, ns:]
    k_st = kernel[:ns, ns:]
    if unbiased:
        # The kernel is 1 on the diagonal.
        ss = (ops.sum(k_ss) - n) / ops.maximum(n * (n - 1.0), 1.0)
        tt = (ops.sum(k_tt) - m) / ops.maximum(m * (m - 1.0), 1.0)
    else:
        ss = ops.mean(k_ss)
        tt = ops.mean(k_tt)
    return ss + tt - 2.0 * ops.mean(k_st)


def linear_mmd_squared(source, target):
    """||mean(source) - mean(target)||^2: MMD^2 with a linear kernel."""
    difference = ops.mean(ops.cast(source, "float32"), axis=0) - ops.mean(ops.cast(target, "float32"), axis=0)
    return ops.sum(ops.square(difference))


def covariance(features):
    """Unbiased covariance matrix of ``(n, d)`` features."""
    features = ops.cast(features, "float32")
    n = ops.cast(ops.shape(features)[0], "float32")
    centred = features - ops.mean(features, axis=0, keepdims=True)
    return ops.matmul(ops.transpose(centred), centred) / ops.maximum(n - 1.0, 1.0)


def coral(source, target):
    """Deep CORAL distance ||Cov_s - Cov_t||_F^2 / (4 d^2) (Sun & Saenko 2016)."""
    d = ops.cast(ops.shape(source)[1], "float32")
    difference = covariance(source) - covariance(target)
    return ops.sum(ops.square(difference)) / (4.0 * d * d)


def entropy(probabilities, axis=-1):
    """Shannon entropy -sum p log p per row, in nats."""
    probabilities = ops.cast(probabilities, "float32")
    return -ops.sum(probabilities * ops.log(ops.clip(probabilities, 1e-7, 1.0)), axis=axis)
