"""Feature alignment by maximum mean discrepancy (DAN)."""

from __future__ import annotations

import warnings

import keras

from domadapt import _distribute, ops
from domadapt.strategies._class_weights import ClassWeightedAlignment
from domadapt.strategies.base import WeightedStrategy

# The 0.1 argument `kernels=` and the options it stands for.
_OLD_KERNELS = {"multi": ("rbf", "multi"), "rbf": ("rbf", "mean"), "linear": ("linear", "multi")}


def scale_free(source, target):
    """Source and target features divided by their pooled scale s = sqrt(mean_{i != j} ||x_i - x_j||^2), with gradient.

    A data-driven bandwidth b is computed on the batch and carries no gradient (see
    :func:`domadapt.ops.rbf_bandwidths`), so the loss's gradient sees exp(-d / b) with
    b fixed: shrinking every feature towards the batch mean lowers most MMDs (source
    and target that differ in spread, clusters), and the gradient grows like 1 / scale
    as they shrink: a run whose pooled features start small can be pulled into a
    collapse (measured: see tests/test_health.py). Dividing by s (kept in the graph)
    gives the same value (the bandwidth is then computed on features whose mean
    pairwise squared distance is 1) but a loss exactly invariant to the features'
    scale: the MMD neither rewards nor punishes shrinking them.
    """
    pooled = keras.ops.concatenate([source, target], axis=0)
    scale = keras.ops.sqrt(keras.ops.maximum(ops.mean_pairwise_squared_distance(pooled), 1e-12))
    return source / scale, target / scale


@keras.saving.register_keras_serializable(package="domadapt")
class MMD(ClassWeightedAlignment, WeightedStrategy):
    """Minimise the squared MMD between source and target features of each batch.

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) (Gretton et al. 2012), computed by
    :func:`domadapt.ops.mmd` with the same ``kernel``, ``bandwidth`` and ``estimator``
    options as ``da.gap.mmd``: with equal options the loss on a batch is
    ``da.gap.mmd`` of that batch's features. The default is DAN's multi-kernel MMD
    (Long et al. 2015): the mean of Gaussian kernels at 0.25x to 4x the batch's mean
    pairwise squared distance, biased estimator (>= 0). With a data-driven bandwidth
    the loss is made invariant to the features' scale (:func:`scale_free`: same
    value, no gradient that shrinks the features; before 0.2 it collapsed small
    pooled features). Under ``tf.distribute`` the global batch is used.

    Reports ``mmd_loss`` (current weight * MMD^2).

    Args:
        weight: loss weight.
        schedule: ``"ganin"`` (default) ramps the weight from 0 so the classifier
            learns first (without it, a large initial gap can collapse the
            features); ``"constant"`` or a callable ``progress -> multiplier``.
        kernel: ``"rbf"`` (default), ``"linear"`` or ``"polynomial"``.
        bandwidth: ``"multi"`` (default), ``"mean"``, ``"median"``, a positive number or a
            list of them (rbf only; see :mod:`domadapt.ops`).
        estimator: ``"biased"`` (default), ``"unbiased"`` or ``"linear"`` (linear time).
        class_weights: per-class weights of the source examples for a target whose
            class mix differs: ``None`` (default), ``"auto"`` (estimated during
            training, PADA) or one weight per class; the source kernel means become
            weighted means (see :func:`domadapt.ops.mmd` ``source_weights`` and
            :class:`~domadapt.DANN`).
        kernels: deprecated (0.1): ``"multi"`` is ``bandwidth="multi"``, ``"rbf"`` is
            ``bandwidth="mean"``, ``"linear"`` is ``kernel="linear"``.

    Example:

    ```python
    import keras, domadapt as da
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.MMD(bandwidth="median")])
    ```
    """

    log_names = ("mmd_loss",)
    default_schedule = "ganin"

    def __init__(self, weight=1.0, schedule=None, *, kernel="rbf", bandwidth="multi", estimator="biased",
                 class_weights=None, kernels=None, **kwargs):
        super().__init__(weight=weight, schedule=schedule, **kwargs)
        self.init_class_weights(class_weights)
        if kernels is not None:
            if kernels not in _OLD_KERNELS:
                raise ValueError(
                    f"Argument `kernels` must be one of {tuple(_OLD_KERNELS)} (deprecated: use `kernel=` and "
                    f"`bandwidth=`); received kernels={kernels!r}."
                )
            warnings.warn(
                f"MMD(kernels={kernels!r}) is deprecated; use MMD(kernel={_OLD_KERNELS[kernels][0]!r}, "
                f"bandwidth={_OLD_KERNELS[kernels][1]!r}).", DeprecationWarning, stacklevel=2,
            )
            kernel, bandwidth = _OLD_KERNELS[kernels]
        bandwidth = ops.check_kernel_options(kernel, bandwidth, estimator)
        self.kernel = kernel
        self.bandwidth = bandwidth if isinstance(bandwidth, str) else list(bandwidth)
        self.estimator = estimator

    def setup(self, adapter):
        self.setup_class_weights(adapter)

    def loss(self, step):
        # The global batch under tf.distribute; each replica then holds the same loss,
        # which the train step divides by the number of replicas.
        source = _distribute.gather_replicas(step.source_features)
        target = _distribute.gather_replicas(step.target_features)
        weights = self.source_class_weights(step)
        if weights is not None:
            weights = _distribute.gather_replicas(weights)
        if self.kernel == "rbf" and isinstance(self.bandwidth, str):
            source, target = scale_free(source, target)
        value = ops.mmd(source, target, self.kernel, self.bandwidth, self.estimator, source_weights=weights)
        return {"mmd_loss": self.current_weight(step) * value}

    def get_config(self):
        return {**super().get_config(), **self.class_weights_config(), "kernel": self.kernel, "bandwidth": self.bandwidth,
                "estimator": self.estimator}
