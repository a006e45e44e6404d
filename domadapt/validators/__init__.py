"""Choosing an adaptation without target labels: unsupervised validators and comparisons.

Each validator is a small class in its own module, with its reference and its
direction (``higher_is_better``). None reads target labels.

Example:

```python
import domadapt as da
scores = da.validate(adapter, source=(xs_val, ys_val), target=xt_val, validators=["entropy", "snd"])
table = da.compare({"source-only": a0, "dann": a1}, source=(xs_val, ys_val), target=xt_val)
print(table)
```
"""

from domadapt.validators.base import Validator
from domadapt.validators.compare import ComparisonTable, compare, validate
from domadapt.validators.dev import DeepEmbeddedValidation
from domadapt.validators.entropy import Entropy
from domadapt.validators.information_maximization import InformationMaximization
from domadapt.validators.mmd import FeatureMMD
from domadapt.validators.reverse import ReverseValidation
from domadapt.validators.select import Selection, select
from domadapt.validators.snd import SoftNeighborhoodDensity
from domadapt.validators.source_accuracy import SourceAccuracy
from domadapt.validators.source_error import SourceError

__all__ = [
    "ComparisonTable", "DeepEmbeddedValidation", "Entropy", "FeatureMMD", "InformationMaximization", "ReverseValidation",
    "Selection", "SoftNeighborhoodDensity", "SourceAccuracy", "SourceError", "Validator", "compare", "select", "validate",
]
