"""domadapt: domain adaptation for Keras 3 models.

Wrap any Keras backbone in :class:`DomainAdapter`, add strategies that use
unlabeled target data, measure the domain gap with :mod:`domadapt.gap`.

Importing domadapt changes nothing in the process environment (set
``TF_CPP_MIN_LOG_LEVEL=2`` yourself to silence TensorFlow's start-up lines).

Example:

```python
import keras, domadapt as da
backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu")])
adapter = da.DomainAdapter(backbone, num_classes=2,
                           strategies=da.DANN(hidden_units=(32,)) + da.EntropyMinimization(0.1))
```
"""

from domadapt import augment, backbones, callbacks, data, datasets, gap, layers, strategies, validators
from domadapt.adapter import DomainAdapter
from domadapt.batchnorm import adapt_batchnorm
from domadapt.strategies import (
    CDAN,
    BNM,
    CORAL,
    DANN,
    MCC,
    MMD,
    ConditionalAdversarial,
    EntropyMinimization,
    FineTune,
    GradientReversal,
    MimicAugment,
    SelfTraining,
)
from domadapt.strategy import Recipe, Step, Strategy
from domadapt.validators import compare, validate

__version__ = "0.1.0"

__all__ = [
    "BNM",
    "CDAN",
    "CORAL",
    "DANN",
    "MCC",
    "MMD",
    "ConditionalAdversarial",
    "DomainAdapter",
    "EntropyMinimization",
    "FineTune",
    "GradientReversal",
    "MimicAugment",
    "Recipe",
    "SelfTraining",
    "Step",
    "Strategy",
    "adapt_batchnorm",
    "augment",
    "backbones",
    "callbacks",
    "compare",
    "data",
    "datasets",
    "gap",
    "layers",
    "strategies",
    "validate",
    "validators",
]
