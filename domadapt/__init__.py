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

import os as _os
import sys as _sys

# Public name -> the module that defines it (a submodule's own name maps to None).
_EXPORTS = {
    **{name: None for name in ("augment", "backbones", "callbacks", "data", "datasets", "gap", "layers",
                               "shifts", "strategies", "tasks", "validators")},
    "DomainAdapter": "domadapt.adapter",
    "adapt_batchnorm": "domadapt.batchnorm",
    "reestimate_batchnorm_statistics": "domadapt.batchnorm",
    **{name: "domadapt.test_time" for name in ("TestTimeAdapter", "adapt_at_test_time")},
    **{name: "domadapt.strategies" for name in ("CDAN", "BNM", "CORAL", "DANN", "MCC", "MMD", "ConditionalAdversarial",
                                               "EntropyMinimization", "FineTune", "GradientReversal", "MimicAugment",
                                               "OutputAdversarial", "SelfTraining")},
    **{name: "domadapt.strategy" for name in ("Recipe", "Step", "Strategy")},
    **{name: "domadapt.validators" for name in ("compare", "select", "validate")},
}


def __getattr__(name):
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module 'domadapt' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = importlib.import_module(f"domadapt.{name}" if module is None else module)
    value = value if module is None else getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _import_everything():
    """Import every public name, which registers the Keras-serialisable classes (a saved adapter loads)."""
    for name in _EXPORTS:
        __getattr__(name)


# The `domadapt` command imports the library lazily, so that `domadapt --help` starts
# without TensorFlow (it calls _import_everything before loading a saved model);
# everywhere else every name is imported now.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") not in ("domadapt", "domadapt.exe", "domadapt-script.py"):
    _import_everything()

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
    "OutputAdversarial",
    "Recipe",
    "SelfTraining",
    "Step",
    "Strategy",
    "TestTimeAdapter",
    "adapt_batchnorm",
    "adapt_at_test_time",
    "reestimate_batchnorm_statistics",
    "augment",
    "backbones",
    "callbacks",
    "compare",
    "data",
    "datasets",
    "gap",
    "layers",
    "select",
    "shifts",
    "strategies",
    "tasks",
    "validate",
    "validators",
]
