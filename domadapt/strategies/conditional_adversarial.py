"""The strategy's former name: ``da.ConditionalAdversarial`` is now :class:`~domadapt.CDAN`."""

from __future__ import annotations

import warnings

import keras

from domadapt.strategies.cdan import CDAN


# Registered under the old name so adapters saved as "domadapt>ConditionalAdversarial" still load.
@keras.saving.register_keras_serializable(package="domadapt")
class ConditionalAdversarial(CDAN):
    """Deprecated name of :class:`~domadapt.CDAN`; warns when constructed.

    Example:

    ```python
    import domadapt as da
    strategy = da.CDAN()  # instead of da.ConditionalAdversarial()
    ```
    """

    def __init__(self, *args, **kwargs):
        warnings.warn(
            "da.ConditionalAdversarial is renamed da.CDAN. The old name will be removed in a future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
