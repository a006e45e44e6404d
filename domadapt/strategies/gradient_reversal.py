"""The strategy's former name: ``da.GradientReversal`` is now :class:`~domadapt.DANN`."""

from __future__ import annotations

import warnings

import keras

from domadapt.strategies.dann import DANN


# Registered under the old name so adapters saved as "domadapt>GradientReversal" still load.
@keras.saving.register_keras_serializable(package="domadapt")
class GradientReversal(DANN):
    """Deprecated name of :class:`~domadapt.DANN` (the strategy); warns when constructed.

    The gradient reversal *layer* is :class:`domadapt.layers.GradientReversal`.

    Example:

    ```python
    import domadapt as da
    strategy = da.DANN()  # instead of da.GradientReversal()
    ```
    """

    def __init__(self, *args, **kwargs):
        warnings.warn(
            "da.GradientReversal (the strategy) is renamed da.DANN; the layer is da.layers.GradientReversal. "
            "The old name will be removed in a future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
