"""domadapt: domain adaptation for Keras 3 models.

Wrap any Keras backbone in :class:`DomainAdapter`, add strategies that use
unlabeled target data, measure the domain gap with :mod:`domadapt.gap`.

Example:

```python
import keras, domadapt as da
backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
adapter = da.DomainAdapter(backbone, num_classes=2,
                           strategies=da.GradientReversal() + da.EntropyMinimization(0.1))
```
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from domadapt import augment, callbacks, gap, layers, validators  # noqa: E402
from domadapt.adapter import DomainAdapter  # noqa: E402
from domadapt.batchnorm import adapt_batchnorm  # noqa: E402
from domadapt.strategies import (  # noqa: E402
    CORAL,
    MMD,
    ConditionalAdversarial,
    EntropyMinimization,
    FineTune,
    GradientReversal,
    MimicAugment,
)
from domadapt.strategy import Recipe, Step, Strategy  # noqa: E402
from domadapt.validators import compare, validate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CORAL",
    "MMD",
    "ConditionalAdversarial",
    "DomainAdapter",
    "EntropyMinimization",
    "FineTune",
    "GradientReversal",
    "MimicAugment",
    "Recipe",
    "Step",
    "Strategy",
    "adapt_batchnorm",
    "augment",
    "callbacks",
    "compare",
    "gap",
    "layers",
    "validate",
    "validators",
]
