"""Feature alignment by maximum mean discrepancy (DAN)."""

from __future__ import annotations

import warnings

import keras

from domadapt import _distribute, ops
from domadapt.strategies._class_weights import ClassWeightedAlignment
from domadapt.strategies.base import WeightedStrategy
from domadapt.tasks import TASKS

# The 0.1 argument `kernels=` and the options it stands for.
_OLD_KERNELS = {"multi": ("rbf", "multi"), "rbf": ("rbf", "mean"), "linear": ("linear", "multi")}


def scale_free(source, target):
    """``(source / sigma, target / sigma, sigma)``: features divided by their pooled spread, with gradient.

    sigma = sqrt(mean_{i != j} ||x_i - x_j||^2 / (2 d)), the root-mean-square
    per-dimension standard deviation of source and target pooled. :class:`MMD`
    computes its data-driven bandwidths on the result, so the loss value is
    unchanged (equal to ``da.gap.mmd``) and exactly invariant to the features'
    scale: it no longer rewards shrinking them (see ``MMD.loss``).
    """
    pooled = keras.ops.concatenate([source, target], axis=0)
    dimensions = keras.ops.cast(keras.ops.shape(pooled)[-1], "float32")
    sigma = keras.ops.sqrt(keras.ops.maximum(ops.mean_pairwise_squared_distance(pooled) / (2.0 * dimensions), 1e-12))
    return source / sigma, target / sigma, sigma


@keras.saving.register_keras_serializable(package="domadapt")
class MMD(ClassWeightedAlignment, WeightedStrategy):
    """Minimise the squared MMD between source and target features of each batch.

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) (Gretton et al. 2012), computed by
    :func:`domadapt.ops.mmd` with the same ``kernel``, ``bandwidth`` and ``estimator``
    options as ``da.gap.mmd``: with equal options the loss on a batch is
    ``da.gap.mmd`` of that batch's features. The default is DAN's multi-kernel MMD
    (Long et al. 2015): the mean of Gaussian kernels at 0.25x to 4x the batch's mean
    pairwise squared distance, biased estimator (>= 0). With a data-driven bandwidth
    the loss is invariant to the features' scale and its gradient does not grow as
    they shrink (:func:`scale_free`; the value is unchanged): before 0.2 it collapsed
    pooled features that started small. Under ``tf.distribute`` the global batch is used.

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
    tasks = TASKS  # pooled features exist in every task
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
        if self.kernel != "rbf" or not isinstance(self.bandwidth, str):
            value = ops.mmd(source, target, self.kernel, self.bandwidth, self.estimator, source_weights=weights)
            return {"mmd_loss": self.current_weight(step) * value}
        # A data-driven bandwidth b carries no gradient, so on the raw features the
        # gradient sees exp(-d / b) with b fixed: shrinking every feature lowers most
        # MMDs (source and target of different spread, clusters), and the gradient grows
        # like 1 / scale as they shrink. Pooled features that start small were pulled
        # into a collapse (std 1e-7..1e-4, source accuracy at chance: tests/test_health.py).
        # Here: the MMD of the features at unit spread (scale-free, so no reward for
        # shrinking), its gradient multiplied by sigma (constant), i.e. the gradient the
        # old loss had on unit-spread features, whatever the features' scale. Value: MMD^2.
        source, target, sigma = scale_free(source, target)
        value = ops.mmd(source, target, self.kernel, self.bandwidth, self.estimator, source_weights=weights)
        fixed = keras.ops.stop_gradient(value)
        value = fixed + keras.ops.stop_gradient(sigma) * (value - fixed)
        return {"mmd_loss": self.current_weight(step) * value}

    def get_config(self):
        return {**super().get_config(), **self.class_weights_config(), "kernel": self.kernel, "bandwidth": self.bandwidth,
                "estimator": self.estimator}
